"""The search-query language and search body, checked against the official vastai 1.9.1 CLI.

The differential tests run each query through ``vastai search offers`` itself
(``search__offers`` with its own argument parser, its client replaced by one
that captures the body instead of sending it), so the comparison is with the
exact JSON the official CLI would POST.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from provisioner import errors
from provisioner.vast import fields, query

NON_FILTER_KEYS = ("order", "type", "limit", "allocated_storage")


# --- the official CLI as an oracle


class _Sent(Exception):
    """Raised by the capturing client in place of an HTTP request."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("captured")
        self.body = body


class _CapturingClient:
    """Stands in for VastClient: records the body of the search request and stops there."""

    def post(self, path: str, json_data: dict[str, Any] | None = None, **_: Any) -> None:
        assert path == "/bundles/"
        raise _Sent(json.loads(json.dumps(json_data)))

    def put(self, path: str, json_data: dict[str, Any] | None = None, **_: Any) -> None:
        raise AssertionError(f"unexpected PUT {path}")


class Official:
    """What ``vastai search offers`` does with one command line."""

    def __init__(self, body: dict[str, Any] | None, failure: str | None, out: str, err: str) -> None:
        self.body = body
        self.failure = failure
        self.out = out
        self.err = err

    @property
    def filter(self) -> dict[str, Any]:
        """The body without the keys that are not filters (order, type, limit, allocated_storage)."""
        assert self.body is not None, f"official CLI failed: {self.failure}"
        return {k: v for k, v in self.body.items() if k not in NON_FILTER_KEYS}


@pytest.fixture
def official(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Official]:
    """Return a function running the official ``search offers`` on a query and flags."""
    from vastai.cli.commands import offers  # the test-only oracle, imported only here

    monkeypatch.setattr(offers, "get_client", lambda args: _CapturingClient())

    def run(text: str, *flags: str) -> Official:
        args = offers.search__offers.mysignature.parse_args(list(flags))
        args.explain = False
        args.query = [text]  # as `vastai search offers '<text>'`
        capsys.readouterr()
        body: dict[str, Any] | None = None
        failure: str | None = None
        try:
            code = offers.search__offers(args)
            failure = f"returned {code}"
        except _Sent as sent:
            body = sent.body
        except Exception as exc:  # the official parser crashes outright on some inputs
            failure = f"{type(exc).__name__}: {exc}"
        out, err = capsys.readouterr()
        return Official(body, failure, out, err)

    return run


def dumps(value: Any) -> str:
    """JSON text with key order kept, as the CLI sends it."""
    return json.dumps(value, sort_keys=False)


# --- worked examples (docs/vast-api.md §5.2)

DEFAULTS: dict[str, Any] = {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "gpu_name=RTX_3060 num_gpus=1 reliability>0.98 dph<0.5 geolocation in [US,CA]",
            {
                **DEFAULTS,
                "gpu_name": {"eq": "RTX 3060"},
                "num_gpus": {"eq": "1"},
                "reliability": {"gt": "0.98"},
                "dph_total": {"lt": "0.5"},
                "geolocation": {"in": ["US", "CA"]},
            },
            id="basic-alias-list",
        ),
        pytest.param(
            "reliability > 0.98 num_gpus>=2 gpu_ram>=24 cpu_ram>=32 disk_space>=50 duration>=7",
            {
                **DEFAULTS,
                "reliability": {"gt": "0.98"},
                "num_gpus": {"gte": "2"},
                "gpu_ram": {"gte": 24000.0},
                "cpu_ram": {"gte": 32000.0},
                "disk_space": {"gte": "50"},
                "duration": {"gte": 604800.0},
            },
            id="multipliers",
        ),
        pytest.param(
            'gpu_name in ["RTX 4090", "RTX 3090"] geolocation notin [CN,VN]',
            {
                **DEFAULTS,
                "gpu_name": {"in": ["RTX 4090", "RTX 3090"]},
                "geolocation": {"notin": ["CN", "VN"]},
            },
            id="quoted-list-notin",
        ),
        pytest.param(
            "cuda_vers>=12.1 driver_version>=535.86.05 direct_port_count>=2",
            {
                **DEFAULTS,
                "cuda_max_good": {"gte": "12.1"},
                "driver_version": {"gte": 535086005},
                "direct_port_count": {"gte": "2"},
            },
            id="cuda-alias-driver-version",
        ),
        pytest.param("verified=any rentable=any", {"external": {"eq": False}}, id="wildcards-drop-defaults"),
        pytest.param(
            "num_gpus>=1 num_gpus<=4", {**DEFAULTS, "num_gpus": {"gte": "1", "lte": "4"}}, id="merge"
        ),
        pytest.param("", DEFAULTS, id="empty-is-defaults"),
    ],
)
def test_worked_examples(text: str, expected: dict[str, Any]) -> None:
    """The worked examples of docs/vast-api.md §5.2 give exactly the documented JSON, key order included."""
    result = query.parse_query(text)
    assert result == expected
    assert dumps(result) == dumps(expected)


