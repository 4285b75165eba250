"""The simulator's knobs: one frozen `SimConfig`, replaced as a whole when `/_sim/config` changes it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from provisioner.sim import ratelimits

# The user the simulated API key belongs to (returned by whoami, owner of created templates).
SIM_USER_ID = 424242


@dataclass(frozen=True)
class SimConfig:
    """Everything a test or the `provisioner sim` command can tune."""

    seed: int = 7
    num_offers: int = 240
    # Seconds from rent to `running`: `null` for the first ~20 %, then `loading` (plus a host's pull delay).
    boot_delay_s: float = 3.0
    # None: accept any non-empty key; set: require exactly this key.
    api_key: str | None = None
    # The address reported in `public_ipaddr` (with Vast's trailing newline).
    public_ip: str = "127.0.0.1"
    # Vast-like per-endpoint minimum intervals per API key (docs/vast-api.md §3.1; table in ratelimits.py).
    rate_limits: bool = False
    # Multiplies every rate-limit interval, so tests can use the real ratios with short waits.
    rate_limit_scale: float = 1.0
    # Endpoint -> seconds between calls, [calls, seconds], or 0/null for no limit (before the scale).
    rate_limit_overrides: dict[str, Any] = field(default_factory=dict)
    # The 429 body: text | json | rate_limit_exceeded | text_bare | documented (per endpoint) | alternate.
    rate_limit_body: str = "documented"
    # Send Retry-After (whole seconds to the next slot) with rate-limit 429s; Vast sends none (§2.3).
    rate_limit_retry_after: bool = False
    # A refused create instance pushes its next slot by the doc's `penalty 12` (an inference, §12.5).
    rate_limit_penalties: bool = False
    # Where the GPU workloads bind (port 0: a fresh port each time).
    workload_host: str = "127.0.0.1"
    # 401 as documented, or 404 as the real API sometimes answers a bad key (docs/vast-api.md §2.2).
    auth_failure_status: int = 401
    # How many GETs of a log `result_url` answer 404 before the text is ready.
    logs_not_ready_count: int = 1
    # Whether a plain API reboot gives the workload a new HostPort.
    remap_on_reboot: bool = False

    def __post_init__(self) -> None:
        """Reject a bad 429 body mode or override table given to the constructor (the CLI)."""
        _coerce("rate_limit_body", self.rate_limit_body, "")
        _coerce("rate_limit_overrides", self.rate_limit_overrides, {})

    def updated(self, changes: dict[str, Any]) -> SimConfig:
        """A copy with `changes` applied; unknown names or wrong types raise ValueError."""
        known = {f.name: f for f in dataclasses.fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown config field {name!r}")
            current = getattr(self, name)
            clean[name] = _coerce(name, value, current)
        return dataclasses.replace(self, **clean)

    def as_dict(self) -> dict[str, Any]:
        """The config as plain JSON values."""
        return dataclasses.asdict(self)


def _coerce(name: str, value: Any, current: Any) -> Any:
    """Check `value` has the type of the field's current value (None allowed for api_key)."""
    if name == "rate_limit_overrides":
        ratelimits.parse_overrides(value)
        return dict(value)
    if name == "rate_limit_body":
        if value not in ratelimits.BODY_MODES:
            raise ValueError(f"rate_limit_body must be one of {sorted(ratelimits.BODY_MODES)}")
        return value
    if name == "rate_limit_scale" and (
        isinstance(value, bool) or not isinstance(value, int | float) or value < 0
    ):
        raise ValueError("rate_limit_scale must be a number >= 0")
    if name == "api_key":
        if value is None or (isinstance(value, str) and value):
            return value
        raise ValueError("api_key must be a non-empty string or null")
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, str) and isinstance(value, str):
        return value
    raise ValueError(f"{name} must be of type {type(current).__name__}")
