"""Prometheus metrics of one provisioner process, in a registry of its own (never the global one).

Three kinds of source feed them:

* **events**: ``Metrics.on_event`` receives every ``events.Event`` (rentals, destroys, bans, serves)
  and turns them into counters and the time-to-ready histogram, in one place;
* **calls**: ``VastCallObserver`` is the Vast client's ``CallObserver`` (one ``request_done`` per HTTP
  request, one ``rate_limit_wait`` per 429 backoff);
* **state**: ``RuntimeCollector`` reads ``runtime.Runtime`` at scrape time (the reconciler's view: phase,
  instances; nginx counters, readiness, cost), so nothing there can go stale between scrapes.

Accrued cost: ``CostMeter`` integrates the summed ``dph_total`` ($/h) of every instance carrying our label
over monotonic time. The set of instances and their prices is replaced after each successful list, an
instance is dropped as soon as we destroy it, and the integral is brought up to date at each change and each
scrape (a step function: the rate seen at the last list holds until the next one). It is an estimate of
what Vast bills for compute and storage; bandwidth is not included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from provisioner import events, model, reconciler, runtime
from provisioner.runtime import Runtime

PREFIX: Final = "vastprov"
#: every phase a pod can be in (``planning.Phase`` plus ``starting`` before the first tick)
STATES: Final = ("starting", "renting", "booting", "serving", "waiting")
#: rent -> first healthy serve: image pulls take from seconds to most of an hour
TIME_TO_READY_BUCKETS_S: Final = (15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0)
API_DURATION_BUCKETS_S: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: a ``fetch logs`` answer with these codes only means "not uploaded yet" (docs/vast-api.md §8)
_LOGS_NOT_READY: Final = frozenset({403, 404})
SECONDS_PER_HOUR: Final = 3600.0


def call_label(call: str) -> str:
    """``"search offers"`` -> ``"search_offers"``: the client's call names as label values."""
    return call.strip().replace(" ", "_") or "unknown"


def status_label(status: int | None) -> str:
    """The HTTP status as a label value; ``transport`` when no answer came (timeout, refused)."""
    return "transport" if status is None else str(status)


def is_error(call: str, status: int | None) -> bool:
    """An answer that counts as an error: no answer, or 4xx/5xx, except a log upload not there yet."""
    if status is None:
        return True
    if call == "fetch logs" and status in _LOGS_NOT_READY:
        return False
    return status >= 400


class CostMeter:
    """$/h of this pod's instances, integrated over time into dollars (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rates: dict[int, float] = {}
        self._total = 0.0
        self._since: float | None = None

    @property
    def dollars_per_hour(self) -> float:
        return sum(self._rates.values())

    def _advance(self) -> None:
        now = self._clock()
        if self._since is not None and now > self._since:
            self._total += self.dollars_per_hour * (now - self._since) / SECONDS_PER_HOUR
        self._since = now

    def set_rates(self, rates: Mapping[int, float]) -> None:
        """The instances that exist now (id -> $/h), from a successful list."""
        self._advance()
        self._rates = {iid: max(rate, 0.0) for iid, rate in rates.items()}

    def drop(self, instance_id: int) -> None:
        """An instance was destroyed: it costs nothing from now on."""
        self._advance()
        self._rates.pop(instance_id, None)

    def dollars(self) -> float:
        """Accrued cost so far."""
        self._advance()
        return self._total


class Metrics:
    """Every metric object of one process; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.rentals = Counter(f"{PREFIX}_rentals", "Instances rented by this process.", registry=reg)
        self.replacements = Counter(
            f"{PREFIX}_replacements",
            "Instances of this pod destroyed by the reconciler, by reason.",
            ["reason"],
            registry=reg,
        )
        self.bans = Counter(
            f"{PREFIX}_bans", "Hosts banned from future rentals, by reason.", ["reason"], registry=reg
        )
        self.events = Counter(f"{PREFIX}_events", "Reconciler events, by kind.", ["kind"], registry=reg)
        self.time_to_ready = Histogram(
            f"{PREFIX}_time_to_ready_seconds",
            "Seconds from renting an instance to serving it healthy for the first time.",
            buckets=TIME_TO_READY_BUCKETS_S,
            registry=reg,
        )
        self.api_requests, self.api_errors, self.api_duration = _api_metrics(reg)
        self.rate_limit_wait = Counter(
            f"{PREFIX}_vast_rate_limit_wait_seconds",
            "Seconds spent waiting because the Vast.ai API rate-limited us, by call.",
            ["call"],
            registry=reg,
        )
        self.remote_log_lines = Counter(
            f"{PREFIX}_remote_log_lines",
            "Lines of the remote container's log copied to our stdout (REMOTE_LOGS).",
            registry=reg,
        )
        self.cost = CostMeter(clock)
        self._rented_at: dict[int, float] = {}

    # ------------------------------------------------------------ feeds

    def on_event(self, event: events.Event) -> None:
        """The one place where reconciler events become metrics."""
        self.events.labels(event.kind).inc()
        reason = event.reason or "unknown"
        iid = event.instance_id
        if event.kind == events.EventKind.RENT:
            self.rentals.inc()
            if iid is not None:
                self._rented_at[iid] = event.at
        elif event.kind == events.EventKind.DESTROY:
            self.replacements.labels(reason).inc()
            if iid is not None:
                self._rented_at.pop(iid, None)
                self.cost.drop(iid)
        elif event.kind == events.EventKind.BAN:  # a condemned instance's host is not banned
            self.bans.labels(reason).inc()
        elif event.kind == events.EventKind.SERVE and iid is not None and iid in self._rented_at:
            self.time_to_ready.observe(max(event.at - self._rented_at.pop(iid), 0.0))

    def note_instances(self, instances: Iterable[model.Instance]) -> None:
        """After a successful list: the instances that exist now (for the cost)."""
        self.cost.set_rates({i.id: i.dph_total or 0.0 for i in instances})

    def note_rate_limit_wait(self, call: str, seconds: float) -> None:
        self.rate_limit_wait.labels(call_label(call)).inc(max(seconds, 0.0))

    def bind(self, state: Runtime) -> None:
        """Serve ``state`` (read at scrape time) from this registry."""
        self.registry.register(RuntimeCollector(state, self.cost))


