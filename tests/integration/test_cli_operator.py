"""Operator commands as a user runs them: help, `sim`, `blacklist` on Redis alone, `query --as-run`."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from provisioner import selection, wiring
from provisioner.settings import load_settings
from tests.procs import bare_env, cli, free_port
from tests.redis_server import run_redis

pytestmark = pytest.mark.integration


POD = {
    "POD_NAME": "vast-pod-0",
    "VAST_API_KEY": "test-key-0123456789",
    "VAST_TEMPLATE_NAME": "tmpl",
    "VAST_TEMPLATE_IMAGE": "vastai/test-workload:1.0",
    "VAST_SEARCH_QUERY": "gpu_name=RTX_4090 num_gpus=1",
    "VAST_DISK_GB": "42",
    "VAST_MAX_PRICE": "0.5",
    "VAST_MIN_RELIABILITY": "0.97",
    "PROXY_PORTS": "3000:8000,3001:8001",
}


# ---------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command", [[], ["run"], ["status"], ["query"], ["render"], ["reap"], ["offers"], ["blacklist", "ban"]]
)
def test_help_has_no_type_placeholders(tmp_path: Path, command: list[str]) -> None:
    """No `<bool>` or `<list[...]>` tags in any command's help."""
    result = cli(bare_env(tmp_path), *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "<bool>" not in result.stdout and "<list[" not in result.stdout, result.stdout


def test_reap_help_paragraphs_wrap_whole(tmp_path: Path) -> None:
    """`reap --help` re-wraps its paragraphs: no line of a paragraph but its last is cut short."""
    text = cli(bare_env(tmp_path), "reap", "--help").stdout
    description = text.split("Options:")[0].split("\n\n")[1:]
    assert any("not the pod's own settings" in " ".join(p.split()) for p in description), text
    for paragraph in description:
        lines = [ln for ln in paragraph.splitlines() if ln.strip()]
        assert all(len(ln) >= 60 for ln in lines[:-1]), text


def test_sim_takes_the_simulators_own_flags(tmp_path: Path) -> None:
    """`provisioner sim --help` shows the simulator's flags (rate-limit shaping too), port 8765 by default."""
    text = cli(bare_env(tmp_path), "sim", "--help").stdout
    for flag in (
        "--rate-limit-scale",
        "--rate-limit-override",
        "--rate-limit-body",
        "--rate-limit-retry-after",
        "--rate-limit-penalties",
        "--seed",
        "--api-key",
    ):
        assert flag in text, text
    assert "default 8765" in text


def test_sim_on_a_busy_port_names_the_address(tmp_path: Path) -> None:
    """`provisioner sim --port P` with P taken: exit 1, one line naming --port and the address."""
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        result = cli(bare_env(tmp_path), "sim", "--port", str(port))
    assert result.returncode == 1
    assert (
        result.stderr
        == f"provisioner sim: --port: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


# ---------------------------------------------------------------- blacklist


@pytest.mark.parametrize("args", [["ban", "--", "-5"], ["ban", "0"], ["unban", "--", "-5"]])
def test_blacklist_ids_must_be_positive(tmp_path: Path, args: list[str]) -> None:
    """`blacklist ban -- -5` (or 0) is refused before Redis is asked: exit 2, no traceback."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    result = cli(bare_env(tmp_path, BLACKLIST_REDIS_URL=closed), "blacklist", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Invalid value for 'HOST'" in result.stderr and "greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["ban", "5", "--ttl", "10000000000000000"], "Invalid value for '--ttl'"),
        (["ban", "99999999999999999999999"], "Invalid value for 'HOST'"),
    ],
)
def test_blacklist_numbers_past_what_redis_holds_are_refused(
    tmp_path: Path, args: list[str], says: str
) -> None:
    """A TTL Redis cannot store (it failed half-way, leaving a ban in the index for good) or a host
    id past any real one is refused before Redis is asked: exit 2, no traceback."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    result = cli(bare_env(tmp_path, BLACKLIST_REDIS_URL=closed), "blacklist", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


def test_blacklist_needs_only_redis_and_records_the_operator(tmp_path: Path) -> None:
    """With only BLACKLIST_REDIS_URL set, bans work; each is recorded as operator:<--operator or $USER>,
    and `query --as-run` with the blacklist on leaves the banned host out of the search."""
    with run_redis(tmp_path) as redis:
        env = bare_env(tmp_path, BLACKLIST_REDIS_URL=redis.url, USER="carol")
        by_user = cli(env, "blacklist", "ban", "77", "--reason", "flaky")
        assert by_user.returncode == 0, by_user.stderr
        assert by_user.stdout == "banned host 77 for 604800s: flaky (by operator:carol)\n"
        named = cli(env, "blacklist", "ban", "78", "--machine", "--ttl", "60", "--operator", "alice")
        assert named.returncode == 0, named.stderr
        listed = json.loads(cli(env, "blacklist", "list", "--json").stdout)
        assert {(b["kind"], b["ident"], b["by"]) for b in listed} == {
            ("host", 77, "operator:carol"),
            ("machine", 78, "operator:alice"),
        }
        as_run = cli({**env, **POD, "BLACKLIST_ENABLED": "true"}, "query", "--as-run")
        assert as_run.returncode == 0, as_run.stderr
        body = json.loads(as_run.stdout)
        assert body["host_id"] == {"notin": [77]} and body["machine_id"] == {"notin": [78]}


# ---------------------------------------------------------------- query


def test_query_as_run_prints_what_run_sends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`query --as-run` is the body `run` sends: VAST_DISK_GB, price, reliability and port filters."""
    env = bare_env(tmp_path, **POD)
    result = cli(env, "query", "--as-run")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["allocated_storage"] == 42
    assert body["gpu_name"] == {"eq": "RTX 4090"}
    assert body["dph_total"] == {"lte": 0.5}
    assert body["reliability"] == {"gte": 0.97}
    assert body["direct_port_count"] == {"gte": 2}
    for name, value in POD.items():
        monkeypatch.setenv(name, value)
    assert body == json.loads(json.dumps(wiring.build_search_body(load_settings())(selection.Standing())))
    # a query given on the command line replaces VAST_SEARCH_QUERY, the settings' filters stay
    other = json.loads(cli(env, "query", "--as-run", "num_gpus=2").stdout)
    assert other["num_gpus"] == {"eq": "2"} and "gpu_name" not in other and other["allocated_storage"] == 42
    # without --as-run: the query alone, the official parser's 5 GB default
    plain = json.loads(cli(env, "query", "num_gpus=2").stdout)
    assert plain["allocated_storage"] == 5 and "dph_total" not in plain


def test_query_as_run_needs_the_pod_settings(tmp_path: Path) -> None:
    """`query --as-run` without the pod's settings: exit 2, one line naming every missing variable."""
    result = cli(bare_env(tmp_path), "query", "--as-run")
    assert result.returncode == 2
    assert result.stderr.startswith("provisioner: POD_NAME, VAST_API_KEY") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["status", "--admin-url", "http://[::1"], "--admin-url: 'http://[::1' is not a valid URL"),
        (["status", "--admin-url", "http://127.0.0.1:99999"], "Port out of range"),
        (["status", "--admin-url", "ftp://x"], "is not an http(s) URL"),
        (["demo", "--port", "70000"], "Invalid value for '--port'"),
    ],
)
def test_operator_arguments_that_cannot_work_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    """An admin URL that does not parse or a port out of range is one line and exit 2, not a traceback."""
    result = cli(bare_env(tmp_path), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr + result.stdout
