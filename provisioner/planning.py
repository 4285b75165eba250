"""Pure decisions: given what we want and what we see, what to do next and why.

``plan(desired, observed, policy)`` returns a ``Plan``: a short tuple of small
frozen actions (``Serve``, ``Unserve``, ``Destroy``, ``Ban``, ``Rent``) plus
how long to wait before looking again. No I/O, no clock, no randomness: the
time is an input. The reconciler observes, calls ``plan`` and applies.

The rules, in order:

* an instance that will never run again (``exited``, ``offline``, ``unknown``,
  ``stopped``, an OCI failure in ``created``) is destroyed;
* one that has been booting longer than the boot deadline is destroyed and its
  host banned; one that stayed unhealthy longer than the same deadline likewise;
* of the instances that match the desired image and template hash, the best
  (healthy > ready > booting; then the one being served; then the oldest) is
  kept and every other one destroyed (never two instances for one pod);
* a drifted instance (image or template hash) keeps serving until a matching
  one is healthy (make-before-break), then it is destroyed;
* with no matching instance left, one is rented, unless an earlier rental's
  outcome is still unknown (``rent_hold_until``), in which case we wait and
  list again rather than risk renting twice.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from provisioner import model

# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Serve:
    """Point the proxy at this instance."""

    instance: model.Instance


@dataclass(frozen=True, slots=True)
class Unserve:
    """Answer 503 with ``reason`` (a short lower-case code) until something is healthy."""

    reason: str


@dataclass(frozen=True, slots=True)
class Destroy:
    """Destroy one of our instances; ``reason`` is a metric label and a log field."""

    instance: model.Instance
    reason: str


@dataclass(frozen=True, slots=True)
class Ban:
    """Ban the instance's host (and machine) from future rentals."""

    instance: model.Instance
    reason: str


@dataclass(frozen=True, slots=True)
class Rent:
    """Rent a new instance from the best offer."""

    reason: str


Action = Serve | Unserve | Destroy | Ban | Rent


class Phase(enum.StrEnum):
    """Where this pod stands; drives the poll interval and ``/readyz``."""

    SERVING = "serving"
    BOOTING = "booting"
    RENTING = "renting"
    WAITING = "waiting"  # an earlier rent's outcome is unknown, or nothing to rent yet


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    phase: Phase
    next_check_s: float
    serving: model.Instance | None = None
    #: instance id -> (verdict, detail), for logs and status
    verdicts: Mapping[int, tuple[str, str]] = field(default_factory=dict)


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Observation:
    """What the reconciler saw this tick. ``instances`` come from a *successful* list."""

    now: float
    instances: tuple[model.Instance, ...]
    template_hash: str | None
    serving_id: int | None = None
    #: instance id -> result of the latest health check of its upstream (absent: not checked)
    healthy: Mapping[int, bool] = field(default_factory=dict)
    #: instance id -> when we first saw it (boot start), kept across restarts when Redis is on
    first_seen: Mapping[int, float] = field(default_factory=dict)
    #: instance id -> since when its health check has been failing
    unhealthy_since: Mapping[int, float] = field(default_factory=dict)
    #: after an ambiguous rent: do not rent again before this time
    rent_hold_until: float = 0.0
    #: instances that must be replaced regardless (e.g. restart threshold exceeded)
    condemned: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Policy:
    boot_timeout_s: float = 1200.0
    unhealthy_timeout_s: float = 300.0
    steady_interval_s: float = 60.0
    boot_interval_s: float = 5.0


# ---------------------------------------------------------------- classification


class Verdict(enum.StrEnum):
    HEALTHY = "healthy"  # running, ports mapped, health check passed
    READY = "ready"  # running, ports mapped, health not (yet) confirmed
    BOOTING = "booting"
    DEAD = "dead"
    DRIFTED = "drifted"
    TIMED_OUT = "timed-out"
    UNHEALTHY = "unhealthy"  # ready but failing its health check for too long
    CONDEMNED = "condemned"


def has_endpoints(instance: model.Instance, desired: model.DesiredSpec) -> bool:
    """Running with a public address and every wanted container port mapped."""
    return (
        instance.is_running
        and bool(instance.public_ipaddr)
        and all(instance.host_port(p) is not None for p in desired.container_ports)
    )


def drift_of(instance: model.Instance, desired: model.DesiredSpec, template_hash: str | None) -> str | None:
    """``image-drift`` / ``template-drift`` when the instance no longer matches, else None."""
    if instance.image_uuid and model.normalize_image(instance.image_uuid) != model.normalize_image(
        desired.image
    ):
        return "image-drift"
    if template_hash and instance.template_hash_id != template_hash:
        return "template-drift"
    return None