def test_without_defaults_only_the_query_is_sent() -> None:
    """defaults=False leaves out verified/external/rentable (the CLI's -n)."""
    assert query.parse_query("num_gpus=1 verified=any", defaults=False) == {"num_gpus": {"eq": "1"}}


def test_results_do_not_share_the_default_dicts() -> None:
    """Changing one result does not leak into the defaults of the next call."""
    first = query.parse_query("")
    first["verified"]["eq"] = False
    assert query.parse_query("")["verified"] == {"eq": True}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "gpu_name=RTX 3060",
            "unexpected text at 'gpu_name=RTX 3060': quote values with spaces or use '_'",
            id="unquoted-space",
        ),
        pytest.param("num_gpus=>1", "unknown operator '=>' in 'num_gpus=>1'", id="bad-operator"),
        pytest.param("gpu_nmae=RTX_3060", "unknown field 'gpu_nmae' (did you mean 'gpu_name'?)", id="typo"),
        pytest.param("num_gpus", "missing operator in 'num_gpus'", id="missing-operator"),
        pytest.param("num_gpus=", "missing value in 'num_gpus='", id="missing-value"),
        pytest.param("verified>any", "a wildcard only works with '=' in 'verified>any'", id="wildcard-op"),
        pytest.param("geolocation in []", "missing value in 'geolocation in []'", id="empty-list"),
    ],
)
def test_error_message_names_the_bad_part(text: str, message: str) -> None:
    """A bad query raises QueryError for VAST_SEARCH_QUERY whose message quotes the offending part."""
    with pytest.raises(errors.QueryError) as caught:
        query.parse_query(text)
    assert caught.value.problem == message
    assert caught.value.variable == "VAST_SEARCH_QUERY"
    assert isinstance(caught.value, errors.ConfigError)


# --- differential corpus

