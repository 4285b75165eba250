"""Offer selection: the filter sent to Vast, the client-side checks, bids, the score and its ranking."""

from __future__ import annotations

import random
from typing import Any

import pytest

from provisioner import errors, model, offer_report, reputation, scoring, selection, wiring
from provisioner.reputation import HostEvent, Record
from provisioner.selection import Criteria, Standing, Weights
from provisioner.settings import load_settings
from provisioner.vast import query

DEFAULTS = {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}}


def offer(oid: int, **fields: Any) -> model.Offer:
    base: dict[str, Any] = {
        "host_id": oid * 10,
        "machine_id": oid * 100,
        "dph_total": 0.5,
        "reliability": 0.99,
        "inet_down": 500.0,
        "direct_port_count": 20,
        "geolocation": "Texas, US",
        "storage_cost": 0.1,
        "min_bid": 0.2,
    }
    base.update(fields)
    return model.Offer(id=oid, **base)


# ---------------------------------------------------------------- the filter


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        pytest.param(Criteria(), {"direct_port_count": {"gte": 1}}, id="ports-only"),
        pytest.param(Criteria(ports_needed=3), {"direct_port_count": {"gte": 3}}, id="three-ports"),
        pytest.param(Criteria(max_price=0.4), {"dph_total": {"lte": 0.4}}, id="max-price"),
        pytest.param(Criteria(min_reliability=0.98), {"reliability": {"gte": 0.98}}, id="reliability"),
        pytest.param(Criteria(min_inet_down=200), {"inet_down": {"gte": 200}}, id="inet-down"),
        pytest.param(Criteria(min_cuda=12.1), {"cuda_max_good": {"gte": 12.1}}, id="cuda"),
        pytest.param(Criteria(verified_only=True), {"verified": {"eq": True}}, id="verified"),
        pytest.param(Criteria(datacenter_only=True), {"hosting_type": {"gte": 1}}, id="datacenter"),
    ],
)
def test_each_setting_adds_its_constraint(criteria: Criteria, expected: dict[str, Any]) -> None:
    """Each cost control becomes the documented field and operator of the search filter."""
    flt = selection.search_filter({}, criteria, Standing())
    for name, constraint in expected.items():
        assert flt[name] == constraint


def test_preferred_countries_do_not_filter() -> None:
    """VAST_PREFERRED_COUNTRIES only ranks: no geolocation constraint reaches the search."""
    flt = selection.search_filter(DEFAULTS, Criteria(preferred_countries=("DE", "US")), Standing())
    assert "geolocation" not in flt


@pytest.mark.parametrize(
    ("query_text", "criteria", "field", "expected"),
    [
        pytest.param("dph<=0.3", Criteria(max_price=0.5), "dph_total", {"lte": 0.3}, id="query-cap-stricter"),
        pytest.param("dph<=0.9", Criteria(max_price=0.5), "dph_total", {"lte": 0.5}, id="setting-stricter"),
        pytest.param(
            "reliability>=0.99", Criteria(min_reliability=0.9), "reliability", {"gte": 0.99}, id="query-floor"
        ),
        pytest.param(
            "direct_port_count>=5", Criteria(ports_needed=2), "direct_port_count", {"gte": 5}, id="ports"
        ),
        # allocated_storage only prices the disk: an offer with less disk than VAST_DISK_GB refuses the rent
        pytest.param("gpu_name=RTX_4090", Criteria(disk_gb=40), "disk_space", {"gte": 40.0}, id="disk"),
        pytest.param("disk_space>=100", Criteria(disk_gb=40), "disk_space", {"gte": 100.0}, id="query-disk"),
    ],
)
def test_settings_tighten_but_never_loosen_the_query(
    query_text: str, criteria: Criteria, field: str, expected: dict[str, Any]
) -> None:
    """A bound in VAST_SEARCH_QUERY stricter than the setting's is kept; a looser one is tightened."""
    flt = selection.search_filter(query.parse_query(query_text), criteria, Standing())
    assert flt[field] == expected


def test_bans_are_sent_as_complete_notin_lists() -> None:
    """Banned hosts and machines go into the query as notin, merged with any notin the query had."""
    base = query.parse_query("host_id notin [7,8]")
    standing = Standing(banned_hosts=frozenset({8, 3, 42}), banned_machines=frozenset({900}))
    flt = selection.search_filter(base, Criteria(), standing)
    assert flt["host_id"] == {"notin": ["7", "8", 3, 42]}
    assert flt["machine_id"] == {"notin": [900]}
    assert base["host_id"] == {"notin": ["7", "8"]}, "the user's filter is not changed"