def classify(
    instance: model.Instance, desired: model.DesiredSpec, obs: Observation, policy: Policy
) -> tuple[Verdict, str]:
    """One verdict per instance, with a short detail for logs."""
    if instance.id in obs.condemned:
        return Verdict.CONDEMNED, obs.condemned[instance.id]
    if instance.is_dead:
        detail = "oci-failure" if instance.failed_to_start else f"status-{instance.actual_status}"
        return Verdict.DEAD, detail
    drift = drift_of(instance, desired, obs.template_hash)
    if drift:
        if has_endpoints(instance, desired) and obs.healthy.get(instance.id):
            return Verdict.DRIFTED, drift + ":serving"
        return Verdict.DRIFTED, drift
    if has_endpoints(instance, desired):
        if obs.healthy.get(instance.id):
            return Verdict.HEALTHY, "ok"
        since = obs.unhealthy_since.get(instance.id)
        if since is not None and obs.now - since > policy.unhealthy_timeout_s:
            return Verdict.UNHEALTHY, f"health failing for {obs.now - since:.0f}s"
        return Verdict.READY, "waiting for health check"
    started = obs.first_seen.get(instance.id, instance.start_date or obs.now)
    if obs.now - started > policy.boot_timeout_s:
        return Verdict.TIMED_OUT, f"not ready after {obs.now - started:.0f}s"
    return Verdict.BOOTING, instance.actual_status or "provisioning"


_RANK = {Verdict.HEALTHY: 0, Verdict.READY: 1, Verdict.BOOTING: 2}


def _keep_key(instance: model.Instance, verdict: Verdict, serving_id: int | None) -> tuple[int, int, int]:
    return (_RANK[verdict], 0 if instance.id == serving_id else 1, instance.id)


# ---------------------------------------------------------------- the plan


def plan(desired: model.DesiredSpec, obs: Observation, policy: Policy) -> Plan:
    """Decide this tick's actions. Serving changes come first, destroys next, a rental last."""
    verdicts = {inst.id: classify(inst, desired, obs, policy) for inst in obs.instances}
    by_id = {inst.id: inst for inst in obs.instances}

    matching = [by_id[i] for i, (v, _) in verdicts.items() if v in _RANK]
    matching.sort(key=lambda inst: _keep_key(inst, verdicts[inst.id][0], obs.serving_id))
    keep = matching[0] if matching else None
    keep_verdict = verdicts[keep.id][0] if keep else None

    destroys: list[Action] = []
    bans: list[Action] = []
    for inst in matching[1:]:
        destroys.append(Destroy(inst, "duplicate"))
    for inst in obs.instances:
        verdict, detail = verdicts[inst.id]
        if verdict in (Verdict.DEAD, Verdict.CONDEMNED):
            destroys.append(Destroy(inst, "dead" if verdict is Verdict.DEAD else detail))
        elif verdict in (Verdict.TIMED_OUT, Verdict.UNHEALTHY):
            reason = "boot-timeout" if verdict is Verdict.TIMED_OUT else "unhealthy"
            bans.append(Ban(inst, reason))
            destroys.append(Destroy(inst, reason))

    # Make-before-break: a healthy drifted instance serves until a matching one is healthy.
    drifted = sorted(
        (by_id[i] for i, (v, _) in verdicts.items() if v is Verdict.DRIFTED),
        key=lambda inst: (0 if inst.id == obs.serving_id else 1, inst.id),
    )
    bridge: model.Instance | None = None
    for inst in drifted:
        serving_capable = verdicts[inst.id][1].endswith(":serving")
        if keep_verdict is not Verdict.HEALTHY and serving_capable and bridge is None:
            bridge = inst
            continue
        destroys.append(Destroy(inst, verdicts[inst.id][1].removesuffix(":serving")))

    serve_target = keep if keep_verdict is Verdict.HEALTHY else bridge
    actions: list[Action] = []
    if serve_target is not None:
        actions.append(Serve(serve_target))
    else:
        actions.append(Unserve(_unserve_reason(keep_verdict, obs)))
    actions.extend(bans)
    actions.extend(destroys)

    if keep is None:
        if obs.now < obs.rent_hold_until:
            phase = Phase.WAITING
        else:
            actions.append(Rent(_rent_reason(obs, verdicts)))
            phase = Phase.RENTING
    elif keep_verdict is Verdict.HEALTHY:
        phase = Phase.SERVING
    else:
        phase = Phase.BOOTING

    steady = phase is Phase.SERVING and not destroys
    interval = policy.steady_interval_s if steady else policy.boot_interval_s
    return Plan(
        actions=tuple(actions),
        phase=phase,
        next_check_s=interval,
        serving=serve_target,
        verdicts={i: (str(v), d) for i, (v, d) in verdicts.items()},
    )


def _unserve_reason(keep_verdict: Verdict | None, obs: Observation) -> str:
    if keep_verdict is Verdict.READY:
        return "health-check"
    if keep_verdict is Verdict.BOOTING:
        return "booting"
    if obs.now < obs.rent_hold_until:
        return "confirming-rental"
    return "renting"


def _rent_reason(obs: Observation, verdicts: Mapping[int, tuple[Verdict, str]]) -> str:
    if not obs.instances:
        return "none"
    for verdict, detail in verdicts.values():
        if verdict is Verdict.DRIFTED:
            return detail.removesuffix(":serving")
    for verdict, detail in verdicts.values():
        if verdict in (Verdict.DEAD, Verdict.TIMED_OUT, Verdict.UNHEALTHY, Verdict.CONDEMNED):
            return "boot-timeout" if verdict is Verdict.TIMED_OUT else detail
    return "replace"
