"""The Vast.ai HTTP client: every request the provisioner sends to the Vast.ai API.

This module owns the calls and their wire format (paths with trailing slashes, Bearer auth, JSON
bodies, query values JSON-encoded then form-encoded; ``docs/vast-api.md`` §1, §4-§9) and which retry
rule each call gets (§3.3; ``transport.py`` runs the retries): idempotent calls are retried with
backoff, jitter and a capped ``Retry-After``; a rent is never retried, and an ambiguous rent answer
becomes ``RentOutcomeUnknown`` so that the caller lists by label before renting again. HTTP answers
and httpx errors become ``provisioner.errors`` in one place, ``wire.map_failure``. The
``httpx.AsyncClient`` is injected; this module builds no clients, reads no settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import SecretStr

from provisioner import errors, model
from provisioner.vast import transport, wire
from provisioner.vast.transport import DEFAULT_BASE_URL, DEFAULT_RETRY, CallObserver, RetryPolicy

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_RETRY",
    "CallObserver",
    "RentRequest",
    "RetryPolicy",
    "VastClient",
    "rent_body",
]

log = logging.getLogger(__name__)

#: the v1 instance list serves at most 25 rows a page (docs/vast-api.md §7.1).
PAGE_LIMIT: Final = 25
#: more pages than this (10 000 instances) means ``next_token`` is looping.
MAX_PAGES: Final = 400


@dataclass(frozen=True, slots=True, repr=False)
class RentRequest:
    """What to put on a rented offer: ``ports`` become ``-p P:P`` env keys, ``bid_price`` None = on-demand."""

    image: str | None
    env: Mapping[str, str]
    ports: Sequence[int]
    label: str
    disk_gb: float
    template_hash_id: str | None = None
    onstart: str | None = None
    bid_price: float | None = None
    image_login: SecretStr | None = None
    cancel_unavail: bool = True

    def __post_init__(self) -> None:
        if not self.image and not self.template_hash_id:
            raise ValueError("a rent needs an image or a template_hash_id")
        if any(isinstance(p, bool) or not 0 < p < 65536 for p in self.ports):
            raise ValueError("ports must be between 1 and 65535")
        if not self.label.strip():
            raise ValueError("a rent needs a label: it is how we find the instance again")

    def __repr__(self) -> str:
        # Env values may be secrets too, so only their names are shown; the login never is.
        return (
            f"RentRequest(image={self.image!r}, env_keys={sorted(self.env)!r}, ports={list(self.ports)!r}, "
            f"label={self.label!r}, disk_gb={self.disk_gb!r}, template_hash_id={self.template_hash_id!r}, "
            f"bid_price={self.bid_price!r}, image_login={'***' if self.image_login else None}, "
            f"cancel_unavail={self.cancel_unavail!r})"
        )


def rent_body(req: RentRequest) -> dict[str, Any]:
    """The ``PUT /api/v0/asks/{id}/`` body: every key 1.9.1 sends (docs/vast-api.md §6.1, §10)."""
    env = dict(req.env)
    env.update({f"-p {port}:{port}": "1" for port in sorted(set(req.ports))})
    body: dict[str, Any] = {
        "client_id": "me",
        "image": req.image,
        "env": env,
        "price": req.bid_price,
        "disk": req.disk_gb,
        "label": req.label,
        "extra": None,
        "onstart": req.onstart,
        "image_login": req.image_login.get_secret_value() if req.image_login else None,
        "python_utf8": False,
        "lang_utf8": False,
        "use_jupyter_lab": False,
        "jupyter_dir": None,
        "force": False,
        "cancel_unavail": req.cancel_unavail,
        "template_hash_id": req.template_hash_id,
        "user": None,
    }
    if req.template_hash_id is None:
        body["runtype"] = "args"  # keeps the image ENTRYPOINT; ssh/jupyter runtypes replace it
    return body


def _positive_id(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive int, not {value!r}")
    return value


def parse_offers(raw_offers: Sequence[Any], call: str = "search offers") -> list[model.Offer]:
    """Offers from raw search rows; malformed ones are skipped."""
    offers = []
    for raw in raw_offers:
        try:
            offers.append(model.Offer.from_api(raw, call))
        except errors.VastBadResponse as exc:
            log.debug("skipping a malformed offer: %s", exc)
    return offers


# ---------------------------------------------------------------- the client


class VastClient(transport.Transport):
    """Typed calls to the Vast.ai API over an injected ``httpx.AsyncClient`` (plumbing: ``transport``)."""

    def __repr__(self) -> str:
        return f"VastClient(base_url={self._base_url!r})"

    # ------------------------------------------------------------ account and offers

    async def whoami(self) -> dict[str, Any]:
        """``GET /api/v0/users/current``: the account, without its ``api_key``; doubles as the key check."""
        call = "whoami"
        data = self._json(call, await self._request(call, "GET", "/api/v0/users/current"))
        if not isinstance(data, Mapping):
            raise errors.VastBadResponse(call, "answer is not an object")
        return {k: v for k, v in data.items() if k != "api_key"}

    async def search_offers(self, body: Mapping[str, Any]) -> list[model.Offer]:
        """``POST /api/v0/bundles/`` with a flat filter body; malformed offers are skipped."""
        return parse_offers(await self.search_rows(body))

    async def search_rows(self, body: Mapping[str, Any]) -> list[Any]:
        """``POST /api/v0/bundles/``: the raw offer rows (a shared search stores them so)."""
        call = "search offers"
        response = await self._request(call, "POST", "/api/v0/bundles/", body=body)
        data = self._json(call, response)
        raw_offers = data.get("offers") if isinstance(data, Mapping) else None
        if not isinstance(raw_offers, list):
            raise errors.VastBadResponse(call, "answer has no 'offers' list", status=response.status_code)
        return raw_offers

    # ------------------------------------------------------------ renting

    async def rent(self, offer_id: int, req: RentRequest) -> int:
        """``PUT /api/v0/asks/{id}/``: rent an offer, return the new instance id. Never retried.

        A timeout, 5xx, dropped connection or unreadable 200 raises ``RentOutcomeUnknown``: list by label
        before renting again.
        """
        path = f"/api/v0/asks/{_positive_id(offer_id, 'offer_id')}/"
        self.add_secrets(*wire.rent_secrets(req.image_login, req.env))  # an answer may echo the body
        try:
            response = await self._request(
                wire.CALL_RENT, "PUT", path, body=rent_body(req), retry=transport.Rule.NEVER
            )
            data = self._json(wire.CALL_RENT, response)
        except (errors.VastUnavailable, errors.VastBadResponse) as exc:
            raise errors.RentOutcomeUnknown(
                wire.CALL_RENT, f"{exc.reason}; list by label before renting again", status=exc.status
            ) from exc
        contract = data.get("new_contract") if isinstance(data, Mapping) else None
        if isinstance(contract, str) and contract.strip().isdigit():
            contract = int(contract)
        if isinstance(contract, bool) or not isinstance(contract, int) or contract <= 0:
            raise errors.RentOutcomeUnknown(
                wire.CALL_RENT, "answer has no 'new_contract'; list by label before renting again", status=200
            )
        return contract

    # ------------------------------------------------------------ instances

    async def list_instances(self, select_filters: Mapping[str, Any] | None = None) -> list[model.Instance]:
        """``GET /api/v1/instances/``, every page (``next_token``), in id order; never the v0 list."""
        rows = await self.list_rows(select_filters)
        # a malformed row raises: skipping it could make us rent a second instance
        found = {i.id: i for i in (model.Instance.from_api(row, "list instances") for row in rows)}
        return sorted(found.values(), key=lambda i: i.id)

    async def list_rows(self, select_filters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The raw rows of every page of ``GET /api/v1/instances/`` (the shared view stores them so)."""
        call = "list instances"
        rows: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {
                "select_filters": dict(select_filters or {}),
                "order_by": [{"col": "id", "dir": "asc"}],
                "limit": PAGE_LIMIT,
            }
            if token:
                params["after_token"] = token
            response = await self._request(call, "GET", "/api/v1/instances/", params=params)
            data = self._json(call, response)
            page = data.get("instances") if isinstance(data, Mapping) else None
            if not isinstance(page, list):
                raise errors.VastBadResponse(
                    call, "answer has no 'instances' list", status=response.status_code
                )
            if not all(isinstance(row, dict) for row in page):
                raise errors.VastBadResponse(call, "an instance row is not an object")
            rows.extend(page)
            next_token = data.get("next_token")
            if not next_token:
                return rows
            if not isinstance(next_token, str):
                raise errors.VastBadResponse(call, "'next_token' is not a string")
            token = next_token
        raise errors.VastBadResponse(call, f"more than {MAX_PAGES} pages; 'next_token' seems to loop")

    async def list_by_label(self, label: str) -> list[model.Instance]:
        """Our instances: the server's ``label eq`` filter, checked again here for exact equality."""
        if not label.strip():
            raise ValueError("label must not be empty")
        instances = await self.list_instances({"label": {"eq": label}})
        return [i for i in instances if i.label == label.strip()]

    async def show_instance(self, instance_id: int) -> model.Instance | None:
        """``GET /api/v0/instances/{id}/?owner=me``; None when it is gone (``instances: null`` or 404)."""
        call = "show instance"
        path = f"/api/v0/instances/{_positive_id(instance_id, 'instance_id')}/"
        response = await self._request(call, "GET", path, params={"owner": "me"}, accept=wire.is_not_found)
        if response.status_code == 404:
            return None
        data = self._json(call, response)
        if not isinstance(data, Mapping) or "instances" not in data:
            raise errors.VastBadResponse(call, "answer has no 'instances' key", status=response.status_code)
        if data["instances"] is None:
            return None
        instance = model.Instance.from_api(data["instances"], call)
        if instance.id != instance_id:
            raise errors.VastBadResponse(call, f"asked for instance {instance_id}, got {instance.id}")
        return instance

    async def destroy_instance(self, instance_id: int) -> bool:
        """``DELETE /api/v0/instances/{id}/``: True if destroyed now, False if it was already gone."""
        call = "destroy instance"
        path = f"/api/v0/instances/{_positive_id(instance_id, 'instance_id')}/"
        response = await self._request(call, "DELETE", path, body={}, accept=wire.is_gone)
        if response.status_code == 404:
            return False
        self._json(call, response)
        return True

    # ------------------------------------------------------------ templates

    async def find_template(self, name: str, creator_id: int | None = None) -> model.Template | None:
        """Our template named exactly ``name`` (``creator_id`` matches, else private); the newest id wins."""
        call = "find template"
        filters: dict[str, Any] = {"name": {"eq": name}}
        if creator_id is not None:
            filters["creator_id"] = {"eq": creator_id}
        params = {"select_cols": ["*"], "select_filters": filters}
        response = await self._request(call, "GET", "/api/v0/template/", params=params)
        data = self._json(call, response)
        rows = data.get("templates") if isinstance(data, Mapping) else None
        if not isinstance(rows, list):
            raise errors.VastBadResponse(call, "answer has no 'templates' list", status=response.status_code)
        ours: list[model.Template] = []
        for row in rows:
            try:
                template = model.Template.from_api(row, call)
            except errors.VastBadResponse as exc:
                log.debug("skipping a malformed template: %s", exc)
                continue
            if template.name != name:
                continue
            if creator_id is not None and template.creator_id is not None:
                mine = template.creator_id == creator_id
            else:
                mine = template.private is True
            if mine:
                ours.append(template)
        return max(ours, key=lambda t: t.id, default=None)

    async def create_template(
        self, spec: model.TemplateSpec, *, creator_id: int | None = None
    ) -> model.Template:
        """``POST /api/v0/template/``; read it back by name only when the answer lacks the template.

        Like a rent, an ambiguous answer is not posted again: the template is looked up by name instead.
        """
        call = "create template"
        body = wire.template_body(spec)
        try:
            response = await self._request(
                call, "POST", "/api/v0/template/", body=body, retry=transport.Rule.UNSENT
            )
            data = self._json(call, response)
        except (errors.VastUnavailable, errors.VastBadResponse):
            found = await self.find_template(spec.name, creator_id)
            if found is None:
                raise
            log.info("template %r exists after an unclear create answer; using it", spec.name)
            return found
        return await self._read_back(call, spec, body, data, creator_id, old_hash=None)

    async def update_template(self, existing: model.Template, spec: model.TemplateSpec) -> model.Template:
        """``PUT /api/v1/template/`` (full body + id + hash_id); on 404/405 the v0 form; then read back."""
        call = "update template"
        fields = wire.template_body(spec)
        try:
            try:
                v1_body = {"id": existing.id, "hash_id": existing.hash_id, **fields}
                response = await self._request(
                    call, "PUT", "/api/v1/template/", body=v1_body, retry=transport.Rule.UNSENT
                )
            except errors.VastRejected as exc:
                if exc.status not in (404, 405):
                    raise
                log.info("PUT /api/v1/template/ answered %s; trying PUT /api/v0/template/", exc.status)
                v0_body = {"hash_id": existing.hash_id, **fields}
                response = await self._request(
                    call, "PUT", "/api/v0/template/", body=v0_body, retry=transport.Rule.UNSENT
                )
            data = self._json(call, response)
        except (errors.VastUnavailable, errors.VastBadResponse):
            found = await self.find_template(spec.name, existing.creator_id)
            if found is None or found.hash_id == existing.hash_id:
                raise
            return found
        sent = {"id": existing.id, **fields}
        return await self._read_back(call, spec, sent, data, existing.creator_id, old_hash=existing.hash_id)

    async def _read_back(
        self,
        call: str,
        spec: model.TemplateSpec,
        sent: Mapping[str, Any],
        answer: Any,
        creator_id: int | None,
        *,
        old_hash: str | None,
    ) -> model.Template:
        """The template as stored now; the write's own answer only fills in when the lookup lags behind."""
        raw = answer.get("template") if isinstance(answer, Mapping) else None
        answered = None
        if isinstance(raw, Mapping):
            try:
                answered = model.Template.from_api({**sent, **raw}, call)
            except errors.VastBadResponse:
                log.debug("the %s answer carries no usable template", call)
        if old_hash is None and answered is not None:
            return answered  # a new template's answer has its hash: no read-back (a 3 s search slot)
        found = await self.find_template(spec.name, creator_id)
        if found is not None and not (
            found.hash_id == old_hash and answered is not None and answered.hash_id != old_hash
        ):
            return found
        if answered is not None:
            return answered
        raise errors.VastBadResponse(call, f"template {spec.name!r} not found after writing it")

    # ------------------------------------------------------------ logs

    async def request_logs(
        self,
        instance_id: int,
        *,
        tail: int | None = None,
        poll_attempts: int = 30,
        poll_interval_s: float = 0.3,
    ) -> str:
        """``PUT /api/v0/instances/request_logs/{id}/``, then poll its ``result_url`` (no auth): the text."""
        call = "request logs"
        path = f"/api/v0/instances/request_logs/{_positive_id(instance_id, 'instance_id')}/"
        body = {} if tail is None else {"tail": str(_positive_id(tail, "tail"))}
        data = self._json(call, await self._request(call, "PUT", path, body=body))
        url = wire.result_url(call, data)
        last = "no attempt"
        for _ in range(poll_attempts):
            await self._sleep(poll_interval_s)
            try:
                response = await self._send("fetch logs", "GET", url, None, auth=False)
            except errors.VastUnavailable as exc:
                last = exc.reason
                continue
            if response.status_code == 200:
                return response.text
            last = f"HTTP {response.status_code}"
        raise errors.VastUnavailable(call, f"logs not ready after {poll_attempts} polls (last: {last})")
