"""Suite-wide hooks (the fault-injection summary table at the end of the run) and shared fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests import fault_report


def pytest_sessionstart(session: Any) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist)
        fault_report.reset()


def pytest_runtest_logreport(report: Any) -> None:
    """Record failed fault scenarios too, so the table shows every scenario that ran."""
    if report.when == "call" and report.failed and "test_faults.py" in report.nodeid:
        fault_report.add(report.nodeid.split("::", 1)[1], "-", "FAIL")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = fault_report.rows()
    if not rows:
        return
    width = max(len(r[0]) for r in rows)
    terminalreporter.section("fault injection: invariants after each scenario")
    terminalreporter.write_line(f"{'scenario':<{width}}  {'invariants checked':<46}  result")
    for scenario, invariants, result in sorted(rows):
        terminalreporter.write_line(f"{scenario:<{width}}  {invariants:<46}  {result}")
    passed = sum(1 for r in rows if r[2] == "pass")
    terminalreporter.write_line(f"{passed} of {len(rows)} scenarios passed every invariant")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger's handlers and level after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
