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
* a drifted instance (image or template hash), or one condemned by the restart
  threshold, keeps serving until a matching one is healthy (make-before-break),
  then it is destroyed;
* a status string Vast was never seen to use is "unknown": neither booting nor
  dead; an unknown-status instance that answers its health check is served like
  a healthy one, one that does not waits like a booting one (same deadlines);
* with no matching instance left, one is rented, unless an earlier rental's
  outcome is still unknown (``rent_hold_until``), in which case we wait and
  list again rather than risk renting twice.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from provisioner import model

# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Serve:
    """Point the proxy at this instance."""

    instance: model.Instance
    #: a drifted or condemned instance serving until its replacement answers (make-before-break): its
    #: serving says nothing about whether rentals of the current spec work (the rent brakes stay on)
    bridge: bool = False


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
    #: instance id -> its verdict (kind, detail), for logs and status
    verdicts: Mapping[int, Verdict] = field(default_factory=dict)


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
    #: instances that answered their health check since their boot (re)started: only their failing
    #: checks make them unhealthy; the others are judged by the boot timeout (the app may be loading)
    answered: frozenset[int] = frozenset()
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


class VerdictKind(enum.StrEnum):
    HEALTHY = "healthy"  # running, ports mapped, health check passed
    READY = "ready"  # running, ports mapped, health not (yet) confirmed
    BOOTING = "booting"
    DEAD = "dead"
    DRIFTED = "drifted"
    TIMED_OUT = "timed-out"
    UNHEALTHY = "unhealthy"  # ready but failing its health check for too long
    CONDEMNED = "condemned"
    UNKNOWN = "unknown"  # a status string Vast was never seen to use, not answering (yet)


class Verdict(NamedTuple):
    """What the planner concluded about one instance; ``detail`` is short, for logs and reasons."""

    kind: VerdictKind
    detail: str
    #: drifted or condemned but still healthy: it may keep serving until a matching instance is
    #: (make-before-break)
    can_bridge: bool = False
    #: drifted or condemned, failing its health check for less than the unhealthy timeout after it
    #: answered: not served, and not destroyed either while no matching instance is healthy (one
    #: failed check must not end a make-before-break)
    may_wait: bool = False


def has_endpoints(instance: model.Instance, desired: model.DesiredSpec) -> bool:
    """Running (or in a status unknown to us) with a public address and every wanted port mapped."""
    return (
        (instance.is_running or instance.status_unknown)
        and bool(instance.public_ipaddr)
        and all(instance.host_port(p) is not None for p in desired.container_ports)
    )


def drift_of(instance: model.Instance, desired: model.DesiredSpec, template_hash: str | None) -> str | None:
    """``image-drift`` / ``template-drift`` / ``auth-drift`` when the instance no longer matches, else None.

    A field the list left out (null) is unknown, not a mismatch: a replacement costs a rental, and a
    list that keeps leaving it out would otherwise rent and destroy on every tick.
    """
    if instance.image_uuid and model.normalize_image(instance.image_uuid) != model.normalize_image(
        desired.image
    ):
        return "image-drift"
    if template_hash and instance.template_hash_id and instance.template_hash_id != template_hash:
        return "template-drift"
    if instance.auth_tag is not None and instance.auth_tag != desired.auth_tag:
        # rented with another upstream secret (a rotated API key, UPSTREAM_AUTH_HEADER unset): its
        # workload refuses what nginx sends now
        return "auth-drift"
    if desired.auth_tag is not None and instance.rented_without_auth:
        # rented before UPSTREAM_AUTH_HEADER was set: its workload answers anyone who finds its port
        return "auth-drift"
    return None


def classify(
    instance: model.Instance, desired: model.DesiredSpec, obs: Observation, policy: Policy
) -> Verdict:
    """One verdict per instance, with a short detail for logs."""
    if instance.id in obs.condemned:
        return _replaced(VerdictKind.CONDEMNED, obs.condemned[instance.id], instance, desired, obs, policy)
    if instance.is_dead:
        detail = "oci-failure" if instance.failed_to_start else f"status-{instance.actual_status}"
        return Verdict(VerdictKind.DEAD, detail)
    drift = drift_of(instance, desired, obs.template_hash)
    if drift:
        return _replaced(VerdictKind.DRIFTED, drift, instance, desired, obs, policy)
    unknown = f"status {instance.actual_status!r} unknown" if instance.status_unknown else None
    started = obs.first_seen.get(instance.id, instance.start_date or obs.now)
    up = has_endpoints(instance, desired)
    if up and obs.healthy.get(instance.id):
        return Verdict(VerdictKind.HEALTHY, f"{unknown}; answering" if unknown else "ok")
    since = obs.unhealthy_since.get(instance.id)
    if up and instance.id in obs.answered:  # it answered since its boot: a failing check counts
        if since is not None and obs.now - since > policy.unhealthy_timeout_s:
            return Verdict(VerdictKind.UNHEALTHY, f"health failing for {obs.now - since:.0f}s")
    elif obs.now - started > policy.boot_timeout_s:  # not up yet since its boot (maybe loading)
        return Verdict(VerdictKind.TIMED_OUT, f"not ready after {obs.now - started:.0f}s")
    if unknown:
        return Verdict(VerdictKind.UNKNOWN, unknown)
    if up:
        return Verdict(VerdictKind.READY, "waiting for health check")
    return Verdict(VerdictKind.BOOTING, instance.actual_status or "provisioning")


