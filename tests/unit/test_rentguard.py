"""The local rent brakes: avoided hosts expire, and a streak of failed rentals backs off."""

from __future__ import annotations

import pytest

from provisioner.rentguard import RentGuard


def test_failed_host_is_avoided_until_it_expires() -> None:
    """A host whose instance failed before serving is left out of searches for avoid_s."""
    guard = RentGuard(avoid_s=100)
    guard.failed_before_ready(7, now=1000)
    assert guard.avoided(1050) == frozenset({7})
    assert guard.avoided(1101) == frozenset()


@pytest.mark.parametrize(
    ("failures", "expected_backoff"),
    [
        pytest.param(0, 0.0, id="none"),
        pytest.param(2, 0.0, id="two-are-free"),
        pytest.param(3, 30.0, id="third-waits-30s"),
        pytest.param(4, 60.0, id="doubles"),
        pytest.param(10, 900.0, id="capped"),
    ],
)
def test_backoff_grows_with_the_streak(failures: int, expected_backoff: float) -> None:
    """Two failed rentals in a row are free; then the wait doubles from 30 s up to 15 min."""
    guard = RentGuard()
    for _ in range(failures):
        guard.failed_before_ready(None, now=500)
    assert guard.backoff_s() == expected_backoff
    assert guard.wait_s(500 + expected_backoff) == 0.0


def test_serving_ends_the_streak() -> None:
    """Once a rental serves, the next failure starts a new streak (no wait)."""
    guard = RentGuard()
    for _ in range(5):
        guard.failed_before_ready(1, now=0)
    guard.became_ready()
    guard.failed_before_ready(2, now=10)
    assert guard.wait_s(10) == 0.0
    assert guard.avoided(10) == frozenset({1, 2}), "avoidance outlives the streak"
