"""Boot progress lines: one log line per booting or ready instance, with its status and elapsed time.

Pure formatting over a plan and its observation; the caller passes the logger and the time.
"""

from __future__ import annotations

import logging

from provisioner import planning

#: the verdicts that get a progress line
_IN_PROGRESS = frozenset({planning.VerdictKind.BOOTING, planning.VerdictKind.READY})


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
