"""``provisioner reap``: destroy the instances whose pod is gone, and nothing else.

A pod keeps its instance when it stops (it may only be restarting), so a pod that was deleted or
scaled away leaves an orphan that bills until someone destroys it. Every running pod writes a
heartbeat under its label (``fleet.py``); the reaper lists every instance of the account and
destroys those whose label carries ``REAP_LABEL_PREFIX`` but whose pod has been silent longer than
``REAP_GRACE_SECONDS``.

:func:`decide` (``reapdecide.py``) is the pure part (no I/O, no clock): per managed instance one
:class:`Decision`,

* ``keep`` - its label has a heartbeat at most the grace old; or the instance itself is at most
  the grace old (a new pod writes its first heartbeat after its rental: never reap it); or its
  age is unknown (no ``start_date``); or the reaper destroyed another instance of its label
  before and this one was rented since (``reapmarks``): only a live pod rents, so that pod is
  alive without heartbeats (it cannot reach Redis), and reaping again would only loop; or, with
  ``REAP_CHECK_PODS``, its pod still exists in Kubernetes (``kube.py``: asked for every orphan,
  refused or not, and every instance kept as rented after a reap, before anything is destroyed; when
  the API does not say, every orphan is refused). "Rented after a reap" does not hold once the label
  has a heartbeat from after the reap, or once Kubernetes says the pod is gone;
* ``orphan`` - no heartbeat that fresh, and the instance is older than the grace;
* ``refused`` - an orphan left alone because the whole picture looks wrong: there is no
  heartbeat under the label prefix in Redis (wrong Redis or prefix, another deployment's
  heartbeats only, or pods without ``BLACKLIST_ENABLED``), the heartbeat record itself is younger
  than the grace (Redis was flushed or restarted: live pods have not all written again yet), or it
  would destroy more than ``REAP_MAX_SHARE`` of the managed instances.

An instance whose label lacks the prefix gets no decision at all: it is never touched.

:func:`reap` is the I/O around it. It refuses without listing when Redis cannot be read (without
heartbeats every instance would look orphaned) and refuses when the instance list fails. With
``apply`` it reads each orphan's heartbeat once more right before destroying it, and with the pod
check asks Kubernetes again (its pod may just have come back: ``_SecondLook``). Every decision is
one JSON log line (``"event": "reap-decision"``). Heartbeat ages are on the fleet's clock
(``redisclock``), Vast's times on the reaper's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import errors, fleet, kube, logs, model, redisclock, store, wiring
from provisioner.reapdecide import Decision, Policy, Verdict, decide, is_managed, refuse_orphans
from provisioner.reapmarks import Reaped, ReapRecord
from provisioner.settings import ReaperSettings
from provisioner.vast import client as vast_client

log = logging.getLogger("provisioner.reaper")

#: before destroying an orphan that has a heartbeat, wait this long and read it again: a live pod
#: writes one within it, whatever its stamps say (they are on the Redis clock once the pod measured
#: it: ``redisclock``; on its own clock before that, or with an older version of the pod)
CHANGE_WAIT_S = fleet.HEARTBEAT_INTERVAL_S + 5.0
#: the wait itself (tests replace it)
_pause = asyncio.sleep
#: re-exported: the rules live in ``reapdecide``
__all__ = ["CHANGE_WAIT_S", "Decision", "Outcome", "Policy", "Verdict", "decide", "is_managed", "reap", "run"]


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
    pods: kube.Pods | None = None,
) -> Outcome:
    """Decide about every managed instance; with ``apply``, destroy the orphans (remembered in ``reaped``).
    ``clock``: the reaper's own, which Vast's times are compared with (:func:`_read_beats`); ``pods``:
    where to ask whether an orphan's pod still exists (``REAP_CHECK_PODS``)."""
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
    now = clock()

    def decided(live: Mapping[str, str] | None = None, gone: Collection[str] = ()) -> list[Decision]:
        return decide(
            instances, heartbeats, now, policy, tracked_since=tracked_since, reaped=last, live=live, gone=gone
        )

    decisions, unasked = decided(), None
    if pods is not None:
        decisions, unasked = await _ask_pods(pods, decisions, decided)
    outcome = Outcome(decisions=decisions)
    for d in decisions:
        _log_decision(d, dry_run=not apply)
    orphans = [d for d in decisions if d.verdict == "orphan"]
    refused = [d for d in decisions if d.verdict == "refused"]
    if refused:
        outcome.problem = f"reap refused: {unasked or refused[0].reason.partition('; refused: ')[2]}"
    elif apply:
        second = _SecondLook(record, lead, policy.grace_s, heartbeats, clock, pods)
        await _destroy(vast, second, orphans, outcome, reaped)
    foreign = sum(1 for i in instances if not is_managed(i, policy.label_prefix))
    _log_summary(outcome, apply=apply, foreign=foreign, prefix=policy.label_prefix)
    return outcome


def _log_summary(outcome: Outcome, *, apply: bool, foreign: int, prefix: str) -> None:
    verdicts = [d.verdict for d in outcome.decisions]
    log.info(
        "%s: %d managed instance(s): %d kept, %d orphaned, %d refused, %d destroyed;"
        " %d without the %r prefix left alone",
        "reap" if apply else "reap (dry run)",
        len(verdicts),
        verdicts.count("keep"),
        verdicts.count("orphan"),
        verdicts.count("refused"),
        len(outcome.destroyed),
        foreign,
        prefix,
        extra={"event": "reap-summary", "dry_run": not apply, "destroyed": outcome.destroyed},
    )


