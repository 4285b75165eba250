"""Vast-like rate limits: per identity and endpoint, a minimum interval between accepted calls.

The figures are Vast's published `x-rate-limit` values (docs/vast-api.md §3.1), seconds between
calls: search offers 10 per minute (per IP, a window of 10 calls in 60 s), create instance 4.5
(penalty 12), v1 list 1.0, show 2.0, destroy 3.0, label/manage 1.0, reboot/recycle 1.0, search
templates 3.0. The doc gives no figure for whoami, the template writes, request_logs, the filters
list or the GPU names; they get "the rest about 1 s" (issue 13). The logs' `result_url` is S3 in
real life and is never limited.

A refused call is not counted (the interval runs from the last accepted call) unless `penalties` is on:
then a refused call on an endpoint with a penalty (create instance) pushes its next slot `penalty` seconds
out (the doc's units are undocumented, docs/vast-api.md §12, item 5: an inference). The 429 body is
one of Vast's forms (docs/vast-api.md §3.2), chosen by the `rate_limit_body` knob (`body_form`).
"""

from __future__ import annotations

import json
import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from starlette.responses import Response

Scope = Literal["key", "ip"]


@dataclass(frozen=True)
class Rule:
    """At most `calls` accepted calls per `period_s` seconds, per API key (or per client IP)."""

    calls: int
    period_s: float
    penalty_s: float = 0.0
    scope: Scope = "key"

    @property
    def threshold_s(self) -> float:
        """The minimum interval Vast prints as `threshold=`."""
        return self.period_s / self.calls


#: endpoint name (routes.py) -> rule, at production speed (docs/vast-api.md §3.1 has the table)
RATE_RULES: dict[str, Rule] = {
    "search": Rule(10, 60.0, scope="ip"),
    "rent": Rule(1, 4.5, penalty_s=12.0),
    "list": Rule(1, 1.0),
    "show": Rule(1, 2.0),
    "destroy": Rule(1, 3.0),
    "manage": Rule(1, 1.0),
    "reboot": Rule(1, 1.0),
    "recycle": Rule(1, 1.0),
    "template_get": Rule(1, 3.0),
    # not in §2.3: "the rest about 1 s"
    "whoami": Rule(1, 1.0),
    "template_post": Rule(1, 1.0),
    "template_put": Rule(1, 1.0),
    "template_delete": Rule(1, 1.0),
    "logs_request": Rule(1, 1.0),
    "instance_filters": Rule(1, 1.0),
    "v0_list": Rule(1, 1.0),
    "gpu_names": Rule(1, 1.0, scope="ip"),
}
#: the 429 body forms (docs/vast-api.md §3.2), in the order `alternate` cycles through them
BODY_FORMS = ("text", "json", "rate_limit_exceeded", "text_bare")
#: `documented` answers each endpoint the way the docs show it; the rest are plain text
DOCUMENTED_FORMS = {"rent": "json", "destroy": "rate_limit_exceeded"}
BODY_MODES = frozenset({*BODY_FORMS, "documented", "alternate"})


def parse_overrides(raw: Any) -> dict[str, Rule]:
    """`rate_limit_overrides`: endpoint -> seconds, [calls, seconds], or 0/null (no limit)."""
    if not isinstance(raw, dict):
        raise ValueError("rate_limit_overrides must be an object of endpoint -> seconds")
    result: dict[str, Rule] = {}
    for endpoint, value in raw.items():
        if endpoint not in RATE_RULES and endpoint != "logs_result":
            raise ValueError(
                f"rate_limit_overrides: unknown endpoint {endpoint!r}; known: {sorted(RATE_RULES)}"
            )
        base = RATE_RULES.get(endpoint, Rule(1, 1.0))
        if value is None or (_number(value) and value == 0):
            result[endpoint] = Rule(1, 0.0, 0.0, base.scope)
        elif _number(value) and value > 0:
            result[endpoint] = Rule(1, float(value), base.penalty_s, base.scope)
        elif (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], int)
            and not isinstance(value[0], bool)
            and value[0] > 0
            and _number(value[1])
            and value[1] >= 0
        ):
            result[endpoint] = Rule(value[0], float(value[1]), base.penalty_s, base.scope)
        else:
            raise ValueError(
                f"rate_limit_overrides[{endpoint!r}] must be seconds >= 0, null, or [calls, seconds]"
            )
    return result


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Refusal:
    """A refused call: the rule's threshold (as configured and scaled) and the wait until the next slot."""

    endpoint: str
    threshold_s: float
    wait_s: float