# Queries the official CLI accepts without a warning; ours must give the same filter.
VALID = [
    "",
    "gpu_name=RTX_3060",
    "gpu_name=RTX_3060 num_gpus=1 reliability>0.98",
    "gpu_name==RTX_4090",
    "gpu_name!=RTX_3060",
    "num_gpus>=2",
    "num_gpus>2",
    "num_gpus<=4",
    "num_gpus<4",
    "num_gpus==1",
    "num_gpus = 2",
    "num_gpus =2",
    "num_gpus= 2",
    "reliability > 0.98",
    "num_gpus eq 1",
    "num_gpus neq 1",
    "num_gpus noteq 1",
    "num_gpus not eq 1",
    "num_gpus gt 1",
    "num_gpus gte 1",
    "num_gpus lt 8",
    "num_gpus lte 8",
    "num_gpus  gte  2",
    "geolocation in [US,CA]",
    "geolocation notin [CN,VN]",
    "geolocation not in [CN,VN]",
    "geolocation nin [CN,VN]",
    "geolocation in US",
    "geolocation in US,CA",
    "geolocation in [US, CA]",
    "geolocation in [ US , CA ]",
    "geolocation in [US,,CA]",
    "geolocation=US",
    'gpu_name in ["RTX 4090", "RTX 3090"]',
    "gpu_name in [RTX_4090,RTX_3090]",
    "gpu_name notin [RTX_3060]",
    'gpu_name in "RTX 3060"',
    "gpu_name in any",
    'gpu_name="RTX 3060"',
    'gpu_name = "RTX 3060"',
    'gpu_name="RTX_3060"',
    'gpu_name!="RTX 3060"',
    "gpu_name=A100_SXM4",
    "gpu_name=H100_NVL num_gpus>=8 inet_down>=1000 verified=any",
    "gpu_name=TRUE",
    'gpu_name="true"',
    "dph<0.5",
    "dph_total<0.5",
    "dph<=1.25 dph>=0.1",
    "dph<0.5 dph_total<0.4",
    "cuda_vers>=12.1",
    "cuda_max_good>=12.4",
    "display_active=false",
    "dlperf_usd>10",
    "flops_usd>=5",
    "gpu_ram>=24",
    "cpu_ram>=32",
    "gpu_total_ram>=80",
    "duration>=7",
    "duration>0.5",
    "gpu_ram>=24.5",
    "gpu_ram>=1e1",
    'gpu_ram>="24"',
    "gpu_ram<=0",
    "cpu_ram>=0.5",
    "gpu_ram>=8 gpu_ram<=48",
    "verified=true",
    "verified=True",
    "verified=false",
    "external=False",
    "rentable=true rented=false",
    "static_ip=true",
    "cluster_id=null",
    "cluster_id=None",
    "cluster_id!=null",
    "cluster_id=5",
    "verified=any",
    "verified=any rentable=any",
    "verified=? external=*",
    "external=any verified=false",
    "rented=any",
    "num_gpus=any",
    "num_gpus>=2 num_gpus=any",
    "verified=any verified=true",
    "gpu_ram=any",
    "num_gpus>=1 num_gpus<=4",
    "num_gpus>=1 num_gpus>=2",
    "num_gpus>=1 num_gpus<=4 num_gpus>=2",
    "reliability>0.9 reliability<1",
    "geolocation notin [CN] geolocation notin [VN]",
    "geolocation in [US] geolocation notin [CN]",
    "driver_version>=535.86.05",
    "driver_version=550.54.14",
    "driver_version<570.0.1",
    "driver_version>=470.256.02",
    "driver_version>=535",
    "driver_version=any",
    "num_gpus=1,",
    "num_gpus=1, gpu_ram>=8",
    "num_gpus=-1",
    "reliability>.98",
    "compute_cap>=800",
    "cpu_cores>=8 cpu_cores_effective>=4 cpu_ghz>3",
    "disk_space>=50 disk_bw>500",
    "inet_up>=100 inet_down>=500",
    "inet_up_cost<0.01 inet_down_cost<0.01",
    "direct_port_count>=2",
    "pci_gen>=4 pcie_bw>10",
    "gpu_mem_bw>500 bw_nvlink>0",
    "gpu_frac=1",
    "gpu_max_power>=300 gpu_max_temp<90",
    "has_avx=true",
    "cpu_arch=amd64 gpu_arch=nvidia",
    "mobo_name=ROMED8-2T",
    "ubuntu_version>=22.04",
    "verification=verified",
    "vms_enabled=false",
    "host_id=12345 machine_id!=678",
    "id=1234567",
    "min_bid<0.2 storage_cost<0.3",
    "total_flops>100 dlperf>50",
    "datacenter=true",
    "gpu_name=RTX_3060 num_gpus=1 reliability>0.98 dph<0.5 geolocation in [US,CA]",
    "reliability > 0.98 num_gpus>=2 gpu_ram>=24 cpu_ram>=32 disk_space>=50 duration>=7",
    'gpu_name in ["RTX 4090", "RTX 3090"] geolocation notin [CN,VN]',
    "cuda_vers>=12.1 driver_version>=535.86.05 direct_port_count>=2",
    "  num_gpus=1  ",
    "num_gpus=1    gpu_ram>=8",
    "gpu_name in [RTX_4090]  num_gpus=1",
    "num_gpus>=1 gpu_name in [RTX_4090,RTX_3090] geolocation notin [CN] dph<0.8 verified=any rentable=true",
]

# Documented fields outside the official offers_fields: it warns but sends them, and so do we, silently.
EXTRA = [
    "hosting_type>=1",
    "hosting_type=1 os_version=22.04",
    "reliability2>0.95",
]

