"""Benchmark 1's verdict per cell and its summary over repeated passes (``bench.proxy_latency``)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import proxy_latency


def _result(path: str, kind: str, clients: int, ms: list[float], new: int = 0) -> dict[str, Any]:
    return {
        "path": path,
        "kind": kind,
        "clients": clients,
        "latencies_s": [m / 1000 for m in ms],
        "wall_s": 1.0,
        "errors": 0,
        "new_upstream": new,
    }


def _pass(ours_ms: float, new: int = 0) -> list[dict[str, Any]]:
    """One burst cell of 256: direct and the others at 50 ms, ours at ``ours_ms``."""
    flat = {"direct": 50.0, "l4": 50.5, "ours": ours_ms, "earlier": 100.0}
    return [_result(path, "burst", 256, [ms] * 10, new if path == "ours" else 0) for path, ms in flat.items()]


@pytest.mark.parametrize(
    ("ours_ms", "new", "met"),
    [(52.0, 0, True), (52.1, 0, False), (50.0, 1, False)],
)
def test_a_cell_meets_the_target_only_within_2_ms_and_with_no_new_connection(
    ours_ms: float, new: int, met: bool
) -> None:
    (paths,) = proxy_latency._cells(_pass(ours_ms, new)).values()
    assert proxy_latency._met(paths) is met


def test_the_summary_counts_passes_that_met_and_gives_the_spread(capsys: pytest.CaptureFixture[str]) -> None:
    proxy_latency.report_repeats([_pass(51.0), _pass(53.0), _pass(51.5)])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == [
        "burst",
        "256",
        "2 of 3",
        "0",
        "+1.0 … +1.5 … +3.0",
        "+1.0 … +1.5 … +3.0",
        "+0.5 … +1.0 … +2.5",
        "+0.5 … +1.0 … +2.5",
    ]