def test_search_body_is_priced_for_the_disk_and_typed_by_interruptible() -> None:
    """allocated_storage is VAST_DISK_GB (so dph_total includes it); VAST_INTERRUPTIBLE sends type bid."""
    on_demand = selection.search_body(DEFAULTS, Criteria(disk_gb=40), Standing())
    bid = selection.search_body(DEFAULTS, Criteria(disk_gb=40, interruptible=True), Standing())
    assert (on_demand["type"], on_demand["allocated_storage"]) == ("on-demand", 40.0)
    assert (bid["type"], bid["allocated_storage"]) == ("bid", 40.0)


# ---------------------------------------------------------------- bids and client-side checks


@pytest.mark.parametrize(
    ("min_bid", "multiplier", "max_price", "expected"),
    [
        pytest.param(0.2, 1.5, None, 0.3, id="multiplied"),
        pytest.param(0.2, 1.5, 0.3 + 20 * 0.1 / 720, 0.3, id="cap-exactly-met"),
        pytest.param(0.2, 1.5, 0.25 + 20 * 0.1 / 720, 0.25, id="lowered-to-cap"),
        pytest.param(0.2, 1.5, 0.19, None, id="min-bid-over-cap"),
        pytest.param(None, 1.5, None, None, id="no-min-bid"),
    ],
)
def test_bid_is_min_bid_times_multiplier_never_above_cap(
    min_bid: float | None, multiplier: float, max_price: float | None, expected: float | None
) -> None:
    """bid = min_bid x VAST_BID_MULTIPLIER, lowered so bid + storage <= VAST_MAX_PRICE; None if impossible."""
    crit = Criteria(interruptible=True, bid_multiplier=multiplier, max_price=max_price, disk_gb=20)
    bid = selection.bid_for(offer(1, min_bid=min_bid, storage_cost=0.1), crit)
    assert bid == pytest.approx(expected) if expected is not None else bid is None


@pytest.mark.parametrize(
    ("fields", "criteria", "standing", "reason"),
    [
        pytest.param({}, Criteria(), Standing(banned_hosts=frozenset({10})), "banned-host", id="banned-host"),
        pytest.param(
            {}, Criteria(), Standing(banned_machines=frozenset({100})), "banned-machine", id="banned-machine"
        ),
        pytest.param(
            {"direct_port_count": 1}, Criteria(ports_needed=2), Standing(), "too-few-ports", id="ports"
        ),
        pytest.param({"dph_total": 0.6}, Criteria(max_price=0.5), Standing(), "over-price", id="over-price"),
        pytest.param(
            {"dph_total": None}, Criteria(max_price=0.5), Standing(), "over-price", id="price-unknown"
        ),
        pytest.param(
            {"min_bid": 0.6},
            Criteria(interruptible=True, max_price=0.5),
            Standing(),
            "no-bid-under-cap",
            id="bid",
        ),
        pytest.param(
            {"reliability": 0.9}, Criteria(min_reliability=0.95), Standing(), "low-reliability", id="rel"
        ),
        pytest.param({"inet_down": 50.0}, Criteria(min_inet_down=100), Standing(), "slow-network", id="inet"),
        pytest.param({"cuda_max_good": 11.8}, Criteria(min_cuda=12.0), Standing(), "old-cuda", id="cuda"),
        pytest.param(
            {"verified": False}, Criteria(verified_only=True), Standing(), "unverified", id="verified"
        ),
        pytest.param(
            {"datacenter": False},
            Criteria(datacenter_only=True),
            Standing(),
            "not-datacenter",
            id="datacenter",
        ),
        pytest.param(
            {"reliability": None}, Criteria(min_reliability=0.95), Standing(), None, id="unknown-passes"
        ),
        pytest.param({}, Criteria(max_price=0.5), Standing(), None, id="at-the-cap"),
    ],
)
def test_client_side_checks_repeat_the_filter(
    fields: dict[str, Any], criteria: Criteria, standing: Standing, reason: str | None
) -> None:
    """Defence in depth: an offer the server should not have returned is excluded, with a reason."""
    scored = selection.score_offers([offer(1, **fields)], criteria, standing)
    assert scored[0].excluded == reason
    assert (selection.rank_offers([offer(1, **fields)], criteria, standing) == []) is (reason is not None)