# Queries the official CLI rejects (prints "Error:" and returns 1, or crashes); ours must raise QueryError.
INVALID = [
    "gpu_name=RTX 3060",
    "gpu_name=RTX 4090 Ti",
    "gpu_name=RTX 3060 num_gpus=1",
    '"gpu_name=RTX 3060"',
    'gpu_name="RTX 3060',
    "num_gpus",
    "num_gpus=",
    "num_gpus >=",
    "dph<",
    "num_gpus=1 num_gpus",
    "num_gpus 1",
    "num_gpus=>1",
    "num_gpus => 1",
    "num_gpus<>1",
    "num_gpus=<1",
    "num_gpus===1",
    "num_gpus<=>1",
    "num_gpus!1",
    "num_gpus !! 1",
    "num_gpus ne 1",
    "num_gpus ge 1",
    "num_gpus EQ 1",
    "geolocation notin",
    "geolocation in",
    "geolocation in[US]",
    "geolocation not  in [US]",
    "geolocation in []",
    "geolocation in [ ]",
    "geolocation in [,]",
    "verified>any",
    "verified!=any",
    "verified neq *",
    "num_gpus<?",
    "gpu_ram>=abc",
    "gpu_ram>=true",
    "gpu_ram>=24GB",
    "cpu_ram>=null",
    "duration>=1_000",
    "gpu_ram in [24,48]",
    "cpu_ram notin 16",
    "driver_version>=535.86",
    "driver_version>=535.86.05.1",
    "driver_version>=abc.def.ghi",
    "driver_version>=0.0.0",
    'driver_version>="535.86.05"',
    "driver_version in [535.86.05]",
    "driver_version in [535.86.05,550.54.14]",
    "-num_gpus=1",
    "(num_gpus=1)",
    "=1",
    "num_gpus=1 & gpu_ram>=8",
    "num_gpus=1 OR num_gpus=2",
    "gpu-name=RTX_3060",
]

# Unknown field names: the official CLI warns on stderr and sends them anyway; we refuse them.
UNKNOWN = [
    pytest.param("gpu_nmae=RTX_3060", "gpu_nmae", id="gpu_nmae"),
    pytest.param("num_gpu=1", "num_gpu", id="num_gpu"),
    pytest.param("GPU_NAME=RTX_3060", "GPU_NAME", id="upper-case"),
    pytest.param("price<0.5", "price", id="price"),
    pytest.param("dph_base<0.3", "dph_base", id="dph_base"),
    pytest.param("score>10", "score", id="score"),
    pytest.param("order=score", "order", id="order"),
    pytest.param("gpu_count>=2", "gpu_count", id="gpu_count"),
    pytest.param("cuda>=12", "cuda", id="cuda"),
    pytest.param("disk>=50", "disk", id="disk"),
    pytest.param("geo in [US]", "geo", id="geo"),
    pytest.param("num_gpus=1 realiability>0.9", "realiability", id="typo-after-valid"),
    pytest.param("verifed=any", "verifed", id="typo-wildcard"),
    pytest.param("gpu_ram_free_min>=8", "gpu_ram_free_min", id="commented-out-field"),
]

# The official CLI sends these without complaint, but what it sends is not what was asked for, or is not
# valid JSON; we refuse them (see the module docstring). Each carries the official JSON fragment.
GARBAGE = [
    pytest.param(
        "gpu_name=[RTX_3060,RTX_4090]", '"gpu_name": {"eq": "RTX 3060,RTX 4090"}', id="list-with-eq"
    ),
    pytest.param("num_gpus=[1]", '"num_gpus": {"eq": "1"}', id="one-item-list-with-eq"),
    pytest.param("gpu_name=[ ]", '"gpu_name": {"eq": " "}', id="blank-list-with-eq"),
    pytest.param("verified=[any]", '"external"', id="bracketed-wildcard"),
    pytest.param("gpu_name=[RTX_3060", '"gpu_name": {"eq": "RTX 3060"}', id="unclosed-bracket"),
    pytest.param("gpu_name=RTX_3060]", '"gpu_name": {"eq": "RTX 3060"}', id="stray-bracket"),
    pytest.param('gpu_name=""', '"gpu_name": {"eq": ""}', id="empty-quoted"),
    pytest.param('gpu_name in ["",RTX_3060]', '"gpu_name": {"in": ["", "RTX 3060"]}', id="empty-element"),
    pytest.param("gpu_ram>=nan", '"gpu_ram": {"gte": NaN}', id="nan"),
    pytest.param("gpu_ram>=inf", '"gpu_ram": {"gte": Infinity}', id="inf"),
    pytest.param("duration>=-inf", '"duration": {"gte": -Infinity}', id="minus-inf"),
    pytest.param("driver_version>=1..2", '"driver_version": {"gte": 1000002}', id="driver-empty-part"),
    pytest.param("driver_version>=5_35.1.1", '"driver_version": {"gte": 535001001}', id="driver-underscore"),
    pytest.param(
        "driver_version>=1.2.3456",
        '"driver_version": {"gte": 10023456}',
        id="driver-long-part-same-as-10.23.456",
    ),
    pytest.param("driver_version>=-1.2.3", '"driver_version": {"gte": -1002003}', id="driver-negative"),
]


