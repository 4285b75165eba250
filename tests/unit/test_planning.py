"""Tests of the pure planner: table-driven named cases, and its invariants as hypothesis properties
over generated observations."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner import model, planning, tracking
from provisioner.planning import Ban, Destroy, Observation, Phase, Policy, Rent, Serve, Unserve

IMAGE = "ghcr.io/acme/whisper:1.2"
HASH = "a" * 32
LABEL = "k8s_pod=vast-pod-0"
NOW = 10_000.0
POLICY = Policy(boot_timeout_s=1200, unhealthy_timeout_s=300, steady_interval_s=60, boot_interval_s=5)

DESIRED = model.DesiredSpec(
    label=LABEL,
    image=IMAGE,
    template=model.TemplateSpec(
        name="t", image="ghcr.io/acme/whisper", tag="1.2", env="-p 8000:8000", onstart=None, disk_gb=20
    ),
    ports=(model.PortMap(3000, 8000),),
    env={},
    onstart=None,
    disk_gb=20,
)


def inst(iid: int, status: str | None = "running", **kw: object) -> model.Instance:
    """An instance of ours; running ones have their port mapped unless told otherwise."""
    base = model.Instance(
        id=iid,
        label=LABEL,
        actual_status=status,
        image_uuid=IMAGE,
        template_hash_id=HASH,
        host_id=100 + iid,
        machine_id=200 + iid,
        public_ipaddr="203.0.113.7" if status == "running" else None,
        ports={8000: 40000 + iid} if status == "running" else {},
        start_date=NOW - 60,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def obs(*instances: model.Instance, **kw: object) -> Observation:
    """An observation at NOW where every running instance passed its health check."""
    healthy = {i.id: True for i in instances if i.actual_status == "running"}
    fields: dict[str, object] = {
        "now": NOW,
        "instances": instances,
        "template_hash": HASH,
        "healthy": healthy,
    }
    fields.update(kw)
    return Observation(**fields)  # type: ignore[arg-type]


def kinds(plan: planning.Plan) -> list[str]:
    """A compact, readable form of a plan's actions."""
    out = []
    for a in plan.actions:
        if isinstance(a, Serve):
            out.append(f"serve:{a.instance.id}")
        elif isinstance(a, Unserve):
            out.append(f"unserve:{a.reason}")
        elif isinstance(a, Destroy):
            out.append(f"destroy:{a.instance.id}:{a.reason}")
        elif isinstance(a, Ban):
            out.append(f"ban:{a.instance.id}:{a.reason}")
        elif isinstance(a, Rent):
            out.append(f"rent:{a.reason}")
    return out


