"""Local brakes on renting, kept by each process whether or not Redis is there.

Two money-savers that the shared blacklist cannot guarantee (it may be off or down):

* hosts whose instance this process saw fail before it was ever ready (an OCI
  failure, a boot that never ends) are avoided for ``avoid_s``: they go into the
  search's ``host_id notin`` beside the Redis bans;
* after ``free_failures`` rentals in a row that died before being ready, the next
  rental waits, doubling from ``backoff_start_s`` up to ``backoff_cap_s``, so a bad
  image or an account problem cannot turn into a rent-destroy loop billed by the minute.

Pure bookkeeping: the time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from provisioner import backoff


@dataclass
class RentGuard:
    """The local brakes: hosts to avoid and the streak of rentals that failed before serving."""

    avoid_s: float = 3600.0
    free_failures: int = 2
    backoff_start_s: float = 30.0
    backoff_cap_s: float = 900.0
    #: host id -> avoided until
    avoided_until: dict[int, float] = field(default_factory=dict)
    failures_in_a_row: int = 0
    last_failure_at: float = 0.0

    def failed_before_ready(self, host_id: int | None, now: float) -> None:
        """An instance of ours on ``host_id`` died or timed out without ever serving."""
        if host_id is not None:
            self.avoided_until[host_id] = now + self.avoid_s
        self.failures_in_a_row += 1
        self.last_failure_at = now

    def became_ready(self) -> None:
        """A rental served: the streak is over."""
        self.failures_in_a_row = 0

    def avoided(self, now: float) -> frozenset[int]:
        """Hosts to leave out of the next search."""
        for host, until in list(self.avoided_until.items()):
            if until <= now:
                del self.avoided_until[host]
        return frozenset(self.avoided_until)

    def backoff_s(self) -> float:
        """How long the current streak of failures makes the next rental wait (0: none)."""
        extra = self.failures_in_a_row - self.free_failures
        if extra <= 0:
            return 0.0
        return backoff.exponential_s(extra, start_s=self.backoff_start_s, cap_s=self.backoff_cap_s)

    def wait_s(self, now: float) -> float:
        """Seconds left before the next rental may happen."""
        return max(0.0, self.last_failure_at + self.backoff_s() - now)