def test_corpus_is_large_enough() -> None:
    """The differential corpus keeps at least 120 queries, 30 of them invalid."""
    assert len(VALID) + len(EXTRA) + len(INVALID) + len(UNKNOWN) + len(GARBAGE) >= 120
    assert len(INVALID) >= 30
    assert len(set(VALID)) == len(VALID)
    assert len(set(INVALID)) == len(INVALID)


@pytest.mark.parametrize("text", VALID)
def test_valid_query_matches_official(text: str, official: Any) -> None:
    """A query the official CLI accepts gives exactly its filter: same keys, order, values and types."""
    ours = query.parse_query(text)
    theirs = official(text)
    assert theirs.err == ""
    assert ours == theirs.filter
    assert dumps(ours) == dumps(theirs.filter)


@pytest.mark.parametrize("text", VALID)
def test_valid_query_without_defaults_matches_official(text: str, official: Any) -> None:
    """With defaults off our filter equals what `vastai search offers -n` sends."""
    ours = query.parse_query(text, defaults=False)
    theirs = official(text, "-n")
    assert dumps(ours) == dumps(theirs.filter)


@pytest.mark.parametrize("text", EXTRA)
def test_documented_extra_fields_match_official(text: str, official: Any) -> None:
    """hosting_type, os_version and reliability2 are sent as the official CLI sends them (it only warns)."""
    ours = query.parse_query(text)
    theirs = official(text)
    assert "Unrecognized field" in theirs.err
    assert dumps(ours) == dumps(theirs.filter)


@pytest.mark.parametrize("text", INVALID)
def test_invalid_query_is_rejected_like_official(text: str, official: Any) -> None:
    """A query the official CLI refuses (or crashes on) raises QueryError here."""
    theirs = official(text)
    assert theirs.body is None, f"official CLI accepted {text!r}: {theirs.body}"
    with pytest.raises(errors.QueryError):
        query.parse_query(text)


@pytest.mark.parametrize(("text", "field"), UNKNOWN)
def test_unknown_field_is_rejected_though_official_warns(text: str, field: str, official: Any) -> None:
    """An unknown field name raises QueryError naming it, where the official CLI only warns and sends it."""
    theirs = official(text)
    assert f"Unrecognized field: {field}," in theirs.err
    assert theirs.body is not None
    with pytest.raises(errors.QueryError, match=f"unknown field '{field}'"):
        query.parse_query(text)


@pytest.mark.parametrize(("text", "fragment"), GARBAGE)
def test_garbage_the_official_cli_sends_is_rejected(text: str, fragment: str, official: Any) -> None:
    """A query the official CLI turns into a wrong or non-JSON filter raises QueryError here."""
    theirs = official(text)
    assert theirs.err == ""
    assert fragment in json.dumps(theirs.body)
    with pytest.raises(errors.QueryError):
        query.parse_query(text)


# Values of the wrong type for a field the official field table types: it sends them as strings (the
# server then matches nothing); we refuse them naming the field (see the module docstring).
WRONG_TYPE = [
    pytest.param("num_gpus=lots", "num_gpus needs an integer, not 'lots'", id="int-word"),
    pytest.param("num_gpus>=1.5", "num_gpus needs an integer, not '1.5'", id="int-fraction"),
    pytest.param("num_gpus=null", "num_gpus needs an integer, not None", id="int-null"),
    pytest.param("num_gpus in [1,two]", "num_gpus needs an integer, not 'two'", id="int-list-element"),
    pytest.param("compute_cap>=8.0", "compute_cap needs an integer, not '8.0'", id="compute-cap"),
    pytest.param("reliability>abc", "reliability needs a number, not 'abc'", id="float-word"),
    pytest.param("reliability>nan", "reliability needs a number, not 'nan'", id="float-nan"),
    pytest.param("dph<1_000", "dph_total needs a number, not '1 000'", id="float-alias-underscore"),
    pytest.param("cuda_vers>=twelve", "cuda_max_good needs a number, not 'twelve'", id="float-alias"),
    pytest.param("inet_down>=fast", "inet_down needs a number, not 'fast'", id="inet-down"),
    pytest.param("datacenter=yes", "datacenter needs true or false, not 'yes'", id="bool-word"),
    pytest.param("verified=1", "verified needs true or false, not '1'", id="bool-digit"),
    pytest.param("static_ip=TRUE", "static_ip needs true or false, not 'TRUE'", id="bool-upper"),
]