CASES = [
    pytest.param(obs(), ["unserve:renting", "rent:none"], Phase.RENTING, id="none-rents"),
    pytest.param(obs(inst(1)), ["serve:1"], Phase.SERVING, id="healthy-match-serves"),
    pytest.param(
        obs(inst(1), healthy={}), ["unserve:health-check"], Phase.BOOTING, id="running-unchecked-waits"
    ),
    pytest.param(obs(inst(1, "loading")), ["unserve:booting"], Phase.BOOTING, id="loading-waits"),
    pytest.param(obs(inst(1, None)), ["unserve:booting"], Phase.BOOTING, id="null-status-waits"),
    pytest.param(
        obs(inst(1, "running", ports={})), ["unserve:booting"], Phase.BOOTING, id="running-without-port-waits"
    ),
    pytest.param(
        obs(inst(1, "running", public_ipaddr=None)),
        ["unserve:booting"],
        Phase.BOOTING,
        id="running-without-ip-waits",
    ),
    pytest.param(
        obs(inst(1, image_uuid="ghcr.io/acme/whisper:1.1")),
        ["serve:1", "rent:image-drift"],
        Phase.RENTING,
        id="image-drift-serving-bridges-and-rents",
    ),
    pytest.param(
        obs(inst(1, template_hash_id="b" * 32)),
        ["serve:1", "rent:template-drift"],
        Phase.RENTING,
        id="template-drift-serving-bridges-and-rents",
    ),
    pytest.param(
        obs(inst(1, "loading", template_hash_id="b" * 32)),
        ["unserve:renting", "destroy:1:template-drift", "rent:template-drift"],
        Phase.RENTING,
        id="template-drift-booting-destroyed",
    ),
    pytest.param(
        obs(inst(1, template_hash_id="b" * 32), inst(2, "loading")),
        ["serve:1"],
        Phase.BOOTING,
        id="drift-keeps-serving-while-replacement-boots",
    ),
    pytest.param(
        obs(inst(1, template_hash_id="b" * 32), inst(2)),
        ["serve:2", "destroy:1:template-drift"],
        Phase.SERVING,
        id="drift-switches-then-destroys-old",
    ),
    pytest.param(
        obs(inst(1, image_uuid="docker.io/library/nginx")),
        ["serve:1", "rent:image-drift"],
        Phase.RENTING,
        id="other-image-is-drift",
    ),
    pytest.param(
        obs(inst(1, "exited")),
        ["unserve:renting", "destroy:1:dead", "rent:status-exited"],
        Phase.RENTING,
        id="exited-replaced",
    ),
    pytest.param(
        obs(inst(1, "offline")),
        ["unserve:renting", "destroy:1:dead", "rent:status-offline"],
        Phase.RENTING,
        id="offline-replaced",
    ),
    pytest.param(
        obs(inst(1, "unknown")),
        ["unserve:renting", "destroy:1:dead", "rent:status-unknown"],
        Phase.RENTING,
        id="unknown-replaced",
    ),
    pytest.param(
        obs(inst(1, "created", status_msg="Error response from daemon: OCI runtime create failed: x")),
        ["unserve:renting", "destroy:1:dead", "rent:oci-failure"],
        Phase.RENTING,
        id="oci-failure-replaced",
    ),
    pytest.param(
        obs(inst(1, "created", status_msg="pulling image")),
        ["unserve:booting"],
        Phase.BOOTING,
        id="created-without-failure-waits",
    ),
    pytest.param(
        obs(inst(1, "stopped")),
        ["unserve:renting", "destroy:1:dead", "rent:status-stopped"],
        Phase.RENTING,
        id="stopped-replaced",
    ),
    pytest.param(
        obs(inst(1), inst(2)),
        ["serve:1", "destroy:2:duplicate"],
        Phase.SERVING,
        id="two-healthy-keep-oldest",
    ),
    pytest.param(
        obs(inst(1), inst(2), serving_id=2),
        ["serve:2", "destroy:1:duplicate"],
        Phase.SERVING,
        id="two-healthy-keep-the-served-one",
    ),
    pytest.param(
        obs(inst(1, "loading"), inst(2)),
        ["serve:2", "destroy:1:duplicate"],
        Phase.SERVING,
        id="healthy-beats-booting",
    ),
    pytest.param(
        obs(inst(1, "loading"), inst(2, "loading"), inst(3, "exited")),
        ["unserve:booting", "destroy:2:duplicate", "destroy:3:dead"],
        Phase.BOOTING,
        id="several-mixed-keep-one",
    ),
    pytest.param(
        obs(inst(1, "loading"), first_seen={1: NOW - 1300}),
        ["unserve:renting", "ban:1:boot-timeout", "destroy:1:boot-timeout", "rent:boot-timeout"],
        Phase.RENTING,
        id="boot-timeout-bans-destroys-rents",
    ),
    pytest.param(
        obs(inst(1, "loading", start_date=NOW - 5000)),
        ["unserve:renting", "ban:1:boot-timeout", "destroy:1:boot-timeout", "rent:boot-timeout"],
        Phase.RENTING,
        id="boot-timeout-from-start-date",
    ),
    pytest.param(
        obs(inst(1, "loading", start_date=NOW - 5000), first_seen={1: NOW - 10}),
        ["unserve:booting"],
        Phase.BOOTING,
        id="first-seen-wins-over-start-date",
    ),
    pytest.param(
        obs(inst(1), healthy={1: False}, unhealthy_since={1: NOW - 400}, answered=frozenset({1})),
        ["unserve:renting", "ban:1:unhealthy", "destroy:1:unhealthy", "rent:health failing for 400s"],
        Phase.RENTING,
        id="long-unhealthy-replaced",
    ),
    pytest.param(
        obs(inst(1), healthy={1: False}, unhealthy_since={1: NOW - 400}, first_seen={1: NOW - 450}),
        ["unserve:health-check"],
        Phase.BOOTING,
        id="never-answered-app-still-loading-waits-for-the-boot-timeout",
    ),
    pytest.param(
        obs(inst(1), healthy={1: False}, unhealthy_since={1: NOW - 1250}, first_seen={1: NOW - 1300}),
        ["unserve:renting", "ban:1:boot-timeout", "destroy:1:boot-timeout", "rent:boot-timeout"],
        Phase.RENTING,
        id="never-answered-past-the-boot-timeout",
    ),
    pytest.param(
        obs(
            inst(1, template_hash_id="b" * 32),
            inst(2, "loading"),
            healthy={1: False},
            unhealthy_since={1: NOW - 10},
            answered=frozenset({1}),
        ),
        ["unserve:booting"],
        Phase.BOOTING,
        id="bridge-failing-briefly-waits-unserved",
    ),
    pytest.param(
        obs(
            inst(1, template_hash_id="b" * 32),
            inst(2, "loading"),
            healthy={1: False},
            unhealthy_since={1: NOW - 400},
            answered=frozenset({1}),
        ),
        ["unserve:booting", "destroy:1:template-drift"],
        Phase.BOOTING,
        id="bridge-failing-long-destroyed",
    ),
    pytest.param(
        obs(
            inst(1, template_hash_id="b" * 32),
            inst(3, image_uuid="ghcr.io/acme/whisper:1.1"),
            inst(2, "loading"),
            healthy={1: False, 3: True},
            unhealthy_since={1: NOW - 10},
            answered=frozenset({1, 3}),
        ),
        ["serve:3", "destroy:1:template-drift"],
        Phase.BOOTING,
        id="a-briefly-failing-one-goes-while-another-bridges",
    ),
    pytest.param(
        obs(
            inst(1, template_hash_id="b" * 32),
            inst(2),
            healthy={1: False, 2: True},
            unhealthy_since={1: NOW - 10},
            answered=frozenset({1, 2}),
        ),
        ["serve:2", "destroy:1:template-drift"],
        Phase.SERVING,
        id="bridge-failing-briefly-goes-once-the-replacement-serves",
    ),
    pytest.param(
        obs(inst(1), healthy={1: False}, unhealthy_since={1: NOW - 30}),
        ["unserve:health-check"],
        Phase.BOOTING,
        id="briefly-unhealthy-unserved-not-replaced",
    ),
    pytest.param(
        obs(rent_hold_until=NOW + 30),
        ["unserve:confirming-rental"],
        Phase.WAITING,
        id="ambiguous-rent-holds-off",
    ),
    pytest.param(
        obs(rent_hold_until=NOW - 1),
        ["unserve:renting", "rent:none"],
        Phase.RENTING,
        id="hold-expired-rents",
    ),
    pytest.param(
        obs(inst(1), condemned={1: "restart-threshold"}),
        ["serve:1", "rent:restart-threshold"],
        Phase.RENTING,
        id="condemned-healthy-bridges-and-rents",
    ),
    pytest.param(
        obs(inst(1), inst(2, "loading"), condemned={1: "restart-threshold"}),
        ["serve:1"],
        Phase.BOOTING,
        id="condemned-keeps-serving-while-replacement-boots",
    ),
    pytest.param(
        obs(inst(1), inst(2), condemned={1: "restart-threshold"}),
        ["serve:2", "destroy:1:restart-threshold"],
        Phase.SERVING,
        id="condemned-destroyed-once-replacement-healthy",
    ),
    pytest.param(
        obs(inst(1), healthy={}, condemned={1: "restart-threshold"}),
        ["unserve:renting", "destroy:1:restart-threshold", "rent:restart-threshold"],
        Phase.RENTING,
        id="condemned-not-answering-replaced-at-once",
    ),
    pytest.param(
        obs(inst(1, "hibernating_v2", public_ipaddr="203.0.113.7", ports={8000: 40001}), healthy={1: True}),
        ["serve:1"],
        Phase.SERVING,
        id="unknown-status-answering-serves",
    ),
    pytest.param(
        obs(
            inst(1, "hibernating_v2", public_ipaddr="203.0.113.7", ports={8000: 40001}),
            first_seen={1: NOW - 5000},
            healthy={1: True},
        ),
        ["serve:1"],
        Phase.SERVING,
        id="unknown-status-answering-past-the-boot-deadline-serves",
    ),
    pytest.param(
        obs(inst(1, "hibernating_v2", public_ipaddr="203.0.113.7", ports={8000: 40001}), healthy={}),
        ["unserve:status-unknown"],
        Phase.BOOTING,
        id="unknown-status-unchecked-waits",
    ),
    pytest.param(
        obs(inst(1, "hibernating_v2")),
        ["unserve:status-unknown"],
        Phase.BOOTING,
        id="unknown-status-without-address-waits-not-dead",
    ),
    pytest.param(
        obs(inst(1, template_hash_id=None), template_hash=None),
        ["serve:1"],
        Phase.SERVING,
        id="unknown-template-hash-is-not-drift",
    ),
    pytest.param(
        obs(inst(1, template_hash_id=None), inst(2, "loading", template_hash_id=None)),
        ["serve:1", "destroy:2:duplicate"],
        Phase.SERVING,
        id="instance-hash-left-out-of-the-list-is-not-drift",
    ),
    pytest.param(
        obs(inst(1, auth_tag="old0123456")),
        ["serve:1", "rent:auth-drift"],
        Phase.RENTING,
        id="auth-drift-serving-bridges-and-rents",
    ),
]


