"""The one backoff formula: exponential growth, the cap, and jitter drawn from the random source given."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner import backoff


def test_exponential_doubles_from_start_up_to_the_cap() -> None:
    """The wait doubles per attempt from start_s and stops at cap_s."""
    waits = [backoff.exponential_s(n, start_s=0.5, cap_s=8.0) for n in range(1, 8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    """A long outage (attempt 10 000) neither overflows nor leaves the cap."""
    assert backoff.exponential_s(10_000, start_s=2.0, cap_s=30.0) == 30.0


def test_no_jitter_never_draws() -> None:
    """jitter=0 returns the plain exponential wait and does not call the random source."""

    def refuse(low: float, high: float) -> float:
        raise AssertionError("drew a random number without jitter")

    assert backoff.delay_s(3, start_s=1.0, cap_s=60.0, jitter=0.0, rand=refuse) == 4.0


def test_jitter_draws_between_the_shortened_and_the_full_wait() -> None:
    """Equal jitter asks the random source for a wait in [b/2, b]; full jitter for [0, b]."""
    asked: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        asked.append((low, high))
        return low

    assert backoff.delay_s(2, start_s=5.0, cap_s=60.0, jitter=0.5, rand=record) == 5.0
    assert backoff.delay_s(1, start_s=5.0, cap_s=60.0, jitter=1.0, rand=record) == 0.0
    assert asked == [(5.0, 10.0), (0.0, 5.0)]


@pytest.mark.parametrize(
    ("attempt", "start", "cap", "jitter"),
    [
        pytest.param(0, 1.0, 2.0, 0.0, id="attempt-zero"),
        pytest.param(1, -1.0, 2.0, 0.0, id="negative-start"),
        pytest.param(1, 1.0, 2.0, 1.5, id="jitter-above-one"),
        pytest.param(1, 1.0, 2.0, -0.1, id="negative-jitter"),
    ],
)
def test_bad_arguments_are_refused(attempt: int, start: float, cap: float, jitter: float) -> None:
    """Nonsense arguments raise ValueError rather than yield a negative or unbounded wait."""
    with pytest.raises(ValueError):
        backoff.delay_s(attempt, start_s=start, cap_s=cap, jitter=jitter, rand=random.uniform)


@given(
    attempt=st.integers(min_value=1, max_value=200),
    start=st.floats(min_value=0.0, max_value=100.0),
    cap=st.floats(min_value=0.0, max_value=1000.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_is_within_its_bounds(attempt: int, start: float, cap: float, jitter: float, seed: int) -> None:
    """Whatever the draw, a delay lies in [(1 - jitter) * b, b] with b = min(cap, start * 2**(n-1))."""
    base = backoff.exponential_s(attempt, start_s=start, cap_s=cap)
    wait = backoff.delay_s(attempt, start_s=start, cap_s=cap, jitter=jitter, rand=random.Random(seed).uniform)
    assert base <= cap
    assert base * (1 - jitter) - 1e-9 <= wait <= base + 1e-9
