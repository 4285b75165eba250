"""What ``provisioner reap`` remembers in the pods' Redis: its last destroy per label (``P reaped:<label>``).

A later instance of a reaped label can only have been rented by a live pod (one that writes no
heartbeats: it cannot reach Redis); ``reaper.decide`` keeps it instead of reaping it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from provisioner import store

#: how long the reaper remembers its last destroy per label (``P reaped:<label>``)
REAPED_TTL_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Reaped:
    """The reaper's last destroy for a label: when, and which instance."""

    at: float
    instance_id: int


class ReapRecord:
    """``P reaped:<label>`` in the pods' Redis; every failure raises ``StoreError``."""

    def __init__(self, client: store.Client, keys: store.Keys, deadline_s: float = 2.0) -> None:
        self._redis, self.keys, self._deadline_s = client, keys, deadline_s

    async def read(self, labels: Iterable[str]) -> dict[str, Reaped]:
        names = sorted({label for label in labels if label})
        if not names:
            return {}
        raws = await store.run_redis(
            "read reaped", lambda: self._redis.mget([self.keys.reaped(n) for n in names]), self._deadline_s
        )
        found: dict[str, Reaped] = {}
        for name, raw in zip(names, raws, strict=True):
            data = store.json_object(raw)
            at, iid = data.get("at"), data.get("instance_id")
            if isinstance(at, int | float) and isinstance(iid, int) and not isinstance(iid, bool):
                found[name] = Reaped(float(at), iid)
        return found

    async def mark(self, label: str, reaped: Reaped) -> None:
        value = json.dumps({"at": reaped.at, "instance_id": reaped.instance_id})
        key = self.keys.reaped(label)
        await store.run_redis(
            "mark reaped", lambda: self._redis.set(key, value, ex=int(REAPED_TTL_S)), self._deadline_s
        )