@pytest.mark.parametrize(("observation", "expected", "phase"), CASES)
def test_plan_cases(observation: Observation, expected: list[str], phase: Phase) -> None:
    """Each named situation produces exactly these actions, in this order, and this phase."""
    result = planning.plan(DESIRED, observation, POLICY)
    assert kinds(result) == expected
    assert result.phase is phase


def test_steady_interval_only_when_serving_cleanly() -> None:
    """The slow poll applies only when serving with nothing to clean up; otherwise the quick one."""
    assert planning.plan(DESIRED, obs(inst(1)), POLICY).next_check_s == 60
    assert planning.plan(DESIRED, obs(inst(1), inst(2)), POLICY).next_check_s == 5
    assert planning.plan(DESIRED, obs(inst(1, "loading")), POLICY).next_check_s == 5


def test_never_two_rentals_or_rent_beside_a_match() -> None:
    """No plan rents more than once, and none rents while a matching live instance exists."""
    for case in CASES:
        observation = case.values[0]
        assert isinstance(observation, Observation)
        result = planning.plan(DESIRED, observation, POLICY)
        rents = [a for a in result.actions if isinstance(a, Rent)]
        assert len(rents) <= 1
        verdicts = {v.kind for v in result.verdicts.values()}
        if verdicts & {"healthy", "ready", "booting"}:
            assert not rents, case.id