# ---------------------------------------------------------------- score parts


@pytest.mark.parametrize(
    ("reliability", "part"),
    [(0.99, 0.9), (0.95, 0.5), (0.9, 0.0), (0.5, 0.0), (1.0, 1.0), (None, 0.0)],
)
def test_reliability_part(reliability: float | None, part: float) -> None:
    """Reliability part = clamp(1 - 10 (1 - reliability))."""
    assert scoring.reliability_part(reliability) == pytest.approx(part)


@pytest.mark.parametrize(
    ("inet_down", "part"),
    [(None, 0.0), (0.0, 0.0), (9.0, 1 / 3), (99.0, 2 / 3), (999.0, 1.0), (10_000.0, 1.0)],
)
def test_bandwidth_part(inet_down: float | None, part: float) -> None:
    """Bandwidth part = clamp(log10(1 + inet_down) / 3)."""
    assert scoring.bandwidth_part(inet_down) == pytest.approx(part)


@pytest.mark.parametrize(
    ("country", "preferred", "part"),
    [
        ("DE", ("DE", "US"), 1.0),
        ("US", ("DE", "US"), 0.5),
        ("FR", ("DE", "US"), 0.0),
        (None, ("DE",), 0.0),
        ("DE", (), 0.0),
    ],
)
def test_country_part(country: str | None, preferred: tuple[str, ...], part: float) -> None:
    """Country part = (n - i) / n for the i-th preferred country, 0 elsewhere."""
    assert scoring.country_part(country, preferred) == pytest.approx(part)


@pytest.mark.parametrize(
    ("host", "machine", "part"),
    [
        (None, None, 0.5),
        (Record(good=2), None, 0.75),
        (Record(bad=2), None, 0.25),
        (Record(good=1), Record(bad=1), 0.5),
    ],
)
def test_reputation_part(host: Record | None, machine: Record | None, part: float) -> None:
    """Reputation part = (g + 1) / (g + b + 2) over the host's and the machine's records."""
    assert reputation.reputation_part(host, machine) == pytest.approx(part)


# ---------------------------------------------------------------- ranking


def ids(scored: list[selection.Scored]) -> list[int]:
    return [s.offer.id for s in scored]


@pytest.mark.parametrize(
    ("offers", "criteria", "standing", "expected"),
    [
        pytest.param(
            [offer(1, dph_total=0.9), offer(2, dph_total=0.3), offer(3, dph_total=0.6)],
            Criteria(),
            Standing(),
            [2, 3, 1],
            id="cheapest-first",
        ),
        pytest.param(
            [offer(1, dph_total=0.3, reliability=0.92), offer(2, dph_total=0.33, reliability=0.999)],
            Criteria(),
            Standing(),
            [2, 1],
            id="reliability-beats-small-saving",
        ),
        pytest.param(
            [offer(1, dph_total=0.3, reliability=0.92), offer(2, dph_total=0.33, reliability=0.999)],
            Criteria(weights=Weights(reliability=0.0)),
            Standing(),
            [1, 2],
            id="weights-change-order",
        ),
        pytest.param(
            [offer(1), offer(2)],
            Criteria(),
            Standing(hosts={10: Record(bad=1.0)}),
            [2, 1],
            id="bad-record-ranks-lower",
        ),
        pytest.param(
            [offer(1), offer(2)],
            Criteria(),
            Standing(hosts={20: Record(good=3.0)}),
            [2, 1],
            id="good-record-ranks-higher",
        ),
        pytest.param(
            [
                offer(1, geolocation="Texas, US"),
                offer(2, geolocation="Bavaria, DE"),
                offer(3, geolocation="Oslo, NO"),
            ],
            Criteria(preferred_countries=("DE", "US")),
            Standing(),
            [2, 1, 3],
            id="country-preference-with-fallback",
        ),
        pytest.param([offer(5), offer(3), offer(4)], Criteria(), Standing(), [3, 4, 5], id="ties-by-id"),
        pytest.param(
            [offer(1, dph_total=0.1), offer(2, dph_total=0.5)],
            Criteria(),
            Standing(banned_hosts=frozenset({10})),
            [2],
            id="banned-left-out",
        ),
    ],
)
def test_ranking(
    offers: list[model.Offer], criteria: Criteria, standing: Standing, expected: list[int]
) -> None:
    """rank_offers orders by the documented score; ties go to the lower offer id."""
    assert ids(selection.rank_offers(offers, criteria, standing)) == expected


