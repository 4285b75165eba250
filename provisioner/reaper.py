"""``provisioner reap``: destroy the instances whose pod is gone, and nothing else.

A pod keeps its instance when it stops (it may only be restarting), so a pod that was deleted or
scaled away leaves an orphan that bills until someone destroys it. Every running pod writes a
heartbeat under its label (``fleet.py``); the reaper lists every instance of the account and
destroys those whose label carries ``REAP_LABEL_PREFIX`` but whose pod has been silent longer than
``REAP_GRACE_SECONDS``.

:func:`decide` is the pure part (no I/O, no clock): per managed instance one :class:`Decision`,

* ``keep`` - its label has a heartbeat at most the grace old; or the instance itself is at most
  the grace old (a new pod writes its first heartbeat after its rental: never reap it); or its
  age is unknown (no ``start_date``); or the reaper destroyed another instance of its label
  before and this one was rented since (``reapmarks``): only a live pod rents, so that pod is
  alive without heartbeats (it cannot reach Redis), and reaping again would only loop;
* ``orphan`` - no heartbeat that fresh, and the instance is older than the grace;
* ``refused`` - an orphan left alone because the whole picture looks wrong: there is no
  heartbeat under the label prefix in Redis (wrong Redis or prefix, another deployment's
  heartbeats only, or pods without ``BLACKLIST_ENABLED``), the heartbeat record itself is younger
  than the grace (Redis was flushed or restarted: live pods have not all written again yet), or it
  would destroy more than ``REAP_MAX_SHARE`` of the managed instances.

An instance whose label lacks the prefix gets no decision at all: it is never touched.

:func:`reap` is the I/O around it. It refuses without listing when Redis cannot be read (without
heartbeats every instance would look orphaned) and refuses when the instance list fails. With
``apply`` it reads each orphan's heartbeat once more right before destroying it (its pod may just
have come back). Every decision is one JSON log line (``"event": "reap-decision"``). Heartbeat ages
are on the fleet's clock (``redisclock``), Vast's times on the reaper's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from provisioner import errors, fleet, model, redisclock, store, wiring
from provisioner.reapmarks import Reaped, ReapRecord
from provisioner.settings import ReaperSettings
from provisioner.vast import client as vast_client

log = logging.getLogger("provisioner.reaper")

Verdict = Literal["keep", "orphan", "refused"]


@dataclass(frozen=True, slots=True)
class Policy:
    """Which instances are ours and how long a pod may be silent."""

    label_prefix: str = "k8s_pod="
    grace_s: float = 1800.0
    max_share: float = 0.5


#: clock slack between the reaper and Vast's ``start_date`` when telling a later rental
REAPED_SLACK_S = 300.0
#: before destroying an orphan that has a heartbeat, wait this long and read it again: a live pod
#: writes one within it, whatever its stamps say (they are on the Redis clock once the pod measured
#: it: ``redisclock``; on its own clock before that, or with an older version of the pod)
CHANGE_WAIT_S = fleet.HEARTBEAT_INTERVAL_S + 5.0
#: the wait itself (tests replace it)
_pause = asyncio.sleep


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
    heartbeats: Mapping[str, fleet.Heartbeat],
    now: float,
    policy: Policy,
    *,
    tracked_since: float | None = None,
    reaped: Mapping[str, Reaped] | None = None,
) -> list[Decision]:
    """One decision per managed instance, in id order (see the module docstring for the rules).

    ``heartbeats`` maps labels to their latest heartbeat; ``tracked_since`` is when the heartbeat
    record was started in this Redis (None: unknown, the rule is then not applied); ``reaped``, the
    reaper's last destroy per label.
    """
    ours = sorted((i for i in instances if is_managed(i, policy.label_prefix)), key=lambda i: i.id)
    decisions: list[Decision] = []
    for inst in ours:
        label = inst.label or ""
        beat = heartbeats.get(label)
        beat_age = beat.age_s(now) if beat is not None else None
        age = max(now - inst.start_date, 0.0) if inst.start_date is not None else None
        again = _rented_again(inst, (reaped or {}).get(label))
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
        else:
            verdict = "orphan"
            silence = "no heartbeat" if beat_age is None else f"last heartbeat {beat_age:.0f}s ago"
            reason = f"{silence} (grace {policy.grace_s:.0f}s); instance {age:.0f}s old"
        unseen = reason == again
        decisions.append(Decision(inst.id, label, verdict, reason, age, beat_age, inst.dph_total, unseen))
    refusal = _refusal(decisions, heartbeats, now, policy, tracked_since)
    if refusal is None:
        return decisions
    return [
        dataclasses.replace(d, verdict="refused", reason=f"{d.reason}; refused: {refusal}")
        if d.verdict == "orphan"
        else d
        for d in decisions
    ]


def _rented_again(inst: model.Instance, last: Reaped | None) -> str | None:
    """Why ``inst`` says its pod is alive: rented after the reaper destroyed the label's last one."""
    if last is None or inst.id == last.instance_id or inst.start_date is None:
        return None
    if inst.start_date < last.at - REAPED_SLACK_S:
        return None
    return (
        f"its pod rented it after instance {last.instance_id} was reaped: the pod is alive without"
        " heartbeats (can it reach Redis?)"
    )