def test_never_destroys_the_served_instance_in_the_same_plan() -> None:
    """A plan never both serves and destroys the same instance."""
    for case in CASES:
        observation = case.values[0]
        assert isinstance(observation, Observation)
        result = planning.plan(DESIRED, observation, POLICY)
        served = {a.instance.id for a in result.actions if isinstance(a, Serve)}
        destroyed = {a.instance.id for a in result.actions if isinstance(a, Destroy)}
        assert not served & destroyed, case.id


PORT = ["-p 8000:8000", "1"]
TAG1, TOKEN = ["UPSTREAM_AUTH_TAG", "k1tag"], ["UPSTREAM_AUTH_TOKEN", "s3cr3t"]


@pytest.mark.parametrize(
    ("extra_env", "wants", "drift"),
    [
        pytest.param([PORT, TAG1, TOKEN], "k1tag", None, id="same-secret"),
        pytest.param([PORT, TAG1, TOKEN], "k2tag", "auth-drift", id="rotated-key"),
        pytest.param([PORT, TAG1, TOKEN], None, "auth-drift", id="auth-header-unset"),
        pytest.param([PORT], "k2tag", "auth-drift", id="auth-turned-on"),
        pytest.param({"-p 8000:8000": "1"}, "k2tag", "auth-drift", id="auth-turned-on-dict-env"),
        pytest.param([PORT], None, None, id="no-auth-either-way"),
        pytest.param([PORT, TOKEN], "k2tag", None, id="rented-with-a-secret-before-tags"),
        pytest.param(None, "k2tag", None, id="env-left-out"),
        pytest.param([], "k2tag", None, id="env-empty"),
        pytest.param([["FOO", "bar"]], "k2tag", None, id="env-not-a-whole-rental"),
    ],
)
def test_an_instance_rented_with_another_or_no_upstream_secret_drifts(
    extra_env: object, wants: str | None, drift: str | None
) -> None:
    """Its workload refuses the header nginx sends now, or answers anyone (rented before auth was on);
    an instance whose listed env tells neither is not judged (a replacement costs a rental)."""
    listed = model.Instance.from_api({"id": 1, "extra_env": extra_env})
    seen = replace(inst(1), auth_tag=listed.auth_tag, rented_without_auth=listed.rented_without_auth)
    assert planning.drift_of(seen, replace(DESIRED, auth_tag=wants), HASH) == drift