def _replaced(
    kind: VerdictKind,
    detail: str,
    instance: model.Instance,
    desired: model.DesiredSpec,
    obs: Observation,
    policy: Policy,
) -> Verdict:
    """A drifted or condemned instance: whether it may bridge (healthy now), or wait unserved (it
    answered since its boot and has been failing for less than the unhealthy timeout)."""
    if not has_endpoints(instance, desired):
        return Verdict(kind, detail)
    if obs.healthy.get(instance.id):
        return Verdict(kind, detail, can_bridge=True)
    since = obs.unhealthy_since.get(instance.id)
    brief = since is not None and obs.now - since <= policy.unhealthy_timeout_s
    return Verdict(kind, detail, may_wait=instance.id in obs.answered and brief)


_RANK = {VerdictKind.HEALTHY: 0, VerdictKind.READY: 1, VerdictKind.UNKNOWN: 2, VerdictKind.BOOTING: 2}


def _keep_key(instance: model.Instance, verdict: VerdictKind, serving_id: int | None) -> tuple[int, int, int]:
    return (_RANK[verdict], 0 if instance.id == serving_id else 1, instance.id)


# ---------------------------------------------------------------- the plan


def plan(desired: model.DesiredSpec, obs: Observation, policy: Policy) -> Plan:
    """Decide this tick's actions. Serving changes come first, destroys next, a rental last."""
    verdicts = {inst.id: classify(inst, desired, obs, policy) for inst in obs.instances}
    by_id = {inst.id: inst for inst in obs.instances}

    matching = [by_id[i] for i, v in verdicts.items() if v.kind in _RANK]
    matching.sort(key=lambda inst: _keep_key(inst, verdicts[inst.id].kind, obs.serving_id))
    keep = matching[0] if matching else None
    keep_kind = verdicts[keep.id].kind if keep else None

    destroys: list[Action] = [Destroy(inst, "duplicate") for inst in matching[1:]]
    bans: list[Action] = []
    for inst in obs.instances:
        verdict = verdicts[inst.id]
        if verdict.kind is VerdictKind.DEAD:
            destroys.append(Destroy(inst, "dead"))
        elif verdict.kind in (VerdictKind.TIMED_OUT, VerdictKind.UNHEALTHY):
            reason = "boot-timeout" if verdict.kind is VerdictKind.TIMED_OUT else "unhealthy"
            bans.append(Ban(inst, reason))
            destroys.append(Destroy(inst, reason))

    bridge = _bridge_and_replace(obs, by_id, verdicts, keep_kind, destroys)
    serve_target = keep if keep_kind is VerdictKind.HEALTHY else bridge
    actions: list[Action] = [
        Serve(serve_target, bridge=serve_target is bridge)
        if serve_target
        else Unserve(_unserve_reason(keep_kind, obs))
    ]
    actions.extend(bans)
    actions.extend(destroys)

    if keep is None:
        if obs.now < obs.rent_hold_until:
            phase = Phase.WAITING
        else:
            actions.append(Rent(_rent_reason(obs, verdicts)))
            phase = Phase.RENTING
    elif keep_kind is VerdictKind.HEALTHY:
        phase = Phase.SERVING
    else:
        phase = Phase.BOOTING

    steady = phase is Phase.SERVING and not destroys
    interval = policy.steady_interval_s if steady else policy.boot_interval_s
    return Plan(tuple(actions), phase, interval, serving=serve_target, verdicts=verdicts)


_REPLACED = frozenset({VerdictKind.DRIFTED, VerdictKind.CONDEMNED})


def _bridge_and_replace(
    obs: Observation,
    by_id: Mapping[int, model.Instance],
    verdicts: Mapping[int, Verdict],
    keep_kind: VerdictKind | None,
    destroys: list[Action],
) -> model.Instance | None:
    """Make-before-break: a healthy drifted or condemned instance serves until a matching one is healthy.

    Returns that bridge (the served one first) and appends a destroy for every other one to replace,
    except, while nothing serves, one that may wait (briefly failing: it may answer again).
    """
    replaced = sorted(
        (by_id[i] for i, v in verdicts.items() if v.kind in _REPLACED),
        key=lambda inst: (0 if inst.id == obs.serving_id else 1, inst.id),
    )
    bridge = waiting = None
    if keep_kind is not VerdictKind.HEALTHY:
        bridge = next((inst for inst in replaced if verdicts[inst.id].can_bridge), None)
        if bridge is None:  # only while nothing serves: one briefly failing instance may answer again
            waiting = next((inst for inst in replaced if verdicts[inst.id].may_wait), None)
    destroys.extend(
        Destroy(inst, verdicts[inst.id].detail) for inst in replaced if inst not in (bridge, waiting)
    )
    return bridge


def _unserve_reason(keep_kind: VerdictKind | None, obs: Observation) -> str:
    if keep_kind is VerdictKind.READY:
        return "health-check"
    if keep_kind is VerdictKind.BOOTING:
        return "booting"
    if keep_kind is VerdictKind.UNKNOWN:
        return "status-unknown"
    if obs.now < obs.rent_hold_until:
        return "confirming-rental"
    return "renting"


def _rent_reason(obs: Observation, verdicts: Mapping[int, Verdict]) -> str:
    if not obs.instances:
        return "none"
    for verdict in verdicts.values():
        if verdict.kind is VerdictKind.DRIFTED:
            return verdict.detail
    for verdict in verdicts.values():
        if verdict.kind in (
            VerdictKind.DEAD,
            VerdictKind.TIMED_OUT,
            VerdictKind.UNHEALTHY,
            VerdictKind.CONDEMNED,
        ):
            return "boot-timeout" if verdict.kind is VerdictKind.TIMED_OUT else verdict.detail
    return "replace"
