"""Progress lines: one log line per booting or ready instance (status, elapsed time), and the line
repeated while no healthy instance is served, saying what the pod is doing now.

Formatting over the reconciler's state; the caller passes the logger and the time.
"""

from __future__ import annotations

import logging

from provisioner import planning, tracking

#: the verdicts that get a progress line
_IN_PROGRESS = frozenset(
    {planning.VerdictKind.BOOTING, planning.VerdictKind.READY, planning.VerdictKind.UNKNOWN}
)


def log_instances(log: logging.Logger, plan: planning.Plan, obs: planning.Observation, now: float) -> bool:
    """Log one line per booting or ready instance (elapsed as of ``now``); True when any was logged."""
    logged = False
    for inst in obs.instances:
        verdict = plan.verdicts.get(inst.id)
        if verdict is None or verdict.kind not in _IN_PROGRESS:
            continue
        started = obs.first_seen.get(inst.id, obs.now)
        log.info(
            "instance %s %s: status=%s msg=%s elapsed=%.0fs",
            inst.id,
            verdict.kind,
            inst.actual_status,
            inst.status_msg,
            now - started,
            extra={"instance_id": inst.id, "actual_status": inst.actual_status},
        )
        logged = True
    return logged


def situation(state: tracking.ReconcilerState) -> str:
    """What the pod is doing now, as of its state (not as of the plan made before the tick's actions)."""
    pending = state.tracked.unconfirmed()
    if pending:
        return f"rented instance {pending[0]}; waiting for the list to show it"
    serving = state.serving
    head = f"serving instance {serving.id} while its replacement is prepared" if serving else None
    why = state.waiting_reason
    if head and why:
        return f"{head}; {why}"
    return head or why or state.unserve_reason


def log_if_quiet(log: logging.Logger, state: tracking.ReconcilerState, now: float, quiet_s: float) -> None:
    """Repeat the progress line (elapsed as of ``now``) when none was logged for ``quiet_s``.

    Ticks log progress themselves; this covers long poll intervals and failing ticks, so the
    log is never silent for long while this pod has no healthy instance.
    """
    plan, obs = state.last_plan, state.last_observation
    serving = plan is not None and plan.phase is planning.Phase.SERVING
    if serving or now - state.last_progress_at < quiet_s:
        return
    state.last_progress_at = now
    if plan is None or obs is None:
        log.info("no successful reconcile tick yet: %s", state.unserve_reason)
        return
    if log_instances(log, plan, obs, now):
        return
    since = now - state.last_list_ok_at
    log.info("%s: %s; last successful list %.0fs ago", plan.phase, situation(state), since)