def test_once_a_rental_of_ours_is_listed_without_its_secret_no_listed_env_is_judged() -> None:
    """The loop breaker: a rental of this process carries the secret; listed without it, the list does
    not echo a rental's env, and judging by it would replace every replacement in turn. From then on
    no instance is judged by its listed env (said once)."""
    desired = replace(DESIRED, auth_tag="k2tag")
    old = model.Instance.from_api({"id": 1, "actual_status": "running", "extra_env": [PORT]})
    new = model.Instance.from_api({"id": 2, "actual_status": "running", "extra_env": [PORT]})
    state = tracking.ReconcilerState()
    listed = {1: old}
    assert tracking.distrust_auth_env(state, listed, desired) is None
    assert planning.drift_of(listed[1], desired, None) == "auth-drift", "judged until then"
    state.tracked[2].rented_here = True
    listed = {1: old, 2: new}
    said = tracking.distrust_auth_env(state, listed, desired)
    assert said is not None and said.startswith("instance 2, rented here with the upstream secret, is listed")
    assert [planning.drift_of(i, desired, None) for i in listed.values()] == [None, None]
    again = {1: old}
    assert tracking.distrust_auth_env(state, again, desired) is None
    assert planning.drift_of(again[1], desired, None) is None


def test_image_comparison_is_tolerant() -> None:
    """`nginx` and `docker.io/library/nginx:latest` are the same image; another tag is not."""
    desired = replace(DESIRED, image="nginx")
    same = inst(1, image_uuid="docker.io/library/nginx:latest")
    other = inst(2, image_uuid="nginx:1.25")
    assert planning.drift_of(same, desired, HASH) is None
    assert planning.drift_of(other, desired, HASH) == "image-drift"


def _apply(
    world: list[model.Instance], result: planning.Plan, next_id: int
) -> tuple[list[model.Instance], int]:
    """A tiny simulated world: destroys remove, rents add a healthy matching instance."""
    gone = {a.instance.id for a in result.actions if isinstance(a, Destroy)}
    world = [i for i in world if i.id not in gone]
    for a in result.actions:
        if isinstance(a, Rent):
            world.append(inst(next_id))
            next_id += 1
    return world, next_id


