"""rendering: nginx config text from listeners and upstreams, and the validation that guards it."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from provisioner import errors, model, rendering

STATE = Path("/var/run/provisioner")
ONE = (model.PortMap(3000, 8000),)
TWO = (model.PortMap(3000, 8000), model.PortMap(3001, 8001))


def config(**overrides: Any) -> rendering.ProxyConfig:
    values: dict[str, Any] = {
        "listeners": ONE,
        "state_dir": STATE,
        "max_body_size": "10M",
        "proxy_timeout_s": 600,
    }
    values.update(overrides)
    return rendering.ProxyConfig(**values)


def up(listen_port: int, host: str, port: int) -> model.Upstream:
    return model.Upstream(listen_port=listen_port, host=host, port=port)


def server_blocks(text: str) -> list[str]:
    """The text of each top-level ``server { ... }`` block inside ``http``."""
    return re.findall(r"\n    server \{\n(.*?)\n    \}\n", text, flags=re.S)


def directives(text: str, name: str) -> list[str]:
    return [m.strip() for m in re.findall(rf"^\s*{name} ([^;]*);", text, flags=re.M)]


# ---------------------------------------------------------------- shapes


def test_no_upstreams_serves_503_json_everywhere() -> None:
    """Without upstreams every listener returns 503 + JSON + Retry-After and no upstream block exists."""
    text = rendering.render_nginx_conf(config(listeners=TWO, retry_after_s=7), None, reason="renting")
    assert "upstream listener_" not in text
    assert "proxy_pass" not in text
    blocks = server_blocks(text)
    assert len(blocks) == 2
    for block, port in zip(blocks, (3000, 3001), strict=True):
        assert f"listen 0.0.0.0:{port};" in block
        assert "default_type application/json;" in block
        assert "add_header Retry-After 7 always;" in block
        assert """return 503 '{"status":"unavailable","reason":"renting"}';""" in block


def test_main_context_is_complete_and_under_state_dir() -> None:
    """pid, error log, events, temp paths and the JSON access log are all set, paths under state_dir."""
    text = rendering.render_nginx_conf(config(), None)
    assert "worker_processes 1;" in text
    assert f"pid {STATE}/nginx.pid;" in text
    assert "error_log stderr warn;" in text
    assert "worker_connections 1024;" in text
    assert not directives(text, "daemon")
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f"{kind}_temp_path {STATE}/{kind}_temp;" in text
    assert "access_log /dev/stdout provisioner_json buffer=4k flush=1s;" in text
    assert "escape=json" in text
    for key in ("time", "remote_addr", "method", "uri", "status", "bytes", "request_time"):
        assert f'"{key}":' in text
    for key in ("upstream_addr", "upstream_status", "upstream_response_time"):
        assert f'"{key}":' in text
    assert "map $http_upgrade $connection_upgrade" in text
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s*default upgrade;\s*''\s*'';", text)


def test_access_log_off() -> None:
    """access_log=False turns the access log off entirely."""
    text = rendering.render_nginx_conf(config(access_log=False), None)
    assert "access_log off;" in text
    assert "log_format" not in text


def test_one_upstream_proxies_with_streaming_keepalive_and_no_retries() -> None:
    """A listener with an upstream proxies to IP:port with keepalive, no buffering and no retries."""
    cfg = config(proxy_timeout_s=900, connect_timeout_s=5, keepalive=16, max_body_size="512k")
    text = rendering.render_nginx_conf(cfg, {3000: up(3000, "203.0.113.9", 41234)})
    assert re.search(
        r"upstream listener_3000 \{\s*server 203\.0\.113\.9:41234 max_fails=0;(\s*#[^\n]*)*\s*keepalive 16;",
        text,
    )
    (block,) = server_blocks(text)
    expected = [
        "listen 0.0.0.0:3000;",
        "client_max_body_size 512k;",
        "proxy_pass http://listener_3000;",
        "proxy_http_version 1.1;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Host $host;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $forwarded_proto;",
        "proxy_set_header X-Forwarded-Host $host;",
        "proxy_set_header X-Forwarded-Port $server_port;",
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_cache off;",
        "proxy_connect_timeout 5s;",
        "proxy_read_timeout 900s;",
        "proxy_send_timeout 900s;",
        "proxy_next_upstream off;",
    ]
    for line in expected:
        assert line in block, line
    assert "return 503" not in block


def upstream_block(text: str) -> str:
    (block,) = re.findall(r"\n    upstream listener_3000 \{\n(.*?)\n    \}\n", text, flags=re.S)
    return str(block)


def test_default_pool_covers_256_concurrent_requests() -> None:
    """Defaults: a pool of 256 idle connections per worker, recycled rarely, closed idle after 4 s."""
    text = rendering.render_nginx_conf(config(), {3000: up(3000, "203.0.113.9", 1)})
    block = upstream_block(text)
    assert directives(block, "keepalive") == ["256"]
    assert directives(block, "keepalive_requests") == ["100000"]
    assert directives(block, "keepalive_time") == ["12h"]
    assert directives(block, "keepalive_timeout") == ["4s"]
    assert directives(text, "worker_processes") == ["1"]
    assert directives(text, "worker_connections") == ["1024"]
    assert directives(text, "worker_rlimit_nofile") == ["2048"]
    # client side: long-lived client connections are not closed every 1,000 requests either
    outside = text.replace(block, "")
    assert directives(outside, "keepalive_requests") == ["100000"]
    assert directives(outside, "keepalive_time") == ["12h"]
    assert directives(outside, "keepalive_timeout") == ["75s"]


@pytest.mark.parametrize(
    ("overrides", "pool", "connections", "workers"),
    [
        pytest.param({"max_concurrency": 1}, 1, 1024, 1, id="tiny-keeps-1024-connections"),
        pytest.param({"max_concurrency": 1000}, 1000, 4000, 1, id="1000-concurrent"),
        pytest.param({"max_concurrency": 4096}, 4096, 16384, 1, id="largest"),
        pytest.param({"max_concurrency": 64, "worker_processes": 4}, 64, 1024, 4, id="four-workers"),
        pytest.param({"keepalive": 16, "worker_connections": 512}, 16, 512, 1, id="explicit-pool-and-limit"),
    ],
)
def test_pool_and_limits_follow_max_concurrency(
    overrides: dict[str, int], pool: int, connections: int, workers: int
) -> None:
    """The pool is max_concurrency per worker; worker_connections 4x it (min 1024); files 2x that."""
    text = rendering.render_nginx_conf(config(**overrides), {3000: up(3000, "203.0.113.9", 1)})
    assert directives(upstream_block(text), "keepalive") == [str(pool)]
    assert directives(text, "worker_connections") == [str(connections)]
    assert directives(text, "worker_rlimit_nofile") == [str(2 * connections)]
    assert directives(text, "worker_processes") == [str(workers)]


@pytest.mark.parametrize(
    ("cap", "expected"),
    [pytest.param(None, "32768", id="no-cap"), pytest.param(20000, "20000", id="capped-at-hard-limit")],
)
def test_open_file_limit_is_capped_at_the_hard_limit(cap: int | None, expected: str) -> None:
    """worker_rlimit_nofile never asks for more than the hard limit nginx may raise to."""
    text = rendering.render_nginx_conf(config(max_concurrency=4096, max_open_files=cap), None)
    assert directives(text, "worker_rlimit_nofile") == [expected]


def test_upstream_idle_timeout_is_configurable() -> None:
    """upstream_keepalive_timeout_s sets the upstream pool's keepalive_timeout."""
    cfg = config(upstream_keepalive_timeout_s=55)
    text = rendering.render_nginx_conf(cfg, {3000: up(3000, "203.0.113.9", 1)})
    assert directives(upstream_block(text), "keepalive_timeout") == ["55s"]