def test_score_is_the_weighted_sum_of_its_parts() -> None:
    """The score equals sum(weight x part), with the parts reported alongside."""
    weights = Weights(price=2, reliability=3, reputation=5, country=7, bandwidth=11)
    crit = Criteria(weights=weights, preferred_countries=("US",))
    best = selection.rank_offers([offer(1, dph_total=0.5), offer(2, dph_total=1.0)], crit)
    for s in best:
        p = s.parts
        total = 2 * p.price + 3 * p.reliability + 5 * p.reputation + 7 * p.country + 11 * p.bandwidth
        assert s.score == pytest.approx(total)
    assert [s.parts.price for s in best] == [1.0, 0.5]


def test_ranking_many_offers_is_sorted_and_deterministic() -> None:
    """Ten thousand random offers: scores never rise down the list; shuffling the input changes nothing."""
    rng = random.Random(5)
    offers = [
        offer(
            i,
            host_id=rng.randint(1, 500),
            dph_total=round(rng.uniform(0.05, 3.0), 3),
            reliability=round(rng.uniform(0.8, 1.0), 3),
            inet_down=rng.choice([50.0, 500.0, 5000.0]),
            geolocation=rng.choice(["Texas, US", "Bavaria, DE", "Oslo, NO"]),
        )
        for i in range(1, 10_001)
    ]
    crit = Criteria(preferred_countries=("DE",), max_price=2.5)
    standing = Standing(banned_hosts=frozenset(range(1, 50)), hosts={60: Record(bad=3.0)})
    ranked = selection.rank_offers(offers, crit, standing)
    keys = [(-s.score, s.offer.id) for s in ranked]
    assert keys == sorted(keys)
    assert all(s.offer.host_id not in standing.banned_hosts for s in ranked)
    shuffled = offers[:]
    rng.shuffle(shuffled)
    assert ids(selection.rank_offers(shuffled, crit, standing)) == ids(ranked)


def test_scored_parts_are_the_documented_part_functions() -> None:
    """The inlined scorer gives, per offer, exactly the parts the documented part functions give."""
    rng = random.Random(9)
    offers = [
        offer(
            i,
            host_id=rng.choice([None, 1, 2, 3]),
            machine_id=rng.choice([None, 11, 12]),
            dph_total=rng.choice([None, 0.0, round(rng.uniform(0.05, 3.0), 3)]),
            reliability=rng.choice([None, 0.5, 0.9, 0.95, 0.999, 1.0]),
            inet_down=rng.choice([None, 0.0, 9.0, 999.0, 5000.0]),
            geolocation=rng.choice([None, "Texas, US", "Bavaria, DE", "Oslo, NO", "nowhere"]),
        )
        for i in range(1, 501)
    ]
    hosts = {1: Record(2.0, 1.0), 2: Record(0.0, 3.0)}
    machines = {11: Record(1.0, 0.0)}
    crit = Criteria(preferred_countries=("DE", "US"))
    scored = selection.score_offers(offers, crit, Standing(hosts=hosts, machines=machines))
    cheapest = min(s.price_per_hour for s in scored if s.excluded is None and s.price_per_hour)
    assert len(scored) == len(offers)
    for s in scored:
        o = s.offer
        price = s.price_per_hour
        assert s.parts == scoring.Parts(
            min(1.0, cheapest / price) if price else 0.0,
            scoring.reliability_part(o.reliability),
            reputation.reputation_part(hosts.get(o.host_id or 0), machines.get(o.machine_id or 0)),
            scoring.country_part(o.country, crit.preferred_countries),
            scoring.bandwidth_part(o.inet_down),
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Weights()),
        ("price=2", Weights(price=2.0)),
        ("price=1, reliability=2,reputation=2,country=1,bandwidth=0.5", Weights(1, 2, 2, 1, 0.5)),
        ("BANDWIDTH=0", Weights(bandwidth=0.0)),
    ],
)
def test_weights_parse(text: str, expected: Weights) -> None:
    """VAST_SCORE_WEIGHTS: name=weight pairs; unnamed parts keep their defaults."""
    assert Weights.parse(text) == expected


