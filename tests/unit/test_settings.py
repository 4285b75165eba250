"""Settings: defaults, derived values, and one clear error naming the variable for bad input."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import AliasChoices

from provisioner import errors, model, selection
from provisioner.config_parsing import parse_docker_login, parse_proxy_ports, split_image
from provisioner.settings import (
    ReaperSettings,
    RedisAccess,
    Settings,
    load_reaper_settings,
    load_redis_access,
    load_settings,
)
from provisioner.vast import query


def test_defaults(env: pytest.MonkeyPatch) -> None:
    """With only the required variables, the documented defaults apply."""
    s = load_settings()
    assert s.nginx_listen_port == 3000
    assert s.vast_container_port == 8000
    assert s.nginx_max_body_size == "10M"
    assert s.label == "k8s_pod=vast-pod-0"
    assert s.port_maps == (model.PortMap(3000, 8000),)
    assert s.vast_api_url == "https://console.vast.ai"
    assert s.boot_timeout_seconds == 1200


def test_remote_env_and_template_spec(env: pytest.MonkeyPatch) -> None:
    """VAST_ENV_<NAME> becomes env NAME remotely and lands, with the ports, in the template's env string."""
    env.setenv("VAST_ENV_MODEL", "large v3")
    env.setenv("VAST_ENV_HF_HOME", "/data")
    env.setenv("PROXY_PORTS", "3000:8000,3001:8001")
    s = load_settings()
    spec = s.desired_spec()
    assert spec.env == {"MODEL": "large v3", "HF_HOME": "/data"}
    assert spec.template.env == "-p 8000:8000 -p 8001:8001 -e HF_HOME=/data -e MODEL='large v3'"
    assert spec.template.image == "ghcr.io/acme/whisper"
    assert spec.template.tag == "1.2"
    assert spec.container_ports == (8000, 8001)


def test_secrets_do_not_print(env: pytest.MonkeyPatch) -> None:
    """Neither the API key nor the registry password appears in the settings' repr."""
    env.setenv("DOCKER_LOGIN", "-u bob -p hunter2secret ghcr.io")
    s = load_settings()
    assert "k3y-abcdef" not in repr(s)
    assert "hunter2secret" not in repr(s)
    login = s.docker_login
    assert login is not None
    assert login.as_vast_string() == "-u bob -p hunter2secret ghcr.io"
    assert "hunter2secret" not in repr(login)


def test_old_blacklist_deadline_name_sets_boot_timeout(env: pytest.MonkeyPatch) -> None:
    """BLACKLIST_BAN_AFTER_SECONDS is the boot deadline, as in the earlier provisioner."""
    env.setenv("BLACKLIST_BAN_AFTER_SECONDS", "600")
    assert load_settings().boot_timeout_seconds == 600