def test_keepalive_zero_disables_upstream_keepalive() -> None:
    """keepalive=0 renders no keepalive directives and sends "Connection: close" on plain requests."""
    text = rendering.render_nginx_conf(config(keepalive=0), {3000: up(3000, "203.0.113.9", 1)})
    assert not re.search(r"^\s*keepalive \d+;", text, flags=re.M)
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s*default upgrade;\s*''\s*close;", text)


def test_two_listeners_each_get_their_own_upstream() -> None:
    """PROXY_PORTS: each listener proxies to its own upstream."""
    upstreams = {3000: up(3000, "203.0.113.9", 41000), 3001: up(3001, "203.0.113.9", 41001)}
    text = rendering.render_nginx_conf(config(listeners=TWO), upstreams)
    assert "server 203.0.113.9:41000 max_fails=0;" in text
    assert "server 203.0.113.9:41001 max_fails=0;" in text
    first, second = server_blocks(text)
    assert "listen 0.0.0.0:3000;" in first
    assert "proxy_pass http://listener_3000;" in first
    assert "listen 0.0.0.0:3001;" in second
    assert "proxy_pass http://listener_3001;" in second


def test_listener_without_upstream_keeps_serving_503() -> None:
    """With two listeners and one upstream, the other listener still answers 503."""
    text = rendering.render_nginx_conf(config(listeners=TWO), {3001: up(3001, "203.0.113.9", 41001)})
    first, second = server_blocks(text)
    assert "return 503" in first
    assert "proxy_pass http://listener_3001;" in second
    assert "upstream listener_3000" not in text