@pytest.mark.parametrize("text", ["speed=1", "price", "price=abc", "price=-1", "price=inf"])
def test_weights_parse_rejects(text: str) -> None:
    """An unknown name, a missing or negative or infinite weight is refused."""
    with pytest.raises(ValueError, match=r"weight|name"):
        Weights.parse(text)


# ---------------------------------------------------------------- reputation records


def test_events_decay_with_their_half_life() -> None:
    """An event one half-life old weighs half; machine events count for the machine too."""
    now = 10_000.0
    events = [
        HostEvent(now - 100, "death", host_id=1, machine_id=11),
        HostEvent(now, "death", host_id=1, machine_id=12),
        HostEvent(now - 200, "ban", host_id=2, machine_id=None),
    ]
    hosts, machines = reputation.summarize_events(events, now, half_life_s=100)
    assert hosts[1] == Record(good=0.0, bad=pytest.approx(1.5))
    assert hosts[2].bad == pytest.approx(2 * 0.25)
    assert machines[11].bad == pytest.approx(0.5)
    assert machines[12].bad == pytest.approx(1.0)


def test_slow_ready_counts_against_a_host_relative_to_the_median() -> None:
    """A ready event is one good; one taking twice the median time to ready also adds one bad."""
    now = 1000.0
    events = [
        HostEvent(now, "ready", host_id=1, value=60.0),
        HostEvent(now, "ready", host_id=2, value=60.0),
        HostEvent(now, "ready", host_id=3, value=60.0),
        HostEvent(now, "ready", host_id=4, value=180.0),
        HostEvent(now, "ready", host_id=5, value=90.0),
    ]
    hosts, _ = reputation.summarize_events(events, now, half_life_s=3600)
    assert hosts[1] == Record(good=1.0, bad=0.0)
    assert hosts[4] == Record(good=1.0, bad=1.0)
    assert hosts[5].bad == pytest.approx(0.5)


def test_too_few_ready_samples_judge_no_speed() -> None:
    """Below MIN_READY_SAMPLES ready events there is no median, so no slow-boot penalty."""
    events = [HostEvent(0.0, "ready", host_id=1, value=10.0), HostEvent(0.0, "ready", host_id=2, value=500.0)]
    hosts, _ = reputation.summarize_events(events, 0.0, half_life_s=60)
    assert hosts[2] == Record(good=1.0, bad=0.0)


# ---------------------------------------------------------------- diagnosis and presentation


def test_relaxations_try_the_settings_constraints_first() -> None:
    """Diagnosis drops the settings' constraints first, then query fields; never rentable or bans."""
    crit = Criteria(max_price=0.1, min_reliability=0.9)
    full = selection.search_filter(query.parse_query("gpu_name=RTX_4090"), crit, Standing(frozenset({1})))
    options = offer_report.relaxations(full, crit, limit=5)
    fields = ["direct_port_count", "dph_total", "reliability", "disk_space", "verified"]
    assert [o.field for o in options] == fields
    sources = ["the proxied ports", "VAST_MAX_PRICE", "VAST_MIN_RELIABILITY", "VAST_DISK_GB"]
    assert [o.source for o in options][:4] == sources
    assert options[4].source == "VAST_SEARCH_QUERY"
    assert all("dph_total" not in o.filter for o in options if o.field == "dph_total")


def test_explain_no_match_names_the_worst_constraint() -> None:
    """With nothing returned, the message names the constraint whose removal brings back the most offers."""
    crit = Criteria(max_price=0.01)
    full = selection.search_filter(DEFAULTS, crit, Standing())
    relaxed = [(o, n) for o, n in zip(offer_report.relaxations(full, crit, 3), [0, 12, 0], strict=True)]
    relaxed.sort(key=lambda item: -item[1])
    message = offer_report.explain_no_match([], relaxed)
    assert "VAST_MAX_PRICE (dph_total lte 0.01)" in message
    assert "returns 12 offers" in message


def test_explain_no_match_counts_client_side_exclusions() -> None:
    """With offers returned but all excluded, the message counts each reason."""
    scored = selection.score_offers(
        [offer(1), offer(2), offer(3, dph_total=0.9)],
        Criteria(max_price=0.6),
        Standing(banned_hosts=frozenset({10, 20})),
    )
    assert offer_report.explain_no_match(scored, []) == (
        "no offer may be rented: the search returned 3, all excluded (2 banned-host, 1 over-price)"
    )