async def _ask_pods(
    pods: kube.Pods,
    decisions: list[Decision],
    decided: Callable[[Mapping[str, str], Collection[str]], list[Decision]],
) -> tuple[list[Decision], str | None]:
    """The decisions once Kubernetes was asked about the pod of every orphan, and of every instance
    kept only because it was rented after a reap (``decided`` with the pods that exist and those that
    are gone); when it did not say, every orphan refused, and why."""
    try:
        live, gone = await _look_up_pods(pods, decisions)
    except errors.KubeError as exc:
        unasked = f"{exc}; an orphan goes only once Kubernetes says its pod is gone"
        return refuse_orphans(decisions, unasked), unasked
    return decided(live, gone), None


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


async def _look_up_pods(pods: kube.Pods, decisions: Iterable[Decision]) -> tuple[dict[str, str], set[str]]:
    """Which pods of the orphans (refused or not) and of the instances kept unseen (rented after a
    reap) still exist in Kubernetes, with why that keeps them, and which are gone. ``KubeError`` when
    the API does not say, or a label names no pod."""
    live: dict[str, str] = {}
    gone: set[str] = set()
    for d in decisions:
        if d.verdict == "keep" and not d.alive_unseen:
            continue
        pod, exists = await pods.labelled(d.label)
        if exists:
            live[d.label] = (
                f"its pod {pod} exists in Kubernetes: it is alive without heartbeats (can it reach Redis?)"
            )
        else:
            gone.add(d.label)
    return live, gone


async def _last_reaps(
    reaped: ReapRecord | None, instances: Iterable[model.Instance], prefix: str
) -> dict[str, Reaped]:
    """The reaper's last destroy for each managed label (none without a record)."""
    if reaped is None:
        return {}
    return await reaped.read(i.label or "" for i in instances if is_managed(i, prefix))


@dataclass(frozen=True, slots=True)
class _SecondLook:
    """What the look at an orphan right before its destroy needs."""

    record: fleet.Fleet
    #: the fleet clock's lead over ``clock`` (``_read_beats``)
    lead: float
    grace_s: float
    #: the heartbeats of the first read
    first: Mapping[str, fleet.Heartbeat]
    clock: Callable[[], float]
    pods: kube.Pods | None

    async def kept(self, label: str) -> str | None:
        """Why the orphan of ``label`` is kept after all: its pod wrote a heartbeat since the first
        read, or (``REAP_CHECK_PODS``) exists in Kubernetes by now (a StatefulSet recreates a pod under
        its name, and the new one adopts the instance). ``StoreError``/``KubeError`` when it cannot be
        told."""
        beat = await self.record.heartbeat(label)
        beat = _moved(beat, self.lead) if beat is not None else None
        why = _revived(beat, self.first.get(label), self.clock(), self.grace_s)
        if why is None and self.pods is not None:
            pod, exists = await self.pods.labelled(label)
            if exists:
                why = f"its pod {pod} exists in Kubernetes by now"
        return why


async def _destroy(
    vast: vast_client.VastClient,
    second: _SecondLook,
    orphans: list[Decision],
    outcome: Outcome,
    reaped: ReapRecord | None = None,
) -> None:
    failures: list[str] = []
    if any(d.label in second.first for d in orphans):
        await _pause(CHANGE_WAIT_S)
    for d in orphans:
        try:
            why = await second.kept(d.label)
        except (errors.StoreError, errors.KubeError) as exc:
            failures.append(f"instance {d.instance_id}: not destroyed, its pod not looked at again ({exc})")
            break
        if why is not None:
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
        await _destroyed(d, gone, Reaped(second.clock(), d.instance_id), reaped, failures)
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


async def run(
    settings: ReaperSettings,
    *,
    apply: bool,
    max_share: float | None = None,
    env: Mapping[str, str] = os.environ,
    sa_dir: Path = kube.SA_DIR,
) -> Outcome:
    """Build the clients at the edge (the Kubernetes access first: without it nothing is listed),
    reap once, close them. ``env`` and ``sa_dir``: where this pod's Kubernetes access is read from."""
    policy = Policy(
        label_prefix=settings.reap_label_prefix,
        grace_s=settings.reap_grace_seconds,
        max_share=settings.reap_max_share if max_share is None else max_share,
    )
    async with _pod_check(settings.reap_check_pods, env, sa_dir) as pods:
        redis = store.connect(
            settings.blacklist_redis_url.get_secret_value(),
            timeout_s=settings.blacklist_redis_timeout_seconds,
        )
        deadline_s = 4 * settings.blacklist_redis_timeout_seconds
        try:
            async with wiring.open_vast(settings, redis=redis) as vast:  # paced with the pods
                clock = redisclock.RedisClock(redis, deadline_s=deadline_s)  # the pods stamp heartbeats on it
                keys = store.Keys(settings.blacklist_key_prefix)
                record = fleet.Fleet(redis, keys=keys, deadline_s=deadline_s, clock=clock)
                reaped = ReapRecord(redis, record.keys, deadline_s=deadline_s)
                return await reap(vast, record, policy, apply=apply, reaped=reaped, pods=pods)
        finally:
            await redis.aclose()


@contextlib.asynccontextmanager
async def _pod_check(on: bool, env: Mapping[str, str], sa_dir: Path) -> AsyncIterator[kube.Pods | None]:
    """This pod's view of its Kubernetes API (``ConfigError`` when it has none), or None when off."""
    if not on:
        yield None
        return
    access = kube.in_cluster(env, sa_dir)
    logs.add_secret(access.token)
    async with kube.http_client(access) as http:
        yield kube.Pods(http, access.namespace)
