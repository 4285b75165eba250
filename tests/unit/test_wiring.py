"""What wiring.py builds from Settings: one Vast HTTP client policy for every command, the probe client
with the upstream secret, the rent request, and the reconciler assembled in one place."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import respx

from provisioner import model, offers, reaper, rendering, selection, status, wiring
from provisioner.settings import load_reaper_settings, load_settings

URL = "http://vast.test"


@pytest.mark.parametrize(("timeout_s", "connect_s"), [("7.5", 7.5), ("45", 10.0)])
async def test_vast_http_honours_the_api_timeout(
    env: pytest.MonkeyPatch, timeout_s: str, connect_s: float
) -> None:
    """VAST_API_TIMEOUT_SECONDS is every request's timeout; connecting waits at most 10 s; no redirects."""
    env.setenv("VAST_API_TIMEOUT_SECONDS", timeout_s)
    async with wiring.vast_http(load_settings()) as http:
        assert http.timeout.read == float(timeout_s)
        assert http.timeout.connect == connect_s
        assert http.follow_redirects is False


async def test_the_reaper_gets_the_same_vast_client_policy(env: pytest.MonkeyPatch) -> None:
    """ReaperSettings shares the base, so the reaper's client honours the same timeout."""
    env.setenv("VAST_API_TIMEOUT_SECONDS", "12")
    async with wiring.vast_http(load_reaper_settings()) as http:
        assert http.timeout.read == 12.0