def test_field_types_are_the_official_table() -> None:
    """Our int/float/bool field sets are exactly the types in `vastai search offers --help`'s field table."""
    import re

    from vastai.cli.commands import offers

    epilog = offers.search__offers.mysignature.epilog or ""
    table = dict(re.findall(r"^ {4}([a-z_0-9]+):? +(int|float|Float|bool|string) ", epilog, re.MULTILINE))
    assert len(table) >= 45
    by_type: dict[str, set[str]] = {}
    for name, kind in table.items():
        by_type.setdefault(kind.lower(), set()).add(fields.ALIASES.get(name, name))
    assert by_type["int"] == fields.INT_FIELDS
    assert by_type["float"] == fields.FLOAT_FIELDS
    assert by_type["bool"] == fields.BOOL_FIELDS


@pytest.mark.parametrize(("text", "message"), WRONG_TYPE)
def test_wrong_type_is_rejected_naming_the_field(text: str, message: str, official: Any) -> None:
    """A value of the wrong type for a typed field raises QueryError naming the field; the CLI sends it."""
    theirs = official(text)
    assert theirs.body is not None, theirs.failure
    with pytest.raises(errors.QueryError) as caught:
        query.parse_query(text)
    assert caught.value.problem.startswith(message)
    assert caught.value.variable == "VAST_SEARCH_QUERY"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("num_gpus=-1 num_gpus<=+8 machine_id in [1,2]", id="ints"),
        pytest.param("reliability>.98 dph<1e-1 gpu_frac=1 pci_gen>=4", id="floats"),
        pytest.param("verified=True datacenter=false has_avx=true", id="bools"),
        pytest.param("gpu_name=lots ubuntu_version>=22.04 cluster_id=null", id="untyped-fields"),
    ],
)
def test_values_of_the_right_type_pass(text: str, official: Any) -> None:
    """Values that fit the field table still give exactly the official filter."""
    assert dumps(query.parse_query(text)) == dumps(official(text).filter)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param('{"num_gpus": {"gte": "lots"}}', "num_gpus", id="int-text"),
        pytest.param('{"num_gpus": {"eq": true}}', "num_gpus", id="int-bool"),
        pytest.param('{"num_gpus": {"in": [1, 2.5]}}', "num_gpus", id="int-list"),
        pytest.param('{"reliability": {"gt": "abc"}}', "reliability", id="float-text"),
        pytest.param('{"dph_total": {"lt": null}}', "dph_total", id="float-null"),
        pytest.param('{"verified": {"eq": "yes"}}', "verified", id="bool-text"),
    ],
)
def test_json_filter_wrong_type_is_rejected(text: str, field: str) -> None:
    """The JSON form gets the same type checks, the message naming the field."""
    with pytest.raises(errors.QueryError) as caught:
        query.load_filter(text)
    assert caught.value.problem.startswith(f"{field} needs ")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param('{"gpu_name": {"eq": NaN}}', "NaN is not a number", id="nan"),
        pytest.param('{"dph_total": {"lt": Infinity}}', "Infinity is not a number", id="infinity"),
        pytest.param('{"gpu_nmae": {"eq": "RTX 4090"}}', "unknown field 'gpu_nmae'", id="field-typo"),
        pytest.param('{"num_gpus": {"bogus": 2}}', "unknown operator 'bogus'", id="operator-typo"),
    ],
)
def test_json_filter_that_would_be_silently_wrong_is_rejected(text: str, says: str) -> None:
    """The JSON form is checked like the query form: a misspelt field or operator would drop the
    constraint without a word, and NaN or Infinity cannot be sent (exit 2, not a crash later)."""
    with pytest.raises(errors.QueryError, match=says):
        query.load_filter(text)


def test_json_filter_right_types_pass() -> None:
    """Numbers as JSON numbers or numeric strings, and JSON booleans, are accepted as given."""
    text = '{"num_gpus": {"gte": 1, "lte": "8"}, "reliability": {"gt": 0.9}, "verified": {"eq": true}}'
    assert dumps(query.load_filter(text)) == text[:-1] + ', "rentable": {"eq": true}}'


