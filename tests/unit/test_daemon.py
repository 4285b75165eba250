"""The daemon's loops on an injected clock, pause and random source: backoff, rate-limit waits,
template pending, heartbeat, progress and health loops, the in-flight tick on stop, signals."""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

import pytest

from provisioner import daemon, errors, fleet, model, planning, wiring
from provisioner.reconciler import ReconcilerView
from provisioner.settings import load_settings
from tests.unit.views import make_view

PLAN = planning.Plan(phase=planning.Phase.SERVING, actions=(), next_check_s=60.0)
INSTANCE = model.Instance(id=5, label="k8s_pod=vast-pod-0", actual_status="running")


class Edge(random.Random):
    """A random source that always answers the upper (or lower) bound of ``uniform``."""

    def __init__(self, *, high: bool = True) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


class Pauses:
    """The injected pause: records each wait, and stops the daemon after ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: list[tuple[float, bool]] = []
        self.daemon: daemon.Daemon | None = None

    async def __call__(self, seconds: float, wakeable: bool) -> None:
        self.seen.append((seconds, wakeable))
        if len(self.seen) >= self.limit and self.daemon is not None:
            self.daemon.stop.set()

    @property
    def waits(self) -> list[float]:
        return [round(s, 6) for s, _ in self.seen]


class FakeRec:
    """A reconciler whose ticks raise the queued errors first, then return ``PLAN``."""

    def __init__(self, failures: list[Exception] | None = None, *, fleet_on: bool = False) -> None:
        self.failures = list(failures or [])
        self.ticks = self.beats = self.progress = self.probes = 0
        self.pending_marked = self.clean_stops = 0
        self.probe_answer: bool | None = True
        self.fleet_on = fleet_on
        self.current: ReconcilerView = make_view()
        self.quiet: list[float] = []

    @property
    def has_fleet(self) -> bool:
        return self.fleet_on

    async def tick(self) -> planning.Plan:
        self.ticks += 1
        if self.failures:
            raise self.failures.pop(0)
        return PLAN

    async def ensure_template(self, creator_id: int | None) -> str:
        return "hash"

    def mark_template_pending(self) -> None:
        self.pending_marked += 1

    async def beat(self) -> None:
        self.beats += 1

    def log_progress_if_quiet(self, quiet_s: float) -> None:
        self.quiet.append(quiet_s)

    async def probe_serving(self) -> bool | None:
        self.probes += 1
        return self.probe_answer

    def view(self) -> ReconcilerView:
        return self.current

    async def note_clean_stop(self) -> None:
        self.clean_stops += 1


class Account:
    """``whoami`` answering, or raising the queued errors first."""

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.failures = list(failures or [])

    async def whoami(self) -> dict[str, Any]:
        if self.failures:
            raise self.failures.pop(0)
        return {"id": 42}


def make_daemon(
    env: pytest.MonkeyPatch, limit: int, *, high: bool = True, **extra: Any
) -> tuple[daemon.Daemon, Pauses]:
    pauses = Pauses(limit)
    d = daemon.Daemon(load_settings(**extra), clock=lambda: 1000.0, rng=Edge(high=high), pause=pauses)
    pauses.daemon = d
    return d, pauses


def unavailable() -> errors.VastError:
    return errors.VastUnavailable("list instances", "503")


async def test_backoff_doubles_after_each_failure_and_resets_after_a_tick(env: pytest.MonkeyPatch) -> None:
    """Failed ticks wait 2, 4, 8, 16 s (upper jitter bound); a good tick waits next_check_s +15 %."""
    d, pauses = make_daemon(env, 5)
    rec = FakeRec([unavailable() for _ in range(4)])
    await d._reconcile_loop(Account(), rec)
    assert pauses.waits == [2.0, 4.0, 8.0, 16.0, round(60.0 * 1.15, 6)]
    assert all(wakeable for _, wakeable in pauses.seen), "a failed health probe may cut every wait short"
    assert d.runtime.last_error is None, "a good tick clears the last error"
    assert d.runtime.loop_heartbeat_at == 1000.0


async def test_backoff_has_equal_jitter_and_a_cap(env: pytest.MonkeyPatch) -> None:
    """The jittered wait is at least half the backoff, and the backoff stops growing at 60 s."""
    d, pauses = make_daemon(env, 8, high=False)
    rec = FakeRec([unavailable() for _ in range(8)])
    await d._reconcile_loop(Account(), rec)
    assert pauses.waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert d.runtime.last_error == str(unavailable())


@pytest.mark.parametrize(
    ("retry_after_s", "expected"),
    [
        pytest.param(10.0, [12.0, 14.0], id="server-wait-plus-growing-jitter"),
        pytest.param(None, [3.0, 5.0], id="no-retry-after-at-least-1s"),
    ],
)
async def test_rate_limit_waits_what_the_server_asks_plus_backoff(
    env: pytest.MonkeyPatch, retry_after_s: float | None, expected: list[float]
) -> None:
    """A 429 waits Retry-After (at least 1 s) plus up to the backoff, and the wait is counted."""
    d, pauses = make_daemon(env, 3)
    limited = [errors.RateLimited("list instances", "429", retry_after_s=retry_after_s) for _ in range(2)]
    await d._reconcile_loop(Account(), FakeRec(limited))
    assert pauses.waits[:2] == expected
    counted = d.metrics.rate_limit_wait.labels("list_instances")._value.get()
    assert counted == pytest.approx(sum(expected))


async def test_nginx_failure_is_retried_like_an_api_failure(env: pytest.MonkeyPatch) -> None:
    """A refused nginx config backs off and retries (nginx keeps its previous config meanwhile)."""
    d, pauses = make_daemon(env, 2)
    await d._reconcile_loop(Account(), FakeRec([errors.NginxError("reload refused")]))
    assert pauses.waits[0] == 2.0


async def test_a_refused_key_ends_the_loop(env: pytest.MonkeyPatch) -> None:
    """AuthError is not retried: it leaves the loop (and the process exits 3)."""
    d, _ = make_daemon(env, 10)
    with pytest.raises(errors.AuthError):
        await d._reconcile_loop(Account(), FakeRec([errors.AuthError("list instances", "401")]))


async def test_template_pending_with_nothing_to_serve_spends_no_list_call(env: pytest.MonkeyPatch) -> None:
    """A throttled template check with no instance to serve backs off without ticking."""
    d, pauses = make_daemon(env, 2)
    rec = FakeRec()
    rec.current = make_view(last_observation=planning.Observation(now=1.0, instances=(), template_hash=None))
    limited = [errors.RateLimited("whoami", "429") for _ in range(2)]
    await d._reconcile_loop(Account(limited), rec)
    assert rec.pending_marked == 2 and rec.ticks == 0
    assert pauses.waits == [2.0, 4.0]
    assert not d.runtime.prepared


async def test_template_pending_still_serves_what_exists(env: pytest.MonkeyPatch) -> None:
    """A throttled template check with an instance listed still ticks (serving it meanwhile)."""
    d, _ = make_daemon(env, 2)
    rec = FakeRec()
    observation = planning.Observation(now=1.0, instances=(INSTANCE,), template_hash=None)
    rec.current = make_view(last_observation=observation)
    await d._reconcile_loop(Account([errors.VastUnavailable("whoami", "503")]), rec)
    assert rec.pending_marked == 1 and rec.ticks >= 1
    assert d.runtime.prepared, "the second round checks the template"


async def test_heartbeat_loop_beats_every_interval_until_stopped(env: pytest.MonkeyPatch) -> None:
    """The heartbeat beats after each HEARTBEAT_INTERVAL_S pause, not after the one that stops."""
    d, pauses = make_daemon(env, 3)
    rec = FakeRec(fleet_on=True)
    await d._heartbeat_loop(rec)
    assert pauses.waits == [fleet.HEARTBEAT_INTERVAL_S] * 3
    assert rec.beats == 2
    assert not any(wakeable for _, wakeable in pauses.seen)


async def test_progress_loop_asks_for_a_line_after_25s_of_quiet(env: pytest.MonkeyPatch) -> None:
    """Every 5 s the reconciler is asked to log progress if it was quiet for 25 s."""
    d, pauses = make_daemon(env, 4)
    rec = FakeRec()
    await d._progress_loop(rec)
    assert pauses.waits == [daemon.PROGRESS_CHECK_S] * 4
    assert rec.quiet == [daemon.PROGRESS_QUIET_S] * 3


@pytest.mark.parametrize(("answer", "woken"), [(False, True), (True, False), (None, False)])
async def test_health_loop_wakes_the_reconcile_loop_on_failure(
    env: pytest.MonkeyPatch, answer: bool | None, woken: bool
) -> None:
    """Only a failing probe of the served upstream wakes the reconcile loop."""
    d, pauses = make_daemon(env, 2, HEALTH_INTERVAL_SECONDS="7")
    rec = FakeRec()
    rec.probe_answer = answer
    await d._health_loop(rec)
    assert pauses.waits == [7.0, 7.0]
    assert rec.probes == 1
    assert d.wake.is_set() is woken


async def test_the_real_pause_returns_on_wake_and_clears_it(env: pytest.MonkeyPatch) -> None:
    """The default pause ends early on a wake-up (when wakeable) and on stop."""
    d = daemon.Daemon(load_settings())
    d.wake.set()
    await asyncio.wait_for(d._pause(3600.0, True), 5)
    assert not d.wake.is_set()
    d.stop.set()
    await asyncio.wait_for(d._pause(3600.0, False), 5)


@pytest.mark.parametrize("status", [401, 403])
async def test_a_key_refused_after_it_worked_is_retried_not_an_exit(
    env: pytest.MonkeyPatch, status: int
) -> None:
    """AuthRefusedAgain (a key that worked, refused later) is a failed tick: backoff, then ticking on."""
    d, pauses = make_daemon(env, 3)
    rec = FakeRec([errors.AuthRefusedAgain("list instances", "refused", status=status)])
    await d._reconcile_loop(Account(), rec)
    assert pauses.waits[0] == 2.0 and rec.ticks >= 2
    assert d.runtime.last_error is None, "the next good tick clears it"


class Nginx:
    """Stands in for nginx in the task tree: supervises until stop."""

    pid = None

    async def supervise(self, stop: asyncio.Event) -> None:
        await stop.wait()


async def test_a_clean_stop_is_recorded_for_restart_counting(env: pytest.MonkeyPatch) -> None:
    """A SIGTERM shutdown ends the task tree and calls note_clean_stop once (a crash never gets there)."""
    d = daemon.Daemon(load_settings(), rng=Edge(high=True))  # real pauses: they end on stop
    rec = FakeRec()
    runner = asyncio.create_task(d.run_tasks(Account(), rec, Nginx()))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert rec.ticks == 1 and not d.stop.is_set()
    d.on_signal(15)
    await asyncio.wait_for(runner, 5)
    assert rec.clean_stops == 1 and not d.forced


def test_the_shutdown_line_names_what_is_kept(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first signal's line names the instances kept, or says there is none."""
    d, _ = make_daemon(env, 10)
    rec = FakeRec()
    d.runtime.reconciler = rec
    with caplog.at_level("INFO", logger="provisioner.daemon"):
        d.on_signal(15)
    assert "(no instance to keep)" in caplog.text
    seen = planning.Observation(now=1.0, instances=(model.Instance(id=7),), template_hash=None)
    rec.current = make_view(last_observation=seen)
    d.stop.clear()
    with caplog.at_level("INFO", logger="provisioner.daemon"):
        d.on_signal(15)
    assert "(instance 7 is kept)" in caplog.text