@pytest.mark.parametrize("observation", [c.values[0] for c in CASES], ids=[c.id for c in CASES])
def test_plans_converge(observation: Observation) -> None:
    """Applying plans to a simulated world reaches one healthy served instance within three ticks."""
    world = list(observation.instances)
    next_id = 100
    for _ in range(3):
        current = replace(
            observation,
            instances=tuple(world),
            healthy={i.id: True for i in world},
            unhealthy_since={},
            first_seen={},
            condemned={},
            rent_hold_until=0.0,
            now=NOW,
        )
        world = [replace(i, start_date=NOW - 1) if i.actual_status == "loading" else i for i in world]
        result = planning.plan(DESIRED, current, POLICY)
        world, next_id = _apply(world, result, next_id)
        # whatever was booting has come up by the next tick
        world = [inst(i.id) if not i.is_dead and not planning.has_endpoints(i, DESIRED) else i for i in world]
    final = planning.plan(
        DESIRED,
        Observation(
            now=NOW,
            instances=tuple(world),
            template_hash=observation.template_hash,
            healthy={i.id: True for i in world},
        ),
        POLICY,
    )
    assert final.phase is Phase.SERVING
    assert len(world) == 1


# ---------------------------------------------------------------- properties over generated observations

_STATUSES = [
    None,
    "created",
    "loading",
    "running",
    "exited",
    "offline",
    "unknown",
    "stopped",
    "hibernating_v2",
]


@st.composite
def instances(draw: st.DrawFn, iid: int) -> model.Instance:
    """One instance of ours in any state: dead, booting, up, drifted, OCI-failed, ports half there."""
    status = draw(st.sampled_from(_STATUSES))
    mapped = draw(st.booleans())
    return model.Instance(
        id=iid,
        label=LABEL,
        actual_status=status,
        status_msg=draw(st.sampled_from([None, "Pulling image", "OCI runtime create failed"])),
        image_uuid=draw(
            st.sampled_from([IMAGE, "docker.io/acme/whisper:1.2", "ghcr.io/acme/whisper:1.3", None])
        ),
        template_hash_id=draw(st.sampled_from([HASH, "b" * 32, None])),
        host_id=100 + iid,
        machine_id=200 + iid,
        public_ipaddr=draw(st.sampled_from(["203.0.113.7", None])),
        ports={8000: 40000 + iid} if mapped else {},
        start_date=draw(st.sampled_from([None, NOW - 60, NOW - 5000])),
    )


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    """What a tick may see: up to five instances with any health history, holds and condemnations."""
    ids = draw(st.lists(st.integers(min_value=1, max_value=30), max_size=5, unique=True))
    listed = tuple(draw(instances(i)) for i in ids)
    times = st.floats(min_value=NOW - 5000, max_value=NOW)
    some = st.sampled_from(ids) if ids else st.nothing()
    return Observation(
        now=NOW,
        instances=listed,
        template_hash=draw(st.sampled_from([HASH, None])),
        serving_id=draw(st.one_of(st.none(), some)) if ids else None,
        healthy=draw(st.dictionaries(some, st.booleans())) if ids else {},
        first_seen=draw(st.dictionaries(some, times)) if ids else {},
        unhealthy_since=draw(st.dictionaries(some, times)) if ids else {},
        answered=frozenset(draw(st.lists(some))) if ids else frozenset(),
        rent_hold_until=draw(st.sampled_from([0.0, NOW - 1, NOW + 60])),
        condemned=draw(st.dictionaries(some, st.just("restart-threshold"))) if ids else {},
    )


_KEPT = {
    planning.VerdictKind.HEALTHY,
    planning.VerdictKind.READY,
    planning.VerdictKind.BOOTING,
    planning.VerdictKind.UNKNOWN,
}


@settings(max_examples=300, deadline=None)
@given(observations())
def test_property_never_two_instances_for_one_pod(observation: Observation) -> None:
    """At most one rental, none beside a kept instance or during a hold; at most one kept instance."""
    result = planning.plan(DESIRED, observation, POLICY)
    rents = [a for a in result.actions if isinstance(a, Rent)]
    destroyed = {a.instance.id for a in result.actions if isinstance(a, Destroy)}
    kept = [i for i, v in result.verdicts.items() if v.kind in _KEPT and i not in destroyed]
    assert len(rents) <= 1
    assert len(kept) <= 1
    if kept or observation.now < observation.rent_hold_until:
        assert not rents