def test_table_marks_banned_offers_and_the_next_rental() -> None:
    """The offers table keeps banned offers in score order, marked, and flags the one that would be rented."""
    scored = selection.score_offers(
        [offer(1, dph_total=0.1), offer(2, dph_total=0.2), offer(3, dph_total=5.0)],
        Criteria(max_price=1.0),
        Standing(banned_hosts=frozenset({10})),
    )
    shown = offer_report.shown_offers(scored, top=10)
    assert ids(shown) == [1, 2], "the over-price offer is not shown"
    lines = offer_report.render_offers(shown, first_usable_id=2).splitlines()
    assert "BANNED host" in lines[1] and "rents next" in lines[2]
    assert "score" in lines[0] and "rep" in lines[0]


# ---------------------------------------------------------------- settings -> criteria


def test_settings_become_criteria(env: pytest.MonkeyPatch) -> None:
    """The VAST_* selection variables reach the criteria, countries upper-cased and in order."""
    for key, value in {
        "VAST_MAX_PRICE": "0.8",
        "VAST_MIN_RELIABILITY": "0.97",
        "VAST_MIN_INET_DOWN": "300",
        "VAST_MIN_CUDA": "12.2",
        "VAST_VERIFIED_ONLY": "true",
        "VAST_DATACENTER_ONLY": "1",
        "VAST_PREFERRED_COUNTRIES": "us, ca",
        "VAST_INTERRUPTIBLE": "true",
        "VAST_BID_MULTIPLIER": "1.5",
        "VAST_SCORE_WEIGHTS": "price=3",
        "PROXY_PORTS": "3000:8000,3001:8001",
        "VAST_DISK_GB": "50",
    }.items():
        env.setenv(key, value)
    crit = wiring.build_criteria(load_settings())
    assert crit == Criteria(
        ports_needed=2,
        disk_gb=50.0,
        max_price=0.8,
        min_reliability=0.97,
        min_inet_down=300.0,
        min_cuda=12.2,
        verified_only=True,
        datacenter_only=True,
        preferred_countries=("US", "CA"),
        interruptible=True,
        bid_multiplier=1.5,
        weights=Weights(price=3.0),
    )


def test_blank_price_cap_means_none(env: pytest.MonkeyPatch) -> None:
    """An empty VAST_MAX_PRICE (as manifests often leave it) means no cap."""
    env.setenv("VAST_MAX_PRICE", "")
    assert wiring.build_criteria(load_settings()).max_price is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VAST_SCORE_WEIGHTS", "speed=2"),
        ("VAST_PREFERRED_COUNTRIES", "USA"),
        ("VAST_PREFERRED_COUNTRIES", "US,US"),
        ("VAST_MAX_PRICE", "-1"),
        ("VAST_MIN_RELIABILITY", "1.5"),
        ("VAST_BID_MULTIPLIER", "0.5"),
    ],
)
def test_bad_selection_settings_name_the_variable(env: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """A bad selection variable is a ConfigError naming it."""
    env.setenv(variable, value)
    with pytest.raises(errors.ConfigError) as info:
        load_settings()
    assert info.value.variable == variable


def test_daemon_search_body_carries_bans_and_cost_controls(env: pytest.MonkeyPatch) -> None:
    """The body the daemon sends holds the query, the price cap, the ports and the bans."""
    env.setenv("VAST_SEARCH_QUERY", "gpu_name=RTX_4090")
    env.setenv("VAST_MAX_PRICE", "0.7")
    body = wiring.build_search_body(load_settings())(Standing(banned_hosts=frozenset({5, 4})))
    assert body["gpu_name"] == {"eq": "RTX 4090"}
    assert body["dph_total"] == {"lte": 0.7}
    assert body["direct_port_count"] == {"gte": 1}
    assert body["host_id"] == {"notin": [4, 5]}
    assert body["allocated_storage"] == 20.0


def test_reputation_names_stay_importable_from_selection() -> None:
    """blacklist.py's selection.Event / Record / EVENT_KINDS / summarize_events are reputation's."""
    assert selection.Event is reputation.HostEvent
    assert selection.Record is reputation.Record
    assert selection.EVENT_KINDS is reputation.EVENT_KINDS
    assert selection.summarize_events is reputation.summarize_events