def test_suggestion_is_left_out_when_nothing_is_close() -> None:
    """An unknown field with no near neighbour gets no 'did you mean'."""
    with pytest.raises(errors.QueryError) as caught:
        query.parse_query("zzzz=1")
    assert caught.value.problem == "unknown field 'zzzz'"


def test_aliases_are_accepted_and_suggested() -> None:
    """Aliases parse to their canonical field, and a typo of one is offered the alias."""
    assert query.parse_query("dph<1", defaults=False) == {"dph_total": {"lt": "1"}}
    with pytest.raises(errors.QueryError, match=r"did you mean 'dlperf_usd'\?"):
        query.parse_query("dlperf_uds>1")


def test_multiplied_values_are_floats() -> None:
    """gpu_ram and duration are sent as floats in MB and seconds; other numbers stay strings."""
    result = query.parse_query("gpu_ram>=0.1 duration>=1 num_gpus=1", defaults=False)
    assert result == {"gpu_ram": {"gte": 100.0}, "duration": {"gte": 86400.0}, "num_gpus": {"eq": "1"}}
    assert all(isinstance(v, float) and math.isfinite(v) for v in result["gpu_ram"].values())


# --- search body


def test_search_body_matches_captured_wire_request() -> None:
    """The body of the first docs/vast-api.md §10 capture is byte-for-byte what vastai 1.9.1 sent."""
    body = query.search_body(query.parse_query("gpu_name=RTX_3060 num_gpus=1 reliability>0.98"))
    captured = (
        '{"verified": {"eq": true}, "external": {"eq": false}, "rentable": {"eq": true}, '
        '"gpu_name": {"eq": "RTX 3060"}, "num_gpus": {"eq": "1"}, "reliability": {"gt": "0.98"}, '
        '"order": [["score", "desc"]], "type": "on-demand", "allocated_storage": 5.0}'
    )
    assert dumps(body) == captured


def test_search_body_with_order_and_limit_matches_capture() -> None:
    """docs/vast-api.md §10, second capture: order dph+ and limit 10 come before allocated_storage."""
    body = query.search_body(
        query.parse_query("gpu_name=RTX_3060 num_gpus=1 reliability>0.98 dph<0.5 geolocation in [US,CA]"),
        order=[["dph_total", "asc"]],
        limit=10,
    )
    captured = (
        '{"verified": {"eq": true}, "external": {"eq": false}, "rentable": {"eq": true}, '
        '"gpu_name": {"eq": "RTX 3060"}, "num_gpus": {"eq": "1"}, "reliability": {"gt": "0.98"}, '
        '"dph_total": {"lt": "0.5"}, "geolocation": {"in": ["US", "CA"]}, '
        '"order": [["dph_total", "asc"]], "type": "on-demand", "limit": 10, "allocated_storage": 5.0}'
    )
    assert dumps(body) == captured


@pytest.mark.parametrize(
    ("flags", "kwargs"),
    [
        pytest.param((), {}, id="defaults"),
        pytest.param(("--type", "interruptible"), {"offer_type": "interruptible"}, id="interruptible-is-bid"),
        pytest.param(("-b",), {"offer_type": "bid"}, id="bid"),
        pytest.param(("-r",), {"offer_type": "reserved"}, id="reserved"),
        pytest.param(("--limit", "25"), {"limit": 25}, id="limit"),
        pytest.param(("--limit", "0"), {"limit": 0}, id="zero-limit-omitted"),
        pytest.param(("--storage", "20"), {"allocated_storage": 20}, id="storage-float"),
        pytest.param(
            ("--order=dph+,num_gpus-", "--limit", "3", "-i", "--storage", "12.5"),
            {"order": [["dph_total", "asc"], ["num_gpus", "desc"]], "limit": 3, "offer_type": "interruptible"}
            | {"allocated_storage": 12.5},
            id="everything",
        ),
    ],
)
def test_search_body_matches_official(flags: tuple[str, ...], kwargs: dict[str, Any], official: Any) -> None:
    """search_body gives the body `vastai search offers` posts for the same flags, key order included."""
    text = "gpu_name=RTX_3060 num_gpus=1"
    theirs = official(text, *flags)
    assert dumps(query.search_body(query.parse_query(text), **kwargs)) == dumps(theirs.body)