def _refusal(
    decisions: list[Decision],
    heartbeats: Mapping[str, fleet.Heartbeat],
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


# ---------------------------------------------------------------- the run


@dataclass
class Outcome:
    """What a run did; ``problem`` (exit 1) when it refused or a destroy failed."""

    decisions: list[Decision] = field(default_factory=list)
    destroyed: list[int] = field(default_factory=list)
    problem: str | None = None


def _log_decision(d: Decision, *, dry_run: bool) -> None:
    """One ``reap-decision`` line: the decision's fields (ages to 0.1 s) and ``dry_run``."""
    level = logging.WARNING if d.verdict != "keep" or d.alive_unseen else logging.INFO
    items = dataclasses.asdict(d).items()
    fields = {k: round(v, 1) if k.endswith("age_s") and v is not None else v for k, v in items}
    extra = {"event": "reap-decision", **fields, "dry_run": dry_run}
    log.log(level, "instance %s (%s): %s: %s", d.instance_id, d.label, d.verdict, d.reason, extra=extra)


def _refuse(problem: str) -> Outcome:
    log.error("reap refused: %s", problem, extra={"event": "reap-refused", "reason": problem})
    return Outcome(problem=f"reap refused: {problem}")


async def reap(
    vast: vast_client.VastClient,
    record: fleet.Fleet,
    policy: Policy,
    *,
    apply: bool,
    clock: Callable[[], float] = time.time,
    reaped: ReapRecord | None = None,
) -> Outcome:
    """Decide about every managed instance; with ``apply``, destroy the orphans (remembered in ``reaped``).
    ``clock``: the reaper's own, which Vast's times are compared with (:func:`_read_beats`)."""
    try:
        heartbeats, tracked_since, lead = await _read_beats(record, clock)
    except errors.StoreError as exc:
        return _refuse(f"{exc}; without the pods' heartbeats every instance would look orphaned")
    try:
        instances = await vast.list_instances()
    except errors.AuthError:
        raise
    except errors.VastError as exc:
        return _refuse(f"the instance list failed ({exc}); nothing is decided without a full list")
    try:
        last = await _last_reaps(reaped, instances, policy.label_prefix)
    except errors.StoreError as exc:
        return _refuse(f"{exc}; without the reaper's own record a live pod's instance could be reaped again")
    decisions = decide(instances, heartbeats, clock(), policy, tracked_since=tracked_since, reaped=last)
    outcome = Outcome(decisions=decisions)
    for d in decisions:
        _log_decision(d, dry_run=not apply)
    orphans = [d for d in decisions if d.verdict == "orphan"]
    refused = [d for d in decisions if d.verdict == "refused"]
    foreign = sum(1 for i in instances if not is_managed(i, policy.label_prefix))
    if refused:
        outcome.problem = f"reap refused: {refused[0].reason.partition('; refused: ')[2]}"
    elif apply:
        await _destroy(vast, record, lead, policy, heartbeats, orphans, outcome, clock, reaped)
    log.info(
        "%s: %d managed instance(s): %d kept, %d orphaned, %d refused, %d destroyed;"
        " %d without the %r prefix left alone",
        "reap" if apply else "reap (dry run)",
        len(decisions),
        len(decisions) - len(orphans) - len(refused),
        len(orphans),
        len(refused),
        len(outcome.destroyed),
        foreign,
        policy.label_prefix,
        extra={"event": "reap-summary", "dry_run": not apply, "destroyed": outcome.destroyed},
    )
    return outcome


async def _read_beats(
    record: fleet.Fleet, clock: Callable[[], float]
) -> tuple[dict[str, fleet.Heartbeat], float | None, float]:
    """The heartbeats and the record's start on the reaper's ``clock``, and the fleet clock's lead
    over it (read after the clock's measurement): the pods stamp them on the fleet's clock
    (``redisclock``: Redis's), while Vast's times are compared with the reaper's own."""
    await redisclock.sync_if_due(record.clock)
    lead = record.clock() - clock()
    heartbeats = {label: _moved(b, lead) for label, b in (await record.heartbeats()).items()}
    since = await record.tracked_since()
    return heartbeats, (since - lead if since is not None else None), lead


async def _last_reaps(
    reaped: ReapRecord | None, instances: Iterable[model.Instance], prefix: str
) -> dict[str, Reaped]:
    """The reaper's last destroy for each managed label (none without a record)."""
    if reaped is None:
        return {}
    return await reaped.read(i.label or "" for i in instances if is_managed(i, prefix))


async def _destroy(
    vast: vast_client.VastClient,
    record: fleet.Fleet,
    lead: float,
    policy: Policy,
    first: Mapping[str, fleet.Heartbeat],
    orphans: list[Decision],
    outcome: Outcome,
    clock: Callable[[], float],
    reaped: ReapRecord | None = None,
) -> None:
    failures: list[str] = []
    if any(d.label in first for d in orphans):
        await _pause(CHANGE_WAIT_S)
    for d in orphans:
        try:
            beat = await record.heartbeat(d.label)
            beat = _moved(beat, lead) if beat is not None else None
        except errors.StoreError as exc:
            failures.append(f"instance {d.instance_id}: heartbeat not re-read ({exc})")
            break
        if (why := _revived(beat, first.get(d.label), clock(), policy.grace_s)) is not None:
            log.info(
                "instance %s (%s): kept: %s",
                d.instance_id,
                d.label,
                why,
                extra={"event": "reap-revived", "instance_id": d.instance_id, "label": d.label},
            )
            continue
        try:
            gone = await vast.destroy_instance(d.instance_id)
        except errors.AuthError:
            raise
        except errors.VastError as exc:
            failures.append(f"instance {d.instance_id}: {exc}")
            log.error(
                "instance %s (%s): destroy failed: %s",
                d.instance_id,
                d.label,
                exc,
                extra={"event": "reap-failed", "instance_id": d.instance_id, "label": d.label},
            )
            continue
        outcome.destroyed.append(d.instance_id)
        await _destroyed(d, gone, Reaped(clock(), d.instance_id), reaped, failures)
    if failures:
        outcome.problem = "reap failed for " + "; ".join(failures)


def _moved(beat: fleet.Heartbeat, lead: float) -> fleet.Heartbeat:
    """``beat`` with its time on the reaper's clock, which the fleet's clock was ``lead`` s ahead of."""
    return dataclasses.replace(beat, at=beat.at - lead) if lead else beat


def _revived(
    beat: fleet.Heartbeat | None, first: fleet.Heartbeat | None, now: float, grace_s: float
) -> str | None:
    """Why an orphan's pod turns out alive on the second read, or None."""
    if beat is None:
        return None
    if beat.age_s(now) <= grace_s:
        return f"its pod {beat.pod} is back (heartbeat {beat.age_s(now):.0f}s ago)"
    if first is not None and beat.at != first.at:
        return f"its pod {beat.pod} wrote a heartbeat since the first read (on a clock behind?)"
    return None


async def _destroyed(
    d: Decision, gone: bool, done: Reaped, reaped: ReapRecord | None, failures: list[str]
) -> None:
    """Log a destroy and remember it for the label (a later rental of it means its pod lives)."""
    log.warning(
        "instance %s (%s): destroyed%s",
        d.instance_id,
        d.label,
        "" if gone else " (it was already gone)",
        extra={"event": "reap-destroy", "instance_id": d.instance_id, "label": d.label, "dph": d.dph},
    )
    if reaped is not None:
        try:
            await reaped.mark(d.label, done)
        except errors.StoreError as exc:
            failures.append(f"instance {d.instance_id}: destroyed, not recorded ({exc})")


async def run(settings: ReaperSettings, *, apply: bool, max_share: float | None = None) -> Outcome:
    """Build the clients at the edge, reap once, close them."""
    policy = Policy(
        label_prefix=settings.reap_label_prefix,
        grace_s=settings.reap_grace_seconds,
        max_share=settings.reap_max_share if max_share is None else max_share,
    )
    redis = store.connect(
        settings.blacklist_redis_url.get_secret_value(), timeout_s=settings.blacklist_redis_timeout_seconds
    )
    deadline_s = 4 * settings.blacklist_redis_timeout_seconds
    try:
        async with wiring.open_vast(settings, redis=redis) as vast:  # paced with the pods
            clock = redisclock.RedisClock(redis, deadline_s=deadline_s)  # the pods stamp heartbeats on it
            record = fleet.Fleet(
                redis, keys=store.Keys(settings.blacklist_key_prefix), deadline_s=deadline_s, clock=clock
            )
            reaped = ReapRecord(redis, record.keys, deadline_s=deadline_s)
            return await reap(vast, record, policy, apply=apply, reaped=reaped)
    finally:
        await redis.aclose()
