"""Backoff delays: one pure formula for every retry in the package (no clock, no randomness of its own).

``exponential_s`` doubles from ``start_s`` up to ``cap_s``; ``delay_s`` shortens that by a random part
of at most ``jitter`` of it, drawn from the ``rand`` passed in (``random.uniform`` in production, a
seeded ``random.Random().uniform`` or a fixed function in tests). ``jitter=0.5`` is "equal jitter"
(a wait in ``[b/2, b]``), ``jitter=1.0`` is "full jitter" (``[0, b]``).
"""

from __future__ import annotations

from collections.abc import Callable

#: a uniform draw in ``[low, high]``, like ``random.uniform``
Uniform = Callable[[float, float], float]


def exponential_s(attempt: int, *, start_s: float, cap_s: float) -> float:
    """``start_s * 2**(attempt - 1)``, at most ``cap_s``; ``attempt`` counts from 1."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    if start_s < 0 or cap_s < 0:
        raise ValueError("start_s and cap_s must not be negative")
    # min() before the power would overflow: past 2**64 the cap has long been reached
    return float(min(cap_s, start_s * 2.0 ** min(attempt - 1, 64)))


def delay_s(attempt: int, *, start_s: float, cap_s: float, jitter: float, rand: Uniform) -> float:
    """``exponential_s`` shortened by a random part of at most ``jitter`` (a fraction in [0, 1]) of it."""
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter must be between 0 and 1")
    base = exponential_s(attempt, start_s=start_s, cap_s=cap_s)
    if jitter == 0.0:
        return base
    return rand(base * (1.0 - jitter), base)