def test_ipv6_upstream_is_bracketed_and_normalised() -> None:
    """An IPv6 upstream is written in brackets, lower-case and compressed."""
    text = rendering.render_nginx_conf(config(), {3000: up(3000, "2606:4700:0:0::1111", 8443)})
    assert "server [2606:4700::1111]:8443 max_fails=0;" in text


def test_ipv6_listen_address_is_bracketed() -> None:
    """An IPv6 listen address renders as [addr]:port."""
    text = rendering.render_nginx_conf(config(listen_address="::"), None)
    assert "listen [::]:3000;" in text


def test_an_ipv4_mapped_listen_address_renders_as_ipv4() -> None:
    """``::ffff:127.0.0.1`` is a valid address, but nginx cannot bind it (EINVAL, even under -t): it
    renders in its IPv4 form, which binds the same socket address."""
    text = rendering.render_nginx_conf(config(listen_address="::ffff:127.0.0.1"), None)
    assert "listen 127.0.0.1:3000;" in text and "ffff" not in text


def test_upstream_headers_are_set_sorted_and_quoted() -> None:
    """upstream_headers become quoted proxy_set_header lines, in name order."""
    headers = {"X-Shared-Secret": "s3cr3t value", "Authorization": "Bearer abc.def"}
    text = rendering.render_nginx_conf(config(upstream_headers=headers), {3000: up(3000, "203.0.113.9", 1)})
    auth = text.index('proxy_set_header Authorization "Bearer abc.def";')
    secret = text.index('proxy_set_header X-Shared-Secret "s3cr3t value";')
    assert auth < secret


def test_rendering_is_deterministic() -> None:
    """The same inputs give the same text (the reload decision compares texts)."""
    cfg = config(listeners=TWO, upstream_headers={"B": "2", "A": "1"})
    upstreams = {3001: up(3001, "203.0.113.9", 2), 3000: up(3000, "203.0.113.9", 1)}
    assert rendering.render_nginx_conf(cfg, upstreams) == rendering.render_nginx_conf(cfg, dict(upstreams))


@pytest.mark.parametrize(
    ("reason", "rendered"),
    [
        pytest.param("starting", "starting", id="plain"),
        pytest.param("instance 42 loading: 3 of 5", "instance 42 loading: 3 of 5", id="spaces-colon"),
        pytest.param("a/b", "unavailable", id="slash"),
        pytest.param("no-offers_found.v2", "no-offers_found.v2", id="punctuation"),
        pytest.param("x'; include /etc/passwd; '", "unavailable", id="quote-injection"),
        pytest.param('x"}', "unavailable", id="json-breakout"),
        pytest.param("Upper", "unavailable", id="upper-case"),
        pytest.param("a\nb", "unavailable", id="newline"),
        pytest.param("", "unavailable", id="empty"),
        pytest.param("x" * 65, "unavailable", id="too-long"),
    ],
)
def test_reason_is_sanitised(reason: str, rendered: str) -> None:
    """The 503 reason is used only when it matches the safe alphabet; else it becomes 'unavailable'."""
    text = rendering.render_nginx_conf(config(), None, reason=reason)
    assert f""""reason":"{rendered}"}}';""" in text


