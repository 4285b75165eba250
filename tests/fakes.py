"""Small fakes shared by the unit tests."""

from __future__ import annotations

#: a fixed "now" far from the epoch, so that ages and TTLs are never negative by accident
T0 = 1_800_000_000.0


class Clock:
    """A settable clock: ``clock.now += 5`` moves time for everything that was given it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