BAD = [
    pytest.param({"POD_NAME": None}, "POD_NAME", id="pod-name-missing"),
    pytest.param({"POD_NAME": ""}, "POD_NAME", id="pod-name-empty"),
    pytest.param({"POD_NAME": "Vast_Pod"}, "POD_NAME", id="pod-name-not-dns"),
    pytest.param({"VAST_API_KEY": None}, "VAST_API_KEY", id="api-key-missing"),
    pytest.param({"VAST_API_KEY": "   "}, "VAST_API_KEY", id="api-key-blank"),
    pytest.param({"VAST_API_KEY": "ab cd"}, "VAST_API_KEY", id="api-key-space"),
    pytest.param({"VAST_TEMPLATE_NAME": None}, "VAST_TEMPLATE_NAME", id="template-name-missing"),
    pytest.param({"VAST_TEMPLATE_NAME": "a;b"}, "VAST_TEMPLATE_NAME", id="template-name-bad"),
    pytest.param({"VAST_TEMPLATE_IMAGE": None}, "VAST_TEMPLATE_IMAGE", id="image-missing"),
    pytest.param({"VAST_TEMPLATE_IMAGE": "my image"}, "VAST_TEMPLATE_IMAGE", id="image-space"),
    pytest.param({"VAST_API_URL": "console.vast.ai"}, "VAST_API_URL", id="url-no-scheme"),
    pytest.param({"VAST_API_URL": "ftp://x"}, "VAST_API_URL", id="url-ftp"),
    pytest.param({"VAST_API_URL": "https://u:p@x"}, "VAST_API_URL", id="url-credentials"),
    pytest.param({"VAST_API_URL": "https://console.vast.ai:abc"}, "VAST_API_URL", id="url-port-text"),
    pytest.param({"VAST_API_URL": "https://console.vast.ai:70000"}, "VAST_API_URL", id="url-port-big"),
    pytest.param({"VAST_API_URL": " https://console.vast.ai"}, "VAST_API_URL", id="url-leading-space"),
    pytest.param({"VAST_API_KEY": "sekr\u00e9t-key-0123"}, "VAST_API_KEY", id="api-key-not-ascii"),
    pytest.param(
        {"VAST_ENV_UPSTREAM_AUTH_TAG": "x"}, "VAST_ENV_UPSTREAM_AUTH_TAG", id="remote-env-reserved-tag"
    ),
    pytest.param(
        {"VAST_ENV_UPSTREAM_AUTH_TOKEN": "x"}, "VAST_ENV_UPSTREAM_AUTH_TOKEN", id="remote-env-reserved-token"
    ),
    pytest.param(
        {"BLACKLIST_ENABLED": "true", "BLACKLIST_REDIS_URL": "redis://:pw@h:99999/0"},
        "BLACKLIST_REDIS_URL",
        id="redis-port-big",
    ),
    pytest.param(
        {"BLACKLIST_ENABLED": "true", "BLACKLIST_REDIS_URL": "redis://h:6379/0?socket_timeout=abc"},
        "BLACKLIST_REDIS_URL",
        id="redis-bad-option",
    ),
    pytest.param(
        {"BLACKLIST_ENABLED": "true", "BLACKLIST_REDIS_URL": "redis://h:6379/abc"},
        "BLACKLIST_REDIS_URL",
        id="redis-db-not-a-number",
    ),
    pytest.param({"BLACKLIST_BAN_TTL_SECONDS": "1e16"}, "BLACKLIST_BAN_TTL_SECONDS", id="ban-ttl-huge"),
    pytest.param({"VAST_API_URL": "http://[::1"}, "VAST_API_URL", id="url-broken-ipv6"),
    pytest.param({"VAST_MIN_INET_DOWN": "inf"}, "VAST_MIN_INET_DOWN", id="inet-down-inf"),
    pytest.param({"BLACKLIST_BAN_AFTER_SECONDS": "inf"}, "BLACKLIST_BAN_AFTER_SECONDS", id="ban-after-inf"),
    pytest.param({"NGINX_LISTEN_PORT": "0"}, "NGINX_LISTEN_PORT", id="listen-port-zero"),
    pytest.param({"NGINX_LISTEN_PORT": "70000"}, "NGINX_LISTEN_PORT", id="listen-port-big"),
    pytest.param({"NGINX_LISTEN_PORT": "http"}, "NGINX_LISTEN_PORT", id="listen-port-text"),
    pytest.param({"VAST_CONTAINER_PORT": "-1"}, "VAST_CONTAINER_PORT", id="container-port-negative"),
    pytest.param({"ADMIN_PORT": "3000"}, "ADMIN_PORT", id="admin-port-clash"),
    pytest.param(
        {"ADMIN_PORT": "3001", "PROXY_PORTS": "3000:8000,3001:8001"}, "ADMIN_PORT", id="admin-clash-proxy"
    ),
    pytest.param({"PROXY_PORTS": "3000"}, "PROXY_PORTS", id="proxy-ports-no-colon"),
    pytest.param({"PROXY_PORTS": "3000:8000,3000:8001"}, "PROXY_PORTS", id="proxy-ports-duplicate"),
    pytest.param({"PROXY_PORTS": "a:b"}, "PROXY_PORTS", id="proxy-ports-text"),
    pytest.param({"PROXY_PORTS": "3000:99999"}, "PROXY_PORTS", id="proxy-ports-range"),
    pytest.param({"NGINX_MAX_BODY_SIZE": "10MB"}, "NGINX_MAX_BODY_SIZE", id="body-size-unit"),
    pytest.param({"NGINX_MAX_CONCURRENCY": "0"}, "NGINX_MAX_CONCURRENCY", id="max-concurrency-zero"),
    pytest.param({"NGINX_MAX_CONCURRENCY": "100000"}, "NGINX_MAX_CONCURRENCY", id="max-concurrency-big"),
    pytest.param({"NGINX_MAX_CONCURRENCY": "lots"}, "NGINX_MAX_CONCURRENCY", id="max-concurrency-text"),
    pytest.param({"NGINX_WORKER_PROCESSES": "0"}, "NGINX_WORKER_PROCESSES", id="workers-zero"),
    pytest.param({"NGINX_WORKER_PROCESSES": "auto"}, "NGINX_WORKER_PROCESSES", id="workers-auto"),
    pytest.param(
        {"NGINX_UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS": "0"},
        "NGINX_UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS",
        id="upstream-idle-zero",
    ),
    pytest.param({"NGINX_MAX_BODY_SIZE": "10M; include x"}, "NGINX_MAX_BODY_SIZE", id="body-size-injection"),
    pytest.param({"VAST_LABEL": "x" * 300}, "VAST_LABEL", id="label-too-long"),
    pytest.param({"VAST_DISK_GB": "2"}, "VAST_DISK_GB", id="disk-too-small"),
    pytest.param({"VAST_DISK_GB": "lots"}, "VAST_DISK_GB", id="disk-text"),
    pytest.param({"DOCKER_LOGIN": "bob:secret"}, "DOCKER_LOGIN", id="docker-login-malformed"),
    pytest.param({"DOCKER_LOGIN": "-u bob"}, "DOCKER_LOGIN", id="docker-login-no-password"),
    pytest.param({"VAST_SEARCH_QUERY": "gpu_name=RTX 3060"}, "VAST_SEARCH_QUERY", id="query-unquoted-space"),
    pytest.param({"VAST_SEARCH_QUERY": "{not json"}, "VAST_SEARCH_QUERY", id="query-bad-json"),
    pytest.param({"VAST_HEALTH_PATH": "health"}, "VAST_HEALTH_PATH", id="health-path-relative"),
    pytest.param({"VAST_HEALTH_PATH": "/h;x"}, "VAST_HEALTH_PATH", id="health-path-injection"),
    pytest.param({"RECONCILE_INTERVAL_SECONDS": "-5"}, "RECONCILE_INTERVAL_SECONDS", id="interval-negative"),
    pytest.param(
        {"BLACKLIST_BAN_AFTER_SECONDS": "-1"}, "BLACKLIST_BAN_AFTER_SECONDS", id="ban-after-negative"
    ),
    pytest.param({"DEBUG": "maybe"}, "DEBUG", id="debug-not-bool"),
    pytest.param({"LOG_FORMAT": "xml"}, "LOG_FORMAT", id="log-format-unknown"),
    pytest.param({"VAST_ENV_BAD-NAME": "x"}, "VAST_ENV_BAD-NAME", id="remote-env-bad-name"),
    pytest.param({"UPSTREAM_AUTH_HEADER": "Host"}, "UPSTREAM_AUTH_HEADER", id="auth-header-reserved"),
    pytest.param({"UPSTREAM_AUTH_HEADER": "X Auth"}, "UPSTREAM_AUTH_HEADER", id="auth-header-space"),
    pytest.param({"VAST_MAX_FLEET_DPH": "3"}, "VAST_MAX_FLEET_DPH", id="fleet-cap-without-redis"),
    pytest.param({"VAST_API_TIMEOUT_SECONDS": "0"}, "VAST_API_TIMEOUT_SECONDS", id="api-timeout-zero"),
    pytest.param({"NGINX_LISTEN_ADDRESS": "localhost"}, "NGINX_LISTEN_ADDRESS", id="listen-address-name"),
    pytest.param({"ADMIN_HOST": "999.1.1.1"}, "ADMIN_HOST", id="admin-host-not-an-ip"),
    pytest.param({"ADMIN_HOST": "[admin]"}, "ADMIN_HOST", id="admin-host-brackets-around-a-name"),
    pytest.param({"ADMIN_HOST": "host:8081"}, "ADMIN_HOST", id="admin-host-with-port"),
    pytest.param({"NGINX_LISTEN_ADDRESS": "0.0.0.0;"}, "NGINX_LISTEN_ADDRESS", id="listen-address-injection"),
]