class RateLimiter:
    """Accepted-call history per (identity, endpoint), and counters of accepted and refused calls."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], deque[float]] = {}
        self._blocked_until: dict[tuple[str, str], float] = {}
        self.accepted: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def reset(self) -> None:
        """Forget every slot and counter."""
        self._seen.clear()
        self._blocked_until.clear()
        self.accepted.clear()
        self.refused.clear()

    def check(
        self, rule: Rule, identity: str, endpoint: str, now: float, *, scale: float, penalties: bool
    ) -> Refusal | None:
        """Record an accepted call (None) or say why it is refused (refusals are not slots)."""
        calls, period = rule.calls, rule.period_s * scale
        if period <= 0:
            self.accepted[endpoint] += 1
            return None
        slot = (identity, endpoint)
        seen = self._seen.setdefault(slot, deque())
        while seen and now - seen[0] >= period:
            seen.popleft()
        blocked = self._blocked_until.get(slot, 0.0)
        if len(seen) >= calls or now < blocked:
            wait = max(seen[0] + period - now if len(seen) >= calls else 0.0, blocked - now)
            if penalties and rule.penalty_s > 0:
                self._blocked_until[slot] = max(blocked, now + rule.penalty_s * scale)
                wait = max(wait, rule.penalty_s * scale)
            self.refused[endpoint] += 1
            return Refusal(endpoint, period / calls, wait)
        seen.append(now)
        self.accepted[endpoint] += 1
        return None


def rule_for(endpoint: str, overrides: Mapping[str, Rule]) -> Rule | None:
    """The rule in force for an endpoint (an override first), or None when it is never limited."""
    return overrides.get(endpoint) or RATE_RULES.get(endpoint)


def threshold_figure(seconds: float) -> str:
    """The figure as Vast prints it: `4.5`, `2.0`, `0.045`."""
    return repr(round(seconds, 4))


def body_form(mode: str, endpoint: str, refusals_so_far: int) -> str:
    """Which 429 body a refusal gets: the mode itself, the documented one, or the next in the cycle."""
    if mode == "documented":
        return DOCUMENTED_FORMS.get(endpoint, "text")
    if mode == "alternate":
        return BODY_FORMS[refusals_so_far % len(BODY_FORMS)]
    return mode


def too_frequent(form: str, refusal: Refusal, *, retry_after: bool) -> Response:
    """Vast's 429 in one of its forms; `Retry-After` (whole seconds, rounded up) only when asked for."""
    headers = {"Retry-After": str(max(1, math.ceil(refusal.wait_s)))} if retry_after else None
    figure = threshold_figure(refusal.threshold_s)
    if form == "text":
        text = f"API requests too frequent: endpoint threshold={figure}"
        return Response(text.encode(), 429, headers, media_type="text/plain")
    if form == "text_bare":
        return Response(b"API requests too frequent", 429, headers, media_type="text/plain")
    msg = f"API requests too frequent endpoint threshold={figure}"
    payload: dict[str, Any] = (
        {"detail": msg} if form == "json" else {"success": False, "error": "rate_limit_exceeded", "msg": msg}
    )
    return Response(json.dumps(payload).encode(), 429, headers, media_type="application/json")


class RateLimits:
    """The limiter with the rules in force: `enforce` answers a refused call, or None to go on."""

    def __init__(self) -> None:
        self.limiter = RateLimiter()
        self.overrides: dict[str, Rule] = {}

    def configure(self, raw_overrides: Mapping[str, Any]) -> None:
        """Take a new `rate_limit_overrides` table (already validated by the config)."""
        self.overrides = parse_overrides(dict(raw_overrides))

    def rules(self, scale: float) -> dict[str, dict[str, Any]]:
        """Every limited endpoint with its rule in force (scaled) and its counters."""
        names = sorted(set(RATE_RULES) | set(self.overrides))
        result: dict[str, dict[str, Any]] = {}
        for name in names:
            rule = rule_for(name, self.overrides)
            assert rule is not None
            result[name] = {
                "calls": rule.calls,
                "period_s": rule.period_s * scale,
                "interval_s": rule.threshold_s * scale,
                "penalty_s": rule.penalty_s * scale,
                "scope": rule.scope,
                "accepted": self.limiter.accepted[name],
                "refused": self.limiter.refused[name],
            }
        return result

    def enforce(
        self, config: LimitConfig, endpoint: str, key: str | None, ip: str, now: float
    ) -> Response | None:
        """Count the call against its endpoint's budget; a 429 in the configured form when it is refused."""
        rule = rule_for(endpoint, self.overrides)
        if not config.rate_limits or rule is None:
            return None
        identity = ip if rule.scope == "ip" or key is None else f"key:{key}"
        so_far = sum(self.limiter.refused.values())
        refusal = self.limiter.check(
            rule,
            identity,
            endpoint,
            now,
            scale=config.rate_limit_scale,
            penalties=config.rate_limit_penalties,
        )
        if refusal is None:
            return None
        form = body_form(config.rate_limit_body, endpoint, so_far)
        return too_frequent(form, refusal, retry_after=config.rate_limit_retry_after)


class LimitConfig(Protocol):
    """The config fields the limits read (SimConfig has them)."""

    @property
    def rate_limits(self) -> bool: ...
    @property
    def rate_limit_scale(self) -> float: ...
    @property
    def rate_limit_body(self) -> str: ...
    @property
    def rate_limit_retry_after(self) -> bool: ...
    @property
    def rate_limit_penalties(self) -> bool: ...