def _api_metrics(reg: CollectorRegistry) -> tuple[Counter, Counter, Histogram]:
    """Requests, errors and durations of the Vast.ai API calls."""
    requests = Counter(
        f"{PREFIX}_vast_api_requests",
        "HTTP requests to the Vast.ai API, by call and status (transport: no answer).",
        ["call", "status"],
        registry=reg,
    )
    errors = Counter(
        f"{PREFIX}_vast_api_errors",
        "Vast.ai API requests that failed (no answer, 4xx, 5xx), by call and status.",
        ["call", "status"],
        registry=reg,
    )
    duration = Histogram(
        f"{PREFIX}_vast_api_request_duration_seconds",
        "Duration of one HTTP request to the Vast.ai API, by call.",
        ["call"],
        buckets=API_DURATION_BUCKETS_S,
        registry=reg,
    )
    return requests, errors, duration


class VastCallObserver:
    """The Vast client's ``CallObserver``: every request and every rate-limit backoff, counted."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def request_done(self, call: str, status: int | None, elapsed_s: float) -> None:
        name, code = call_label(call), status_label(status)
        self.metrics.api_requests.labels(name, code).inc()
        self.metrics.api_duration.labels(name).observe(max(elapsed_s, 0.0))
        if is_error(call, status):
            self.metrics.api_errors.labels(name, code).inc()

    def rate_limit_wait(self, call: str, seconds: float) -> None:
        self.metrics.note_rate_limit_wait(call, seconds)


class RuntimeCollector:
    """Gauges and counters read from the running daemon at each scrape."""

    def __init__(self, state: Runtime, cost: CostMeter) -> None:
        self.state = state
        self.cost = cost

    def collect(self) -> Iterator[Metric]:
        view = self.state.view()
        current = runtime.phase_name(view)
        phase = GaugeMetricFamily(
            f"{PREFIX}_instance_state", "This pod's phase: 1 for the current one.", labels=["state"]
        )
        for name in STATES:
            phase.add_metric([name], 1.0 if name == current else 0.0)
        yield phase
        ready, _ = runtime.readiness(self.state)
        yield GaugeMetricFamily(f"{PREFIX}_ready", "1 when a healthy upstream is served.", value=float(ready))
        yield from self._instances(view)
        yield GaugeMetricFamily(
            f"{PREFIX}_cost_per_hour_dollars",
            "What this pod's instances cost now, $/h (sum of dph_total; the served one when steady).",
            value=self.cost.dollars_per_hour,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_cost_dollars",
            "Accrued cost of this pod's instances since this process started, $ (estimate).",
            value=self.cost.dollars(),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_last_reconcile_timestamp_seconds",
            "Unix time of the last successful reconcile tick (0: none yet).",
            value=view.last_tick_at if view is not None else 0.0,
        )
        yield from self._nginx()

    def _instances(self, view: reconciler.ReconcilerView | None) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            f"{PREFIX}_instance_info",
            "One series per instance carrying this pod's label (latest list).",
            labels=["instance_id", "host_id", "machine_id", "gpu_name", "status", "served"],
        )
        observation = view.last_observation if view is not None else None
        instances = tuple(observation.instances) if observation is not None else ()
        served_id = view.serving.id if view is not None and view.serving is not None else None
        for inst in instances:
            labels = [str(inst.id), str(inst.host_id or ""), str(inst.machine_id or ""), inst.gpu_name or ""]
            labels += [inst.actual_status or "none", "true" if inst.id == served_id else "false"]
            info.add_metric(labels, 1.0)
        yield info
        yield GaugeMetricFamily(
            f"{PREFIX}_instances", "Instances carrying this pod's label (latest list).", value=len(instances)
        )

    def _nginx(self) -> Iterator[Metric]:
        nginx = self.state.nginx
        yield GaugeMetricFamily(
            f"{PREFIX}_nginx_up",
            "1 when the nginx master runs.",
            value=float(bool(nginx and nginx.is_running)),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_nginx_reloads",
            "Successful nginx config reloads (SIGHUP).",
            value=nginx.reloads if nginx else 0,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_nginx_restarts",
            "Times nginx died and was started again.",
            value=nginx.restarts if nginx else 0,
        )