@pytest.mark.parametrize(("changes", "variable"), BAD)
def test_bad_configuration_names_the_variable(
    env: pytest.MonkeyPatch, changes: dict[str, str | None], variable: str
) -> None:
    """Each invalid configuration raises ConfigError naming the variable, with a one-line message."""
    for key, value in changes.items():
        if value is None:
            env.delenv(key, raising=False)
        else:
            env.setenv(key, value)
    with pytest.raises(errors.ConfigError) as caught:
        load_settings()
    assert caught.value.variable == variable
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(variable + ": ")
    assert "k3y-abcdef" not in str(caught.value)


def test_docker_login_error_never_echoes_the_password() -> None:
    """A malformed DOCKER_LOGIN error does not contain the password it was given."""
    with pytest.raises(ValueError, match="registry") as caught:
        parse_docker_login("-u bob -p s3cretpass not/a/host!")
    assert "s3cretpass" not in str(caught.value)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        pytest.param("nginx", ("nginx", None), id="bare"),
        pytest.param("nginx:1.25", ("nginx", "1.25"), id="tag"),
        pytest.param("localhost:5000/app", ("localhost:5000/app", None), id="registry-port"),
        pytest.param("localhost:5000/app:2", ("localhost:5000/app", "2"), id="registry-port-tag"),
        pytest.param("app@sha256:abc", ("app@sha256:abc", None), id="digest"),
    ],
)
def test_split_image(ref: str, expected: tuple[str, str | None]) -> None:
    """Image references split into repository and tag the way docker reads them."""
    assert split_image(ref) == expected