def test_search_body_does_not_alias_the_inputs() -> None:
    """The body is a new dict; the filter and order passed in are left as they were."""
    flt = {"num_gpus": {"eq": "1"}}
    order = [["score", "desc"]]
    body = query.search_body(flt, order=order)
    body["order"][0][1] = "asc"
    body["extra"] = 1
    assert flt == {"num_gpus": {"eq": "1"}}
    assert order == [["score", "desc"]]


# --- load_filter


def test_load_filter_json_form_is_returned_as_given_plus_rentable() -> None:
    """A console JSON filter is used verbatim, key order kept; only ``rentable eq true`` is added (the
    server does not add it, and a taken offer cannot be rented)."""
    text = '  {"gpu_name": {"in": ["RTX 4090"]}, "num_gpus": {"gte": 1}, "dph_total": {"lt": 0.5}}'
    result = query.load_filter(text)
    assert dumps(result) == (
        '{"gpu_name": {"in": ["RTX 4090"]}, "num_gpus": {"gte": 1}, "dph_total": {"lt": 0.5},'
        ' "rentable": {"eq": true}}'
    )


@pytest.mark.parametrize(
    "text", ['{"num_gpus": {"gte": 1}, "rentable": {"eq": false}}', '{"rented": {"eq": false}}']
)
def test_load_filter_json_form_naming_rentable_or_rented_is_left_alone(text: str) -> None:
    assert dumps(query.load_filter(text)) == text


def test_load_filter_query_form_gets_defaults() -> None:
    """A query string is parsed like the CLI, defaults first."""
    assert dumps(query.load_filter("num_gpus=1")) == dumps({**DEFAULTS, "num_gpus": {"eq": "1"}})


@pytest.mark.parametrize("text", [pytest.param("", id="empty"), pytest.param("   ", id="blank")])
def test_load_filter_empty_gives_defaults(text: str) -> None:
    """An empty VAST_SEARCH_QUERY means just the CLI's default filters."""
    assert dumps(query.load_filter(text)) == dumps(DEFAULTS)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param('{"num_gpus": {"eq": 1}', "invalid JSON", id="truncated"),
        pytest.param("{num_gpus: 1}", "invalid JSON", id="not-json"),
        pytest.param('{"num_gpus": 1}', "'num_gpus' must map operators", id="value-not-object"),
        pytest.param('{"gpu_name": ["RTX 4090"]}', "'gpu_name' must map operators", id="value-list"),
        pytest.param('{"order": {"eq": 1}}', "'order' is not a filter field", id="body-key"),
        pytest.param("gpu_name=RTX 3060", "unexpected text", id="bad-query-form"),
    ],
)
def test_load_filter_rejects_bad_input(text: str, match: str) -> None:
    """A malformed JSON filter or query raises QueryError for VAST_SEARCH_QUERY."""
    with pytest.raises(errors.QueryError, match=match) as caught:
        query.load_filter(text)
    assert caught.value.variable == "VAST_SEARCH_QUERY"


# --- merge_filters


def test_merge_filters_adds_new_fields_last() -> None:
    """A constraint on a new field is appended after the existing ones."""
    merged = query.merge_filters({"num_gpus": {"eq": "1"}}, {"dph_total": {"lte": 0.4}})
    assert dumps(merged) == '{"num_gpus": {"eq": "1"}, "dph_total": {"lte": 0.4}}'


def test_merge_filters_merges_per_operator_later_wins() -> None:
    """On a shared field other operators are kept, the same operator is replaced, position is kept."""
    base = {"dph_total": {"gte": "0.1", "lte": "1.0"}, "num_gpus": {"eq": "1"}}
    merged = query.merge_filters(base, {"dph_total": {"lte": 0.4}, "host_id": {"notin": [7, 9]}})
    assert dumps(merged) == (
        '{"dph_total": {"gte": "0.1", "lte": 0.4}, "num_gpus": {"eq": "1"}, "host_id": {"notin": [7, 9]}}'
    )


def test_merge_filters_leaves_inputs_alone() -> None:
    """Neither the base filter nor the extra constraints are changed."""
    base = {"dph_total": {"lte": "1.0"}}
    extra = {"dph_total": {"gte": 0.1}}
    query.merge_filters(base, extra)
    assert base == {"dph_total": {"lte": "1.0"}}
    assert extra == {"dph_total": {"gte": 0.1}}


def test_merge_filters_rejects_non_constraint_values() -> None:
    """A field whose value is not an operator object raises QueryError."""
    with pytest.raises(errors.QueryError, match="'num_gpus'"):
        query.merge_filters({"num_gpus": 1}, {})