@respx.mock
async def test_offers_command_uses_the_factory(
    env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`provisioner offers` builds its Vast client with the factory (it ignored the timeout before)."""
    env.setenv("VAST_API_URL", URL)
    env.setenv("VAST_API_TIMEOUT_SECONDS", "9")
    env.setenv("VAST_PACE_INTERVALS", "search_offers=0")  # each relaxed search would wait 6 s
    made: list[httpx.AsyncClient] = []
    real = wiring.vast_http

    def spy(access: wiring.VastAccess) -> httpx.AsyncClient:
        made.append(real(access))
        return made[-1]

    monkeypatch.setattr(wiring, "vast_http", spy)
    respx.post(f"{URL}/api/v0/bundles/").mock(return_value=httpx.Response(200, json={"offers": []}))
    survey = await offers.survey_offers(load_settings())
    assert survey.scored == [] and survey.relaxed, "no offer: the constraints were relaxed one by one"
    assert [h.timeout.read for h in made] == [9.0]


def test_health_http_carries_the_upstream_secret(env: pytest.MonkeyPatch) -> None:
    """The probe client sends UPSTREAM_AUTH_HEADER with the pod's secret (and nothing without it)."""
    assert "x-pod-secret" not in wiring.health_http(load_settings()).headers
    env.setenv("UPSTREAM_AUTH_HEADER", "X-Pod-Secret")
    settings = load_settings()
    token = settings.upstream_auth_token
    assert token is not None
    assert wiring.health_http(settings).headers["x-pod-secret"] == token.get_secret_value()


def test_rent_request_carries_login_and_secret_not_the_template(env: pytest.MonkeyPatch) -> None:
    """The registry login and the upstream secret ride with each rent, never in the template."""
    env.setenv("DOCKER_LOGIN", "-u bob -p hunter2 ghcr.io")
    env.setenv("UPSTREAM_AUTH_HEADER", "X-Pod-Secret")
    settings = load_settings()
    request = wiring.build_rent_request(settings)("hash-1")
    assert request.image_login is not None
    assert request.image_login.get_secret_value() == "-u bob -p hunter2 ghcr.io"
    assert request.env["UPSTREAM_AUTH_HEADER"] == "X-Pod-Secret"
    assert request.template_hash_id == "hash-1"
    assert "hunter2" not in settings.desired_spec().template.env


def test_criteria_take_the_parsed_settings(env: pytest.MonkeyPatch) -> None:
    """Countries and weights reach the selection criteria as parsed values."""
    env.setenv("VAST_PREFERRED_COUNTRIES", "us, ca")
    env.setenv("VAST_SCORE_WEIGHTS", "price=2")
    criteria = wiring.build_criteria(load_settings())
    assert criteria.preferred_countries == ("US", "CA")
    assert criteria.weights == selection.Weights(price=2.0)


async def test_build_reconciler_wires_fleet_only_with_a_store(env: pytest.MonkeyPatch) -> None:
    """Without Redis the reconciler has no fleet; its policy and drain come from the settings."""
    env.setenv("NGINX_DRAIN_SECONDS", "7")
    settings = load_settings()
    async with httpx.AsyncClient() as http:
        clients = wiring.Clients(vast=wiring.vast_over(settings, http), proxy=_Proxy(), health_http=http)
        rec = wiring.build_reconciler(settings, clients, clock=lambda: 5.0)
    assert not rec.has_fleet
    assert rec.view().phase is None
    assert wiring.build_policy(settings).boot_timeout_s == settings.boot_timeout_seconds


class _Proxy:
    async def apply(self, text: str) -> bool:
        return True


@pytest.mark.parametrize(
    ("address", "private_ok", "expected"),
    [
        pytest.param("10.0.0.5", False, False, id="private-refused"),
        pytest.param("not-an-ip", True, False, id="hostname-refused"),
    ],
)
async def test_status_probe_checks_the_upstream_ip_like_the_reconciler(
    env: pytest.MonkeyPatch, address: str, private_ok: bool, expected: bool
) -> None:
    """`status` refuses an address the reconciler would refuse, without connecting to it."""
    env.setenv("VAST_ALLOW_PRIVATE_UPSTREAMS", "true" if private_ok else "false")
    focus = model.Instance(id=1, label="k8s_pod=vast-pod-0", public_ipaddr=address, ports={8000: 40001})
    upstreams, healthy = await status.probe_upstream(load_settings(), focus)
    assert healthy is expected
    assert upstreams == [{"listen_port": 3000, "host": address, "port": 40001}]


async def test_reaper_run_builds_its_client_with_the_factory(
    env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reaper opens its Vast client through wiring.open_vast (one timeout policy)."""
    opened: list[float] = []
    real = wiring.vast_http

    def spy(access: wiring.VastAccess) -> httpx.AsyncClient:
        opened.append(access.vast_api_timeout_seconds)
        return real(access)

    monkeypatch.setattr(wiring, "vast_http", spy)
    env.setenv("VAST_API_URL", URL)
    env.setenv("BLACKLIST_REDIS_URL", "redis://127.0.0.1:1/0")
    env.setenv("BLACKLIST_REDIS_TIMEOUT_SECONDS", "0.2")
    with respx.mock:
        respx.get(url__startswith=f"{URL}/api/v0/instances").mock(
            return_value=httpx.Response(200, json={"instances": []})
        )
        await reaper.run(load_reaper_settings(), apply=False)
    assert opened == [30.0]


def test_nginx_listen_address_reaches_the_rendered_config(env: pytest.MonkeyPatch) -> None:
    """NGINX_LISTEN_ADDRESS feeds ProxyConfig.listen_address, so nginx listens on that address only."""
    env.setenv("NGINX_LISTEN_ADDRESS", "127.0.0.1")
    config = wiring.proxy_config(load_settings())
    assert config.listen_address == "127.0.0.1"
    text = rendering.render_nginx_conf(config, None, reason="booting")
    assert "listen 127.0.0.1:3000" in text and "0.0.0.0" not in text


def test_provisioner_never_imports_httpx_cli() -> None:
    """`provisioner` imports httpx without its optional CLI, so rich and pygments stay out of memory."""
    code = (
        "import sys; from provisioner import launch; launch.skip_httpx_cli(); "
        "from provisioner import daemon; import httpx; "
        "loaded = [m for m in ('rich', 'pygments', 'httpx._main') if sys.modules.get(m)]; "
        "print(loaded, callable(httpx.main))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] True"
