"""Logs: JSON line shape, the pod and instance id on every line, text format, secrets, boot progress."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from provisioner import logs, model, planning, rendering, renting, upstream_health
from provisioner.reconciler import Adapters, Reconciler, ReconcilerConfig
from provisioner.vast.client import VastClient


def capture(fmt: str = "json", *, debug: bool = False, secrets: tuple[str, ...] = ()) -> io.StringIO:
    """Set logging up as the CLI does, writing to a buffer."""
    logs.setup_logging(pod="vast-pod-0", fmt=fmt, debug=debug, secrets=secrets)
    buffer = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    return buffer


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.mark.usefixtures("root_logging")
def test_json_line_shape() -> None:
    """Each record is one JSON object with ts, level, logger, msg, pod and instance_id, plus extra fields."""
    buffer = capture()
    logging.getLogger("provisioner.test").info("rented %s", 42, extra={"event": "rent", "instance_id": 42})
    (entry,) = lines(buffer)
    assert entry["msg"] == "rented 42"
    assert entry["level"] == "info"
    assert entry["logger"] == "provisioner.test"
    assert entry["pod"] == "vast-pod-0"
    assert entry["instance_id"] == 42
    assert entry["event"] == "rent"
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]


@pytest.mark.usefixtures("root_logging")
def test_every_line_carries_the_current_instance_id() -> None:
    """set_instance_id stamps lines without an id of their own; an id passed by the call wins; None clears."""
    buffer = capture()
    log = logging.getLogger("provisioner.test")
    log.info("before")
    logs.set_instance_id(7)
    log.info("during")
    log.info("other", extra={"instance_id": 8})
    logs.set_instance_id(None)
    log.info("after")
    assert [(e["msg"], e["instance_id"]) for e in lines(buffer)] == [
        ("before", None),
        ("during", 7),
        ("other", 8),
        ("after", None),
    ]


@pytest.mark.usefixtures("root_logging")
def test_debug_only_with_debug() -> None:
    """DEBUG lines appear only with DEBUG=true."""
    quiet = capture(debug=False)
    logging.getLogger("provisioner.test").debug("detail")
    assert quiet.getvalue() == ""
    loud = capture(debug=True)
    logging.getLogger("provisioner.test").debug("detail")
    assert [e["level"] for e in lines(loud)] == ["debug"]


@pytest.mark.usefixtures("root_logging")
def test_errors_carry_the_exception() -> None:
    """log.exception adds an ``error`` field naming the exception type, still on one line."""
    buffer = capture()
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("provisioner.test").exception("failed")
    (entry,) = lines(buffer)
    assert entry["error"] == "ValueError: bad\nthing"
    assert buffer.getvalue().count("\n") == 1


@pytest.mark.usefixtures("root_logging")
def test_text_format_with_pod_instance_and_remote_prefix() -> None:
    """LOG_FORMAT=text: ``level pod[instance] message``; remote container lines get ``[remote]``."""
    buffer = capture("text")
    logs.set_instance_id(5)
    logging.getLogger("provisioner.test").warning("upstream failing")
    logging.getLogger("provisioner.remote").info("%s", "GET /x 200", extra={"source": logs.REMOTE_SOURCE})
    first, second = buffer.getvalue().splitlines()
    assert first.split(" ", 1)[1] == "warning vast-pod-0[5] upstream failing"
    assert second.split(" ", 1)[1] == "info    vast-pod-0[5] [remote] GET /x 200"


@pytest.mark.usefixtures("root_logging")
def test_secrets_are_masked_in_messages_and_fields() -> None:
    """A registered secret that reaches a log call is replaced by *** in the message and in extra fields."""
    buffer = capture(secrets=("s3cret-key-123",))
    logging.getLogger("provisioner.test").info(
        "key=%s", "s3cret-key-123", extra={"url": "x?k=s3cret-key-123"}
    )
    text = buffer.getvalue()
    assert "s3cret" not in text
    assert lines(buffer)[0]["msg"] == "key=***"


# ---------------------------------------------------------------- boot progress


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class NoProxy:
    async def apply(self, text: str) -> bool:
        raise AssertionError("not used")


DESIRED = model.DesiredSpec(
    label="k8s_pod=vast-pod-0",
    image="vastai/test:1",
    template=model.TemplateSpec(
        name="t", image="vastai/test", tag="1", env="-p 8000:8000", onstart=None, disk_gb=20
    ),
    ports=(model.PortMap(3000, 8000),),
    env={},
    onstart=None,
    disk_gb=20,
)


async def progress_reconciler(clock: FakeClock) -> tuple[Reconciler, httpx.AsyncClient]:
    http = httpx.AsyncClient()
    vast = VastClient(http, SecretStr("k3y-0123456789"), base_url="http://vast.test")
    spec = renting.RentSpec(
        search_body=lambda _standing: {},
        choose_offers=lambda _offers, _standing: [],
        rent_request=lambda _hash: None,  # type: ignore[arg-type,return-value]
    )
    rec = Reconciler(
        Adapters(vast, NoProxy(), upstream_health.Checker(http, DESIRED.ports)),
        renting.Renter(vast, spec),
        ReconcilerConfig(
            desired=DESIRED,
            proxy_config=rendering.ProxyConfig(
                listeners=DESIRED.ports, state_dir=Path("/tmp"), max_body_size="1M", proxy_timeout_s=60
            ),
            policy=planning.Policy(boot_interval_s=120.0),
        ),
        clock=clock,
    )
    return rec, http


def booting_tick(rec: Reconciler, now: float) -> None:
    """What a tick leaves behind when it saw one booting instance at ``now``."""
    inst = model.Instance(id=9, label=DESIRED.label, actual_status="loading", status_msg="Pulling image")
    obs = planning.Observation(now=now, instances=(inst,), template_hash=None, first_seen={9: 1000.0})
    plan = planning.plan(DESIRED, obs, rec.policy)
    rec.state.last_observation, rec.state.last_plan = obs, plan
    rec.state.last_progress_at = now


async def test_progress_repeats_while_booting_with_a_long_poll(caplog: pytest.LogCaptureFixture) -> None:
    """With a 120 s poll, a progress line (status, status_msg, elapsed as of now) comes every quiet_s."""
    clock = FakeClock(1010.0)
    rec, http = await progress_reconciler(clock)
    async with http:
        booting_tick(rec, 1010.0)
        caplog.set_level(logging.INFO, "provisioner.reconciler")
        clock.now = 1030.0
        rec.log_progress_if_quiet(25.0)
        assert caplog.records == [], "a tick logged progress 20 s ago"
        clock.now = 1036.0
        rec.log_progress_if_quiet(25.0)
        (record,) = caplog.records
        assert record.getMessage() == "instance 9 booting: status=loading msg=Pulling image elapsed=36s"
        assert record.__dict__["instance_id"] == 9
        caplog.clear()
        clock.now = 1050.0
        rec.log_progress_if_quiet(25.0)
        assert caplog.records == []
        clock.now = 1062.0
        rec.log_progress_if_quiet(25.0)
        assert [r.getMessage() for r in caplog.records] == [
            "instance 9 booting: status=loading msg=Pulling image elapsed=62s"
        ]


async def test_progress_before_any_tick_and_while_renting(caplog: pytest.LogCaptureFixture) -> None:
    """Without an instance yet, the progress line says what the pod waits for."""
    clock = FakeClock(1000.0)
    rec, http = await progress_reconciler(clock)
    async with http:
        caplog.set_level(logging.INFO, "provisioner.reconciler")
        rec.log_progress_if_quiet(25.0)
        assert [r.getMessage() for r in caplog.records] == ["no successful reconcile tick yet: starting"]
        caplog.clear()
        obs = planning.Observation(now=1000.0, instances=(), template_hash=None, rent_hold_until=2000.0)
        rec.state.last_observation = obs
        rec.state.last_plan = planning.plan(DESIRED, obs, rec.policy)
        rec.state.unserve_reason = "confirming-rental"
        rec.state.last_list_ok_at = 1000.0
        clock.now = 1030.0
        rec.log_progress_if_quiet(25.0)
        assert [r.getMessage() for r in caplog.records] == [
            "waiting: confirming-rental; last successful list 30s ago"
        ]


async def test_progress_after_a_rent_and_during_a_replacement(caplog: pytest.LogCaptureFixture) -> None:
    """After a rental the line names the rented instance (not "renting: renting"); while a drifted
    instance still serves during its replacement it says so (not "renting: starting")."""
    clock = FakeClock(1000.0)
    rec, http = await progress_reconciler(clock)
    async with http:
        caplog.set_level(logging.INFO, "provisioner.reconciler")
        obs = planning.Observation(now=1000.0, instances=(), template_hash=None)
        rec.state.last_observation, rec.state.last_plan = obs, planning.plan(DESIRED, obs, rec.policy)
        rec.state.unserve_reason, rec.state.last_list_ok_at = "renting", 1000.0
        rec.state.tracked[55].unconfirmed = True
        clock.now = 1030.0
        rec.log_progress_if_quiet(25.0)
        assert [r.getMessage() for r in caplog.records] == [
            "renting: rented instance 55; waiting for the list to show it; last successful list 30s ago"
        ]
        caplog.clear()
        rec.state.tracked[55].unconfirmed = False
        drifted = model.Instance(id=7, label=DESIRED.label, image_uuid="other/image:1")
        rec.state.serving, rec.state.unserve_reason = drifted, "starting"
        rec.state.waiting_reason = "no usable offer (0 returned by the search)"
        clock.now = 1060.0
        rec.log_progress_if_quiet(25.0)
        assert [r.getMessage() for r in caplog.records] == [
            "renting: serving instance 7 while its replacement is prepared; no usable offer (0 returned by"
            " the search); last successful list 60s ago"
        ]


async def test_no_progress_lines_while_serving(caplog: pytest.LogCaptureFixture) -> None:
    """Once a healthy instance is served, the progress ticker stays quiet."""
    clock = FakeClock(1000.0)
    rec, http = await progress_reconciler(clock)
    async with http:
        inst = model.Instance(
            id=9,
            label=DESIRED.label,
            actual_status="running",
            public_ipaddr="203.0.113.7",
            ports={8000: 4000},
        )
        obs = planning.Observation(now=1000.0, instances=(inst,), template_hash=None, healthy={9: True})
        rec.state.last_observation, rec.state.last_plan = obs, planning.plan(DESIRED, obs, rec.policy)
        clock.now = 5000.0
        caplog.set_level(logging.INFO, "provisioner.reconciler")
        rec.log_progress_if_quiet(25.0)
        assert caplog.records == []
