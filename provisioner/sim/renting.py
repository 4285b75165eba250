"""A create-instance body checked against its offer (docs/vast-api.md §6): the rental, or Vast's error.

`check_offer` answers an offer that is gone (404 no_such_ask, or 410 with `cancel_unavail`); `validate`
resolves the template, merges its env with the request's (the request wins, key by key) and checks image,
disk, label and bid price, raising `RentError` with Vast's 400 bodies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from provisioner.sim import docker
from provisioner.sim.instance import RentError


@dataclass(frozen=True)
class Rental:
    """What a valid create body asks for."""

    template: dict[str, Any] | None
    env: dict[str, str]
    image: str
    disk_gb: float
    label: str | None
    price: float | None
    runtype: str
    args: list[str] | None
    onstart: str | None


def check_offer(offer: Mapping[str, Any] | None, offer_id: int, body: Mapping[str, Any]) -> None:
    """Raise Vast's answer to renting an offer that is gone or taken."""
    if offer is not None and not offer["rented"] and offer["rentable"]:
        return
    if body.get("cancel_unavail") is True:
        msg = f"error 410/3907: no_such_ask Instance type {offer_id} is no longer available."
        raise RentError(410, {"success": False, "error": "no_such_ask", "msg": msg})
    msg = f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available."
    raise RentError(404, {"success": False, "error": "invalid_args", "msg": msg, "ask_id": offer_id})


def validate(
    offer: Mapping[str, Any],
    body: Mapping[str, Any],
    resolve_template: Callable[[str], dict[str, Any] | None],
) -> Rental:
    """The rental a create body asks for; raises RentError (400) when it is invalid."""
    offer_id = int(offer["id"])
    template, env = _template_and_env(offer_id, body, resolve_template)
    image = body.get("image") or (docker.template_image(template) if template else None)
    if not isinstance(image, str) or not image:
        raise _invalid(offer_id, "image is required unless template_hash_id is given")
    disk, label, price = _check_rental(offer, body)
    runtype = body.get("runtype") or (template.get("runtype") if template else None) or "args"
    args = body.get("args")
    onstart = body.get("onstart") or (template.get("onstart") if template else None)
    return Rental(
        template=dict(template) if template is not None else None,  # the content at launch
        env=env,
        image=image,
        disk_gb=disk,
        label=label,
        price=price,
        runtype=str(runtype),
        args=list(args) if isinstance(args, list) else None,
        onstart=onstart,
    )


def _template_and_env(
    offer_id: int, body: Mapping[str, Any], resolve_template: Callable[[str], dict[str, Any] | None]
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    raw_env = body.get("env") if body.get("env") is not None else {}
    if not isinstance(raw_env, dict) or not all(isinstance(v, str) for v in raw_env.values()):
        raise _invalid(offer_id, "env must be an object of string values")
    template: dict[str, Any] | None = None
    env: dict[str, str] = {}
    hash_id = body.get("template_hash_id")
    if hash_id:
        template = resolve_template(str(hash_id))
        if template is None:
            raise _invalid(offer_id, f"template {hash_id} not found")
        env.update(docker.parse_env_flags(template.get("env")))
    env.update(raw_env)  # the request wins, key by key (§5)
    return template, env


def _check_rental(
    offer: Mapping[str, Any], body: Mapping[str, Any]
) -> tuple[float, str | None, float | None]:
    """The validated disk (GB), label and bid price of a create body."""
    offer_id = int(offer["id"])
    disk = body.get("disk", 10)
    if isinstance(disk, bool) or not isinstance(disk, int | float) or disk <= 0:
        raise _invalid(offer_id, "disk must be a positive number of GB")
    if disk > offer["disk_space"]:
        raise _invalid(offer_id, f"disk {disk} GB exceeds the {offer['disk_space']} GB available")
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > 256):
        raise _invalid(offer_id, "label must be a string of at most 256 characters")
    price = body.get("price")
    if price is None:
        return float(disk), label, None
    if isinstance(price, bool) or not isinstance(price, int | float) or not 0.001 <= price <= 128:
        raise _invalid(offer_id, "price must be between 0.001 and 128", error="invalid_price")
    if price < offer["min_bid"]:
        msg = f"error 400/3468: bid price {price} is below the minimum bid {offer['min_bid']}"
        raise RentError(400, {"success": False, "error": "invalid_price", "msg": msg, "ask_id": offer_id})
    return float(disk), label, float(price)


def _invalid(offer_id: int, detail: str, *, error: str = "invalid_args") -> RentError:
    msg = f"error 400/3467: Invalid args: {detail}"
    return RentError(400, {"success": False, "error": error, "msg": msg, "ask_id": offer_id})