# ---------------------------------------------------------------- injection


BAD_CONFIGS: list[Any] = [
    pytest.param({"upstreams": {3000: up(3000, "1.2.3.4; include /etc/passwd", 1)}}, id="host-directive"),
    pytest.param({"upstreams": {3000: up(3000, "example.com", 1)}}, id="host-name"),
    pytest.param({"upstreams": {3000: up(3000, "1.2.3.4\n", 1)}}, id="host-newline"),
    pytest.param({"upstreams": {3000: up(3000, "fe80::1%eth0", 1)}}, id="host-scope-id"),
    pytest.param({"upstreams": {3000: up(3000, "0.0.0.0", 1)}}, id="host-unspecified"),
    pytest.param({"upstreams": {3000: up(3000, "1.2.3.4", 0)}}, id="port-0"),
    pytest.param({"upstreams": {3000: up(3000, "1.2.3.4", 70000)}}, id="port-70000"),
    pytest.param({"upstreams": {3000: up(3000, "1.2.3.4", "80; x")}}, id="port-string"),  # type: ignore[arg-type]
    pytest.param({"upstreams": {3000: up(3000, "1.2.3.4", True)}}, id="port-bool"),
    pytest.param({"upstreams": {3001: up(3001, "1.2.3.4", 1)}}, id="upstream-for-unknown-listener"),
    pytest.param({"upstreams": {3000: up(3001, "1.2.3.4", 1)}}, id="upstream-key-mismatch"),
    pytest.param({"listeners": (model.PortMap(0, 8000),)}, id="listen-port-0"),
    pytest.param({"listeners": (model.PortMap(70000, 8000),)}, id="listen-port-70000"),
    pytest.param({"listeners": (model.PortMap(3000, 0),)}, id="container-port-0"),
    pytest.param({"listeners": (model.PortMap(3000, 1), model.PortMap(3000, 2))}, id="listen-port-twice"),
    pytest.param({"listeners": ()}, id="no-listeners"),
    pytest.param({"max_body_size": "10M; foo"}, id="body-size-directive"),
    pytest.param({"max_body_size": "10T"}, id="body-size-unit"),
    pytest.param({"max_body_size": ""}, id="body-size-empty"),
    pytest.param({"max_body_size": "10M\n"}, id="body-size-newline"),
    pytest.param({"upstream_headers": {"X-A": "a;b"}}, id="header-value-semicolon"),
    pytest.param({"upstream_headers": {"X-A": "a\nproxy_pass x"}}, id="header-value-newline"),
    pytest.param({"upstream_headers": {"X-A": "$remote_addr"}}, id="header-value-variable"),
    pytest.param({"upstream_headers": {"X-A": 'a"b'}}, id="header-value-double-quote"),
    pytest.param({"upstream_headers": {"X-A": "a'b"}}, id="header-value-single-quote"),
    pytest.param({"upstream_headers": {"X-A": "a\\b"}}, id="header-value-backslash"),
    pytest.param({"upstream_headers": {"X-A": "a{b}"}}, id="header-value-brace"),
    pytest.param({"upstream_headers": {"X-A": "caf\u00e9"}}, id="header-value-non-ascii"),
    pytest.param({"upstream_headers": {"X-A": "a\tb"}}, id="header-value-tab"),
    pytest.param({"upstream_headers": {"X A": "1"}}, id="header-name-space"),
    pytest.param({"upstream_headers": {"X-A;": "1"}}, id="header-name-semicolon"),
    pytest.param({"upstream_headers": {"": "1"}}, id="header-name-empty"),
    pytest.param({"upstream_headers": {"Host": "evil"}}, id="header-name-reserved"),
    pytest.param({"upstream_headers": {"x-forwarded-for": "1.1.1.1"}}, id="header-name-reserved-lower"),
    pytest.param({"upstream_headers": {"X-A": "1", "x-a": "2"}}, id="header-name-twice"),
    pytest.param({"state_dir": Path("/tmp/a;b")}, id="state-dir-semicolon"),
    pytest.param({"state_dir": Path("/tmp/a b")}, id="state-dir-space"),
    pytest.param({"state_dir": Path("/tmp/a{b}")}, id="state-dir-brace"),
    pytest.param({"state_dir": Path("/tmp/$x")}, id="state-dir-variable"),
    pytest.param({"state_dir": Path("/tmp/a'b")}, id="state-dir-quote"),
    pytest.param({"state_dir": Path("/tmp/a\nb")}, id="state-dir-newline"),
    pytest.param({"state_dir": Path("relative/dir")}, id="state-dir-relative"),
    pytest.param({"state_dir": Path("/tmp/../etc")}, id="state-dir-dotdot"),
    pytest.param({"listen_address": "localhost"}, id="listen-address-name"),
    pytest.param({"listen_address": "0.0.0.0:80"}, id="listen-address-port"),
    pytest.param({"proxy_timeout_s": 0}, id="proxy-timeout-0"),
    pytest.param({"proxy_timeout_s": "600s; x"}, id="proxy-timeout-string"),
    pytest.param({"connect_timeout_s": 76}, id="connect-timeout-over-75"),
    pytest.param({"retry_after_s": -1}, id="retry-after-negative"),
    pytest.param({"keepalive": -1}, id="keepalive-negative"),
    pytest.param({"worker_connections": 1.5}, id="worker-connections-float"),
    pytest.param({"max_concurrency": 0}, id="max-concurrency-0"),
    pytest.param({"max_concurrency": 4097}, id="max-concurrency-over-limit"),
    pytest.param({"max_concurrency": True}, id="max-concurrency-bool"),
    pytest.param({"worker_processes": 0}, id="workers-0"),
    pytest.param({"worker_processes": "auto"}, id="workers-auto-string"),
    pytest.param({"worker_processes": 65}, id="workers-over-limit"),
    pytest.param({"upstream_keepalive_timeout_s": 0}, id="upstream-idle-0"),
    pytest.param({"max_open_files": "1024; x"}, id="open-files-string"),
    pytest.param({"upstream_keepalive_timeout_s": "4s; x"}, id="upstream-idle-string"),
]


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_injection_attempts_are_rejected(case: Mapping[str, Any]) -> None:
    """Every value that could smuggle a directive into the config raises NginxError."""
    fields = {k: v for k, v in case.items() if k != "upstreams"}
    cfg = config(**fields)
    with pytest.raises(errors.NginxError):
        rendering.render_nginx_conf(cfg, case.get("upstreams"))


