"""One running simulator: config, world state, workloads, faults, rate limits, request log and the ticker.

The app reaches everything through a `SimRuntime`; `start()` launches the background ticker that moves the
state machine while nobody polls, `stop()` ends it and shuts every workload down. Both are idempotent so
that the ASGI lifespan and `running_sim` can share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from provisioner.sim.config import SimConfig
from provisioner.sim.faults import FaultQueue
from provisioner.sim.ratelimits import RateLimits
from provisioner.sim.requestlog import RequestLog
from provisioner.sim.state import Clock, SimState
from provisioner.sim.workload import WorkloadManager

TICK_INTERVAL_S = 0.05


class SimRuntime:
    """The simulator's moving parts, shared by every request."""

    def __init__(self, config: SimConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or SimConfig()
        self.clock: Clock = clock or time.time
        self.workloads = WorkloadManager(self.config.workload_host, self.clock)
        self.state = SimState(self.config, self.clock, self.workloads)
        self.faults = FaultQueue()
        self.limits = RateLimits()
        self.limits.configure(self.config.rate_limit_overrides)
        self.requests = RequestLog()
        self._ticker: asyncio.Task[None] | None = None

    def update_config(self, changes: dict[str, Any]) -> SimConfig:
        """Apply `POST /_sim/config` changes (seed and num_offers only matter at start); raises ValueError."""
        self.config = self.config.updated(changes)
        self.state.config = self.config
        self.workloads.host = self.config.workload_host
        self.limits.configure(self.config.rate_limit_overrides)
        return self.config

    async def start(self) -> None:
        """Start the background ticker (once)."""
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(), name="sim-ticker")

    async def stop(self) -> None:
        """Stop ticking and shut every workload down."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.workloads.close()

    async def settle(self) -> None:
        """Wait for stopped workloads to finish shutting down."""
        await self.workloads.settle()

    async def _tick_forever(self) -> None:
        while True:
            self.state.tick()
            await asyncio.sleep(TICK_INTERVAL_S)
