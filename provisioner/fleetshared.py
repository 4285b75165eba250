"""Checks the fleet does once, on the shared view's machinery: the template's hash, the account (whoami),
and the rental queue's offer search.

Each is a :class:`fleetview.FleetView` with one item (or one search's rows): the first pod to need
it computes it and publishes it in Redis, the others read it while it is fresh; without Redis each
process computes it itself. Keys: ``P view:<B>:check:<name>`` and ``P view:<B>:search:<digest>``
(``store.py``'s table).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from provisioner import errors, model, pacer
from provisioner.fleetview import Codec, FleetView, Keys
from provisioner.vast import client as vast_client

#: a shared check (the template's hash) done by one pod is trusted by the others this long
CHECK_TTL_S: Final = 600.0
#: a shared offer search serves the rental queue this long (claims keep pods off one offer)
SEARCH_MAX_AGE_S: Final = 20.0


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not a string: {type(value).__name__}")
    return value


class SharedChecks:
    """A check the fleet does once (the template's hash): the first pod computes, the others read it.

    Built on :class:`FleetView` with one item: single flight, a freshness bound, the same fallback
    (without Redis each process computes it itself). Key ``P view:<B>:check:<name>`` (+ ``:lock``).
    """

    def __init__(
        self,
        redis: pacer.Client | None,
        budget: str,
        *,
        prefix: str = pacer.DEFAULT_KEY_PREFIX,
        failover: pacer.Failover | None = None,
    ) -> None:
        self._redis = redis
        self._budget = budget
        self._prefix = prefix
        self.failover = failover or pacer.Failover()

    async def once(self, name: str, compute: Callable[[], Awaitable[str]], max_age_s: float) -> str:
        """The value of check ``name`` computed no more than ``max_age_s`` ago, by whichever pod."""
        tag = f"check:{name}"

        async def fetch() -> list[str]:
            return [await compute()]

        codec: Codec[str] = Codec(label_of=lambda _: tag, encode=lambda v: v, decode=_text)
        keys = Keys(self._budget, tag, self._prefix)
        view = FleetView(fetch, self._redis, keys, codec, failover=self.failover)
        snap = await view.get(max_age_s)
        if not snap.items:
            raise errors.StoreError(f"shared check {name}: no value")
        return snap.items[0]


class SharedAccount:
    """``whoami`` once for the fleet (the account id): one pod asks, the others read it for ``CHECK_TTL_S``;
    a refused key raises in the asking pod, and the others ask themselves (each sees its refusal)."""

    def __init__(self, whoami: Callable[[], Awaitable[dict[str, Any]]], checks: SharedChecks) -> None:
        self._whoami = whoami
        self._checks = checks

    @classmethod
    def over(
        cls,
        whoami: Callable[[], Awaitable[dict[str, Any]]],
        redis: pacer.Client | None,
        budget: str,
        prefix: str,
        failover: pacer.Failover,
    ) -> SharedAccount | None:
        """The shared account over ``redis``; None without one (each process asks itself)."""
        if redis is None:
            return None
        return cls(whoami, SharedChecks(redis, budget, prefix=prefix, failover=failover))

    async def whoami(self) -> dict[str, Any]:
        async def ask() -> str:
            user = await self._whoami()
            return json.dumps({"id": user.get("id")})

        account: dict[str, Any] = json.loads(await self._checks.once("whoami", ask, CHECK_TTL_S))
        return account


def _row(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"not an offer object: {type(value).__name__}")
    return value


class SharedSearch:
    """One offer search per query for the whole queue, reused for ``max_age_s``.

    Vast allows one search per 6 s per key but one rent per 4.5 s: pods renting one after another
    would otherwise be held to the search interval. The rent queue's claims keep two pods off one
    offer of the shared result. Key ``P view:<B>:search:<digest of the body>`` (+ ``:lock``).
    """

    def __init__(
        self,
        search: Callable[[Mapping[str, Any]], Awaitable[Sequence[Any]]],
        redis: pacer.Client | None,
        budget: str,
        *,
        prefix: str = pacer.DEFAULT_KEY_PREFIX,
        failover: pacer.Failover | None = None,
        max_age_s: float = SEARCH_MAX_AGE_S,
    ) -> None:
        self._search = search
        self._redis = redis
        self._budget = budget
        self._prefix = prefix
        self.failover = failover or pacer.Failover()
        self.max_age_s = max_age_s

    async def offers(self, body: Mapping[str, Any]) -> list[model.Offer]:
        """The offers for ``body``, searched by whichever pod no more than ``max_age_s`` ago."""
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
        tag = f"search:{digest}"

        async def fetch() -> Sequence[Any]:
            return await self._search(body)

        codec: Codec[Any] = Codec(label_of=lambda _: tag, encode=lambda v: v, decode=_row)
        view = FleetView(
            fetch, self._redis, Keys(self._budget, tag, self._prefix), codec, failover=self.failover
        )
        snap = await view.get(self.max_age_s)
        return vast_client.parse_offers(snap.items)