def test_parse_proxy_ports() -> None:
    """PROXY_PORTS lists listen:container pairs in order."""
    assert parse_proxy_ports("3000:8000, 3001:8001") == (model.PortMap(3000, 8000), model.PortMap(3001, 8001))


def test_every_missing_required_variable_is_named_at_once(env: pytest.MonkeyPatch) -> None:
    """Several required variables unset: one ConfigError (one line) names all of them."""
    env.delenv("POD_NAME")
    env.delenv("VAST_TEMPLATE_IMAGE")
    with pytest.raises(errors.ConfigError) as info:
        load_settings()
    assert str(info.value) == "POD_NAME, VAST_TEMPLATE_IMAGE: are required and not set"
    assert "\n" not in str(info.value)


def test_missing_and_empty_required_variables_are_told_apart(env: pytest.MonkeyPatch) -> None:
    """An unset and an empty required variable are both named, each with its problem."""
    env.delenv("POD_NAME")
    env.setenv("VAST_API_KEY", " ")
    with pytest.raises(errors.ConfigError) as info:
        load_settings()
    assert info.value.variable == "POD_NAME, VAST_API_KEY"
    assert info.value.problem == "are required: POD_NAME is not set; VAST_API_KEY is empty"


def test_values_are_stored_parsed(env: pytest.MonkeyPatch) -> None:
    """Port maps, countries, weights, the registry login and the query are parsed once, at load."""
    env.setenv("PROXY_PORTS", "3000:8000,3001:8001")
    env.setenv("VAST_PREFERRED_COUNTRIES", "se, no")
    env.setenv("VAST_SCORE_WEIGHTS", "country=2")
    env.setenv("DOCKER_LOGIN", "-u bob -p pw")
    env.setenv("VAST_SEARCH_QUERY", "num_gpus=2")
    s = load_settings()
    assert s.proxy_ports == (model.PortMap(3000, 8000), model.PortMap(3001, 8001))
    assert s.vast_preferred_countries == ("SE", "NO")
    assert s.vast_score_weights == selection.Weights(country=2.0)
    assert s.docker_login is not None and s.docker_login.user == "bob"
    assert s.vast_search_query.text == "num_gpus=2"
    assert s.search_filter()["num_gpus"] == {"eq": "2"}
    s.search_filter()["num_gpus"] = {"eq": "9"}
    assert s.search_filter()["num_gpus"] == {"eq": "2"}, "callers get a copy"


def test_defaults_are_parsed_values_too(env: pytest.MonkeyPatch) -> None:
    """Unset optional values are parsed defaults, not text to parse later."""
    s = load_settings()
    assert s.proxy_ports is None and s.docker_login is None
    assert s.vast_preferred_countries == ()
    assert s.vast_score_weights == selection.Weights()
    assert s.search_filter() == query.load_filter("")


