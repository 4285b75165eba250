"""Rows of the fault-injection summary table: (scenario, invariants checked, result).

Rows go to a JSON-lines file so that the table survives pytest-xdist: workers append,
the controlling process prints the table at the end of the run (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

_DEFAULT = Path(__file__).resolve().parent.parent / ".fault-report.jsonl"
PATH = Path(os.environ.get("FAULT_REPORT_PATH", _DEFAULT))


def add(scenario: str, invariants: str, result: str) -> None:
    with PATH.open("a") as out:
        out.write(json.dumps([scenario, invariants, result]) + "\n")


def rows() -> list[tuple[str, str, str]]:
    if not PATH.exists():
        return []
    return [tuple(json.loads(line)) for line in PATH.read_text().splitlines() if line.strip()]  # type: ignore[misc]


def reset() -> None:
    PATH.unlink(missing_ok=True)
