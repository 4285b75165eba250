"""The reaper's rules, without I/O or a clock: which managed instance is kept, orphaned or refused.

Part of the pure core (import-linter: no asyncio, time, os, socket, httpx or redis): it reads the
heartbeats and past destroys through the two protocols below, not the adapters' types.

:func:`decide` takes the instance list, the heartbeats (on the reaper's clock), the reaper's own
record of past destroys and, with ``REAP_CHECK_PODS``, which labels' pods Kubernetes still has; it
returns one :class:`Decision` per instance whose label carries the prefix. ``reaper.py`` gathers those
inputs, logs the decisions and destroys the orphans; its module docstring states the rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from provisioner import model

Verdict = Literal["keep", "orphan", "refused"]


class Beat(Protocol):
    """What the rules read of a heartbeat (``fleet.Heartbeat``)."""

    @property
    def pod(self) -> str: ...

    @property
    def at(self) -> float: ...

    def age_s(self, now: float) -> float: ...


class LastReap(Protocol):
    """What the rules read of the reaper's last destroy of a label (``reapmarks.Reaped``)."""

    @property
    def at(self) -> float: ...

    @property
    def instance_id(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """Which instances are ours and how long a pod may be silent."""

    label_prefix: str = "k8s_pod="
    grace_s: float = 1800.0
    max_share: float = 0.5


#: clock slack between the reaper and Vast's ``start_date`` when telling a later rental
REAPED_SLACK_S = 300.0


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one managed instance, and why."""

    instance_id: int
    label: str
    verdict: Verdict
    reason: str
    instance_age_s: float | None = None
    heartbeat_age_s: float | None = None
    dph: float | None = None
    #: kept although its pod sends no heartbeats (it rented again after a reap): said as a warning
    alive_unseen: bool = False


def is_managed(instance: model.Instance, prefix: str) -> bool:
    """The label carries our prefix (the only instances the reaper may ever touch)."""
    return bool(prefix) and instance.label is not None and instance.label.startswith(prefix)


def decide(
    instances: Iterable[model.Instance],
    heartbeats: Mapping[str, Beat],
    now: float,
    policy: Policy,
    *,
    tracked_since: float | None = None,
    reaped: Mapping[str, LastReap] | None = None,
    live: Mapping[str, str] | None = None,
    gone: Collection[str] = (),
) -> list[Decision]:
    """One decision per managed instance, in id order (see the module docstring for the rules).

    ``heartbeats`` maps labels to their latest heartbeat; ``tracked_since`` is when the heartbeat
    record was started in this Redis (None: unknown, the rule is then not applied); ``reaped``, the
    reaper's last destroy per label; ``live``, why a label's pod is known to be alive (it exists in
    Kubernetes: ``REAP_CHECK_PODS``), and ``gone``, the labels whose pods Kubernetes says are gone.
    """
    ours = sorted((i for i in instances if is_managed(i, policy.label_prefix)), key=lambda i: i.id)
    decisions: list[Decision] = []
    for inst in ours:
        label = inst.label or ""
        beat = heartbeats.get(label)
        beat_age = beat.age_s(now) if beat is not None else None
        age = max(now - inst.start_date, 0.0) if inst.start_date is not None else None
        again = None if label in gone else _rented_again(inst, (reaped or {}).get(label), beat)
        if beat_age is not None and beat_age <= policy.grace_s:
            verdict: Verdict = "keep"
            reason = f"its pod {beat.pod if beat else '?'} sent a heartbeat {beat_age:.0f}s ago"
        elif age is None:
            verdict, reason = "keep", "its age is unknown (no start_date)"
        elif age <= policy.grace_s:
            verdict = "keep"
            reason = f"it is {age:.0f}s old, within the {policy.grace_s:.0f}s grace"
        elif again is not None:
            verdict, reason = "keep", again
        elif label in (live or {}):
            verdict, reason = "keep", (live or {})[label]
        else:
            verdict = "orphan"
            silence = "no heartbeat" if beat_age is None else f"last heartbeat {beat_age:.0f}s ago"
            reason = f"{silence} (grace {policy.grace_s:.0f}s); instance {age:.0f}s old"
        unseen = reason in (again, (live or {}).get(label))
        decisions.append(Decision(inst.id, label, verdict, reason, age, beat_age, inst.dph_total, unseen))
    refusal = _refusal(decisions, heartbeats, now, policy, tracked_since)
    return decisions if refusal is None else refuse_orphans(decisions, refusal)


def refuse_orphans(decisions: list[Decision], why: str) -> list[Decision]:
    """``decisions`` with every orphan refused for ``why``."""
    return [
        dataclasses.replace(d, verdict="refused", reason=f"{d.reason}; refused: {why}")
        if d.verdict == "orphan"
        else d
        for d in decisions
    ]


def _rented_again(inst: model.Instance, last: LastReap | None, beat: Beat | None) -> str | None:
    """Why ``inst`` says its pod is alive: rented after the reaper destroyed the label's last one.
    Not when the label has a heartbeat from after that destroy: its pod reached Redis since, so its
    heartbeats tell (a pod scaled away, back, and away again is gone; else its instance would be kept
    for as long as the reaper remembers the first destroy, a week)."""
    if last is None or inst.id == last.instance_id or inst.start_date is None:
        return None
    if beat is not None and beat.at > last.at:
        return None
    if inst.start_date < last.at - REAPED_SLACK_S:
        return None
    return (
        f"its pod rented it after instance {last.instance_id} was reaped: the pod is alive without"
        " heartbeats (can it reach Redis?)"
    )


def _refusal(
    decisions: list[Decision],
    heartbeats: Mapping[str, Beat],
    now: float,
    policy: Policy,
    tracked_since: float | None,
) -> str | None:
    """Why the orphans must be left alone this time, or None."""
    orphans = sum(1 for d in decisions if d.verdict == "orphan")
    if not orphans:
        return None
    if not any(label.startswith(policy.label_prefix) for label in heartbeats):
        return (
            f"there is no heartbeat in Redis at all under {policy.label_prefix!r} (wrong BLACKLIST_REDIS_URL,"
            " BLACKLIST_KEY_PREFIX or REAP_LABEL_PREFIX, or pods without BLACKLIST_ENABLED): every"
            " instance would look orphaned"
        )
    if tracked_since is not None and now - tracked_since <= policy.grace_s:
        return (
            f"the heartbeat record in Redis is only {max(now - tracked_since, 0):.0f}s old (Redis was"
            " restarted or flushed): live pods may not have written theirs yet"
        )
    if orphans > policy.max_share * len(decisions):
        return (
            f"it would destroy {orphans} of {len(decisions)} managed instances, more than"
            f" REAP_MAX_SHARE={policy.max_share:g}"
        )
    return None