def test_reaper_settings_share_the_base_rules(env: pytest.MonkeyPatch) -> None:
    """ReaperSettings validates the shared fields with Settings' rules and maps errors the same way."""
    env.setenv("VAST_API_URL", "ftp://x")
    with pytest.raises(errors.ConfigError) as pod:
        load_settings()
    with pytest.raises(errors.ConfigError) as reap:
        load_reaper_settings()
    assert str(pod.value) == str(reap.value)
    assert pod.value.variable == "VAST_API_URL"


def test_nginx_config_path_under_a_file_is_named(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """NGINX_CONFIG_PATH below an existing file is a config error naming the variable and that file."""
    (tmp_path / "afile").write_text("")
    env.setenv("NGINX_CONFIG_PATH", str(tmp_path / "afile" / "nginx" / "nginx.conf"))
    with pytest.raises(errors.ConfigError) as caught:
        load_settings()
    assert caught.value.variable == "NGINX_CONFIG_PATH"
    assert f"{tmp_path / 'afile'} is a file, not a directory" in str(caught.value)


def test_nginx_listen_address_defaults_to_every_interface(env: pytest.MonkeyPatch) -> None:
    """NGINX_LISTEN_ADDRESS is 0.0.0.0 unless set (pods), and stored as a normalised IP."""
    assert load_settings().nginx_listen_address == "0.0.0.0"
    env.setenv("NGINX_LISTEN_ADDRESS", " 127.0.0.1 ")
    assert load_settings().nginx_listen_address == "127.0.0.1"


def test_redis_access_needs_no_pod_or_vast_settings(env: pytest.MonkeyPatch) -> None:
    """`blacklist` reads only the Redis settings: no POD_NAME, no API key, the same Redis rules."""
    for name in ("POD_NAME", "VAST_API_KEY", "VAST_TEMPLATE_NAME", "VAST_TEMPLATE_IMAGE"):
        env.delenv(name, raising=False)
    env.setenv("BLACKLIST_REDIS_URL", "redis://example:6380/3")
    env.setenv("BLACKLIST_BAN_TTL_SECONDS", "60")
    access = load_redis_access()
    assert access.blacklist_redis_url.get_secret_value() == "redis://example:6380/3"
    assert access.blacklist_ban_ttl_seconds == 60
    env.setenv("BLACKLIST_REDIS_URL", "http://example")
    with pytest.raises(errors.ConfigError) as caught:
        load_redis_access()
    assert caught.value.variable == "BLACKLIST_REDIS_URL"


def _float_variables() -> list[object]:
    """Every float setting of every settings class, as (loader, env var) pairs."""
    loaders: dict[type[RedisAccess], typing.Callable[[], RedisAccess]] = {
        Settings: load_settings,
        ReaperSettings: load_reaper_settings,
        RedisAccess: load_redis_access,
    }
    params: list[object] = []
    for cls, load in loaders.items():
        for name, info in cls.model_fields.items():
            if info.annotation is not float and float not in typing.get_args(info.annotation):
                continue
            alias = info.validation_alias
            variable = str(alias.choices[0]) if isinstance(alias, AliasChoices) else name.upper()
            params.append(pytest.param(load, variable, id=f"{cls.__name__}-{variable}"))
    return params


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
@pytest.mark.parametrize(("load", "variable"), _float_variables())
def test_no_float_setting_takes_inf_or_nan(
    env: pytest.MonkeyPatch, load: typing.Callable[[], object], variable: str, value: str
) -> None:
    """inf and nan are refused at start-up for every float setting, naming it (none slips through to a
    json.dumps of the search body, nor means "never" for a deadline)."""
    env.setenv(variable, value)
    with pytest.raises(errors.ConfigError) as caught:
        load()
    assert caught.value.variable == variable


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::]", "::"),
        ("0.0.0.0", "0.0.0.0"),
        ("admin.local", "admin.local"),
    ],
)
def test_admin_host_is_stored_as_something_a_socket_binds(
    env: pytest.MonkeyPatch, value: str, stored: str
) -> None:
    """ADMIN_HOST=[::1] (URL notation) is stored bare, as bind() wants it, not refused later as ADMIN_PORT."""
    env.setenv("ADMIN_HOST", value)
    assert load_settings().admin_host == stored