async def test_an_in_flight_tick_finishes_on_stop(env: pytest.MonkeyPatch) -> None:
    """On stop, the running tick is awaited (within the grace) before the task tree ends."""
    d = daemon.Daemon(load_settings())
    release = asyncio.Event()

    async def tick() -> None:
        await release.wait()

    ticking = asyncio.create_task(tick())
    stopper = asyncio.create_task(d._until_stopped(ticking))
    d.stop.set()
    await asyncio.sleep(0)
    assert not stopper.done(), "waits for the tick"
    release.set()
    with pytest.raises(daemon._Stop):
        await asyncio.wait_for(stopper, 5)
    assert ticking.done() and not ticking.cancelled()


async def test_a_tick_past_the_grace_is_left_to_be_cancelled(
    env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick that outlasts STOP_TICK_GRACE_S does not hold the shutdown."""
    monkeypatch.setattr(daemon, "STOP_TICK_GRACE_S", 0.01)
    d = daemon.Daemon(load_settings())
    ticking = asyncio.create_task(asyncio.Event().wait())
    d.stop.set()
    with pytest.raises(daemon._Stop):
        await asyncio.wait_for(d._until_stopped(ticking), 5)
    ticking.cancel()


async def test_first_signal_stops_second_stops_nginx_and_exits(
    env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signal one sets the stop event; signal two SIGTERMs nginx at once and exits (code 1)."""
    d = daemon.Daemon(load_settings(NGINX_DRAIN_SECONDS="0"))
    sleeper = (sys.executable, "-c", "import time; time.sleep(60)")
    stand_in = await asyncio.create_subprocess_exec(*sleeper, start_new_session=True)  # as nginx
    exits: list[int] = []
    monkeypatch.setattr(daemon.os, "_exit", exits.append)

    class Nginx:
        pid = stand_in.pid

    d.nginx = Nginx()  # type: ignore[assignment]
    try:
        d.on_signal(15)
        assert d.stop.is_set() and d.runtime.stopping and not d.forced
        d.on_signal(15)
        assert d.forced
        await asyncio.wait_for(asyncio.gather(*daemon._background), 5)
        assert await asyncio.wait_for(stand_in.wait(), 5) == -15, "nginx got SIGTERM, not a drain"
        assert exits == [daemon.FORCED_EXIT_CODE]
    finally:
        if stand_in.returncode is None:
            stand_in.kill()
            await stand_in.wait()


@pytest.mark.parametrize(("failures", "expected"), [(1, 2.0), (2, 4.0), (5, 32.0), (6, 60.0), (40, 60.0)])
def test_backoff_formula(failures: int, expected: float) -> None:
    """2 s doubling per failure in a row, capped at 60 s."""
    assert daemon.backoff_s(failures) == expected


async def test_start_up_steps_run_together_and_both_finish_before_an_error() -> None:
    """nginx starts beside the clients: neither is left half-started, and nginx's error wins."""
    seen: list[str] = []

    async def step(name: str, delay_s: float, error: Exception | None = None) -> str:
        seen.append(f"start {name}")
        await asyncio.sleep(delay_s)
        seen.append(f"end {name}")
        if error is not None:
            raise error
        return name

    assert await wiring.both(step("nginx", 0.01), step("clients", 0.01)) == ("nginx", "clients")
    assert seen[:2] == ["start nginx", "start clients"]  # together, not one after the other

    seen.clear()
    nginx_fails = step("nginx", 0.0, errors.NginxError("first"))
    with pytest.raises(errors.NginxError, match="first"):
        await wiring.both(nginx_fails, step("clients", 0.05, OSError("x")))
    assert seen[-1] == "end clients"  # the slower step still finished before the error

    with pytest.raises(OSError, match="taken"):
        await wiring.both(step("nginx", 0.0), step("clients", 0.01, OSError("taken")))
