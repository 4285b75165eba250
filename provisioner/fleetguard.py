"""The fleet record as the reconciler uses it: :class:`GuardedFleet` never raises.

It wraps ``fleet.Fleet`` (heartbeats, spend reservations, the per-label rent lock and rent marks)
in the blacklist's outage state (``store.Outage``): while Redis is down, heartbeats are skipped, the
fleet's spend is unknown (None), there is no rent lock to take, and the outage is logged once. It
measures the fleet clock again when due (``redisclock``) before anything that stamps or ages a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Sequence

from provisioner import redisclock, store
from provisioner.fleet import HEARTBEAT_LIVE_S, Clock, Fleet, Heartbeat
from provisioner.spend import UNCHECKED, Decide, Reservation, fleet_dph

log = logging.getLogger("provisioner.fleet")


class GuardedFleet:
    """The heartbeat, the fleet's spend and the rent lock as the reconciler uses them: never raises.

    It shares ``outage`` with the blacklist adapter: while Redis is down, heartbeats are skipped, the
    fleet's spend is unknown (None) and there is no rent lock to take; the outage is logged once.
    """

    def __init__(
        self,
        fleet: Fleet,
        outage: store.Outage,
        *,
        pod: str,
        clock: Clock | None = None,
        live_s: float = HEARTBEAT_LIVE_S,
        lock_ttl_s: float = store.RENT_LOCK_TTL_S,
        renew_s: float = store.RENT_LOCK_RENEW_S,
        section_s: float = store.RENT_SECTION_S,
    ) -> None:
        self.fleet = fleet
        self.outage = outage
        self.pod = pod
        self._clock = clock or fleet.clock
        self.live_s = live_s
        self.lock_ttl_s = lock_ttl_s
        self.renew_s = renew_s
        self.section_s = section_s
        #: this process's token for the per-label rent lock
        self.token = secrets.token_hex(8)

    async def beat(
        self, label: str, instance_ids: Sequence[int], dph: float, *, settle: bool = False
    ) -> None:
        await self._sync_clock()
        heartbeat = Heartbeat(label, self.pod, self._clock(), tuple(sorted(instance_ids)), dph)
        await self.outage.call(lambda: self.fleet.beat(heartbeat, settle=settle), None)

    async def reserve(self, label: str, decide: Decide) -> Reservation:
        """Reserve spend for a rental (``Fleet.reserve``); ``UNCHECKED`` while Redis is unavailable."""
        await self._sync_clock()
        return await self.outage.call(
            lambda: self.fleet.reserve(label, self.pod, decide, live_s=self.live_s), UNCHECKED, always=True
        )

    async def _sync_clock(self) -> None:
        """The fleet clock measured again when due (before anything that stamps or ages a record).
        Only then a Redis call: a no-op through ``outage`` would count as Redis being back."""
        if redisclock.due(self._clock):
            await self.outage.call(lambda: redisclock.sync_if_due(self._clock), None)

    async def release_reservation(self, label: str) -> None:
        await self.outage.call(lambda: self.fleet.release_reservation(label), None)

    @contextlib.asynccontextmanager
    async def rent_lock(self, label: str) -> AsyncIterator[bool]:
        """Hold ``label``'s rent lock for the body: yields False when another process holds it.

        While Redis is down there is no lock to take: yields True (renting goes on); it is always
        tried, though, however recently another call failed. While held the
        lock is renewed every ``renew_s``; the body is cancelled after ``section_s`` (``TimeoutError``
        leaves the block), and the lock is released however the body ends.
        """
        held = await self.outage.call(
            lambda: self.fleet.take_rent_lock(label, self.token, self.lock_ttl_s), True, always=True
        )
        if not held:
            yield False
            return
        renewer = asyncio.create_task(self._renew(label))
        try:
            async with asyncio.timeout(self.section_s):
                yield True
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self.outage.call(lambda: self.fleet.release_rent_lock(label, self.token), None)

    async def mark_rent(self, label: str, *, done: bool) -> None:
        """Record a rent of ``label`` starting (under its lock) or its known outcome; skipped while
        Redis is down (there is no lock then either)."""
        await self.outage.call(lambda: self.fleet.marks.mark(label, done=done), None)

    async def list_covers_rents(self, label: str, listed_at_ms: int) -> bool:
        """Whether a list requested at ``listed_at_ms`` (Redis clock) shows every rent of ``label``
        (``rentmark.list_covers_rents``); False when it cannot be told (the renter lists again)."""
        return await self.outage.call(lambda: self.fleet.marks.covers(label, listed_at_ms), False)

    async def _renew(self, label: str) -> None:
        while True:
            await asyncio.sleep(self.renew_s)
            if not await self.outage.call(
                lambda: self.fleet.renew_rent_lock(label, self.token, self.lock_ttl_s), True
            ):
                log.warning(
                    "the rent lock of %s was lost while renting", label, extra={"event": "rent-lock-lost"}
                )
                return

    async def others_dph(self, label: str) -> float | None:
        """The $/h of the other live pods, or None while Redis is unavailable."""
        await self._sync_clock()
        beats = await self.outage.call(self.fleet.heartbeats, None)
        if beats is None:
            return None
        return fleet_dph(beats.values(), now=self._clock(), exclude_label=label, live_s=self.live_s)