def test_injection_error_names_the_problem() -> None:
    """The NginxError message says which value is wrong."""
    with pytest.raises(errors.NginxError, match="max body size"):
        rendering.render_nginx_conf(config(max_body_size="10M; foo"), None)
    with pytest.raises(errors.NginxError, match="not an IP address"):
        rendering.render_nginx_conf(config(), {3000: up(3000, "1.2.3.4; include /etc/passwd", 1)})


@pytest.mark.parametrize(
    "size", [pytest.param(s, id=s) for s in ("0", "10M", "512k", "1G", "1048576", "999999999m")]
)
def test_body_sizes_accepted(size: str) -> None:
    """Plain nginx sizes pass through unchanged."""
    assert f"client_max_body_size {size};" in rendering.render_nginx_conf(
        config(max_body_size=size), {3000: up(3000, "203.0.113.9", 1)}
    )


def test_proxy_config_is_frozen() -> None:
    """ProxyConfig cannot be changed after construction."""
    cfg = config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_body_size = "1G"  # type: ignore[misc]


# ---------------------------------------------------------------- check_upstream_ip


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("8.8.8.8", "8.8.8.8", id="public-v4"),
        pytest.param("203.0.114.7", "203.0.114.7", id="public-v4-other"),
        pytest.param("2606:4700:4700::1111", "2606:4700:4700::1111", id="public-v6"),
        pytest.param("2606:4700:4700:0:0:0:0:1111", "2606:4700:4700::1111", id="public-v6-normalised"),
        pytest.param("2606:4700:4700::ABCD", "2606:4700:4700::abcd", id="public-v6-lower-case"),
        pytest.param("::ffff:8.8.8.8", "8.8.8.8", id="v4-mapped-public"),
    ],
)
def test_check_upstream_ip_accepts_public(host: str, expected: str) -> None:
    """Public IP literals pass and come back normalised."""
    assert rendering.check_upstream_ip(host, allow_private=False) == expected


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("10.1.2.3", id="private-10"),
        pytest.param("172.16.0.1", id="private-172"),
        pytest.param("192.168.1.1", id="private-192"),
        pytest.param("100.64.0.1", id="shared-cgnat"),
        pytest.param("127.0.0.1", id="loopback"),
        pytest.param("169.254.1.1", id="link-local"),
        pytest.param("224.0.0.1", id="multicast"),
        pytest.param("240.0.0.1", id="reserved"),
        pytest.param("0.0.0.0", id="unspecified"),
        pytest.param("::1", id="loopback-v6"),
        pytest.param("fe80::1", id="link-local-v6"),
        pytest.param("fc00::1", id="unique-local-v6"),
        pytest.param("::", id="unspecified-v6"),
        pytest.param("::ffff:10.0.0.1", id="v4-mapped-private"),
        pytest.param("2001:db8::1", id="documentation-v6"),
        pytest.param("example.com", id="hostname"),
        pytest.param("localhost", id="localhost"),
        pytest.param("1.2.3.4\n", id="trailing-newline"),
        pytest.param(" 1.2.3.4", id="leading-space"),
        pytest.param("1.2.3.4:80", id="with-port"),
        pytest.param("[2606:4700::1]", id="bracketed"),
        pytest.param("fe80::1%eth0", id="scope-id"),
        pytest.param("", id="empty"),
    ],
)
def test_check_upstream_ip_rejects_non_public(host: str) -> None:
    """Non-public addresses and anything that is not a bare IP literal are rejected."""
    with pytest.raises(errors.NginxError):
        rendering.check_upstream_ip(host, allow_private=False)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("10.1.2.3", "10.1.2.3", id="private"),
        pytest.param("127.0.0.1", "127.0.0.1", id="loopback"),
        pytest.param("::1", "::1", id="loopback-v6"),
        pytest.param("192.168.1.1", "192.168.1.1", id="private-192"),
        pytest.param("8.8.8.8", "8.8.8.8", id="public"),
    ],
)
def test_check_upstream_ip_allow_private_accepts_private(host: str, expected: str) -> None:
    """With allow_private, private and loopback addresses pass (the simulator runs locally)."""
    assert rendering.check_upstream_ip(host, allow_private=True) == expected


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("localhost", id="localhost"),
        pytest.param("example.com", id="hostname"),
        pytest.param("1.2.3.4\n", id="trailing-newline"),
        pytest.param("0.0.0.0", id="unspecified"),
        pytest.param("224.0.0.1", id="multicast"),
    ],
)
def test_check_upstream_ip_allow_private_still_rejects_names(host: str) -> None:
    """Even with allow_private, hostnames and non-unicast addresses are rejected."""
    with pytest.raises(errors.NginxError):
        rendering.check_upstream_ip(host, allow_private=True)


def test_template_ships_in_the_package() -> None:
    """The template is loaded from the provisioner.templates package (top-level templates/, in the wheel)."""
    import importlib.resources

    assert (importlib.resources.files("provisioner.templates") / "nginx.conf.j2").is_file()