@settings(max_examples=300, deadline=None)
@given(observations())
def test_property_serves_only_what_is_healthy_and_kept(observation: Observation) -> None:
    """The first action serves or unserves; a served instance is healthy (or a bridging drifted one)
    and is never destroyed by the same plan."""
    result = planning.plan(DESIRED, observation, POLICY)
    first, rest = result.actions[0], result.actions[1:]
    assert isinstance(first, Serve | Unserve)
    assert not any(isinstance(a, Serve | Unserve) for a in rest)
    if isinstance(first, Serve):
        verdict = result.verdicts[first.instance.id]
        assert verdict.kind is planning.VerdictKind.HEALTHY or verdict.can_bridge
        assert observation.healthy.get(first.instance.id) is True
        assert first.instance.id not in {a.instance.id for a in rest if isinstance(a, Destroy)}
    assert (result.phase is Phase.SERVING) == (
        isinstance(first, Serve) and result.verdicts[first.instance.id].kind is planning.VerdictKind.HEALTHY
    )


@settings(max_examples=300, deadline=None)
@given(observations())
def test_property_failures_are_destroyed_and_bans_come_with_a_destroy(observation: Observation) -> None:
    """Dead, condemned, timed-out and unhealthy instances are destroyed (a condemned one once it no
    longer bridges, nor waits out a brief failure while nothing healthy serves); each ban has its
    destroy."""
    result = planning.plan(DESIRED, observation, POLICY)
    destroyed = {a.instance.id for a in result.actions if isinstance(a, Destroy)}
    banned = {a.instance.id for a in result.actions if isinstance(a, Ban)}
    failed = {
        planning.VerdictKind.DEAD,
        planning.VerdictKind.CONDEMNED,
        planning.VerdictKind.TIMED_OUT,
        planning.VerdictKind.UNHEALTHY,
    }
    bridge = result.serving.id if result.serving is not None else None
    waits = set() if result.phase is Phase.SERVING else {i for i, v in result.verdicts.items() if v.may_wait}
    assert {
        i for i, v in result.verdicts.items() if v.kind in failed and i not in {bridge, *waits}
    } <= destroyed
    assert banned <= destroyed
    assert len(destroyed) == len([a for a in result.actions if isinstance(a, Destroy)]), "one destroy each"


@settings(max_examples=300, deadline=None)
@given(observations())
def test_property_an_answering_instance_is_never_destroyed_for_its_status(observation: Observation) -> None:
    """An instance that answers its health check, with an address, ports and a status that is running
    or unknown to us, is never banned, and destroyed only as a duplicate or once replaced."""
    result = planning.plan(DESIRED, observation, POLICY)
    for action in result.actions:
        if not isinstance(action, Destroy | Ban):
            continue
        target = action.instance
        answering = observation.healthy.get(target.id) and planning.has_endpoints(target, DESIRED)
        if answering and target.actual_status != "running":
            assert isinstance(action, Destroy)
            assert action.reason in {"duplicate", "image-drift", "template-drift", "restart-threshold"}


@settings(max_examples=300, deadline=None)
@given(observations())
def test_property_plan_is_pure(observation: Observation) -> None:
    """The same observation always gives the same plan (no clock, no randomness inside)."""
    assert planning.plan(DESIRED, observation, POLICY) == planning.plan(DESIRED, observation, POLICY)


@settings(max_examples=200, deadline=None)
@given(observations())
def test_property_plans_converge_from_any_observation(observation: Observation) -> None:
    """From any observation, applying plans to a simulated world (destroys remove, rents add a matching
    instance, boots finish, everything passes its health check) serves one instance within four ticks."""
    world = list(observation.instances)
    next_id = 100
    for _ in range(4):
        current = Observation(
            now=NOW, instances=tuple(world), template_hash=HASH, healthy={i.id: True for i in world}
        )
        world, next_id = _apply(world, planning.plan(DESIRED, current, POLICY), next_id)
        world = [inst(i.id) if not i.is_dead and not planning.has_endpoints(i, DESIRED) else i for i in world]
    final = planning.plan(
        DESIRED,
        Observation(now=NOW, instances=tuple(world), template_hash=HASH, healthy={i.id: True for i in world}),
        POLICY,
    )
    assert final.phase is Phase.SERVING
    assert len(world) == 1
