"""The Vast.ai client's errors: they show none of the secrets it was given (the key, a rent's login and
env), and answers or inputs that would otherwise escape as raw library errors are ``VastError``s."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from provisioner import errors
from provisioner.vast import wire
from provisioner.vast.client import RentRequest, RetryPolicy, VastClient

BASE = "http://vast.test"
KEY = "k3y-5ecret-0123456789abcdef"
PASSWORD = 'dckr_pat-"quoted\\pw'
LOGIN = f"-u bob -p {PASSWORD} registry.example"
TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"  # what UPSTREAM_AUTH_TOKEN looks like: 40 hex digits
HF_TOKEN = "hf_abcdefghijklmnop"


async def _no_sleep(_seconds: float) -> None:
    return None


@pytest.fixture
def router() -> Any:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def vast() -> AsyncIterator[VastClient]:
    async with httpx.AsyncClient() as http:
        yield VastClient(http, SecretStr(KEY), base_url=BASE, retry=RetryPolicy(attempts=1), sleep=_no_sleep)


@pytest.mark.parametrize(
    "url",
    [
        "http://logs.example:abc/x.log?token=t0ken",
        "http://[::1/x.log?token=t0ken",
        "http://logs.example:99999/x.log?token=t0ken",
        "http://logs.example/x\x00.log?token=t0ken",
    ],
    ids=["port-not-a-number", "broken-ipv6", "port-out-of-range", "control-character"],
)
async def test_request_logs_with_an_unparseable_result_url_is_a_bad_response(
    router: respx.MockRouter, vast: VastClient, url: str
) -> None:
    """A result_url that does not parse is VastBadResponse naming the call (never InvalidURL or ValueError),
    and the message quotes neither the URL's token nor the API key."""
    router.put("/api/v0/instances/request_logs/5/").respond(200, json={"success": True, "result_url": url})
    expected = r"^request logs: .*'result_url' does not parse"
    with pytest.raises(errors.VastBadResponse, match=expected) as caught:
        await vast.request_logs(5, poll_attempts=2, poll_interval_s=0)
    assert "t0ken" not in str(caught.value) and KEY not in str(caught.value)


async def test_a_url_httpx_refuses_to_send_is_a_bad_response(vast: VastClient) -> None:
    """A URL that build_request refuses (httpx.InvalidURL) leaves the transport as VastBadResponse."""
    with pytest.raises(errors.VastBadResponse, match=r"^fetch logs: cannot send to that URL: Invalid port"):
        await vast._send("fetch logs", "GET", "http://logs.example:abc/x.log", None, auth=False)


def _request() -> RentRequest:
    return RentRequest(
        image="registry.example/app:1",
        env={"UPSTREAM_AUTH_HEADER": "X-Pod-Auth", "UPSTREAM_AUTH_TOKEN": TOKEN, "HF_TOKEN": HF_TOKEN},
        ports=[8000],
        label="k8s_pod=vast-pod-0",
        disk_gb=20.0,
        image_login=SecretStr(LOGIN),
    )


def _assert_clean(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), str(exc.args)):
        for secret in (KEY, PASSWORD, json.dumps(PASSWORD)[1:-1], TOKEN, HF_TOKEN, "quoted"):
            assert secret not in text, (secret, text)


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(
            lambda body: httpx.Response(400, json={"error": "invalid_args", "msg": json.dumps(body)}),
            id="400-json-echo",
        ),
        pytest.param(
            lambda body: httpx.Response(500, text=f"crashed on {json.dumps(body['env'])}"), id="500-text-echo"
        ),
        pytest.param(
            lambda body: httpx.Response(400, json={"error": "invalid_args", "msg": f"bad login {LOGIN}"}),
            id="400-login-verbatim",
        ),
    ],
)
async def test_a_rent_error_shows_neither_the_registry_login_nor_env_secrets(
    router: respx.MockRouter, vast: VastClient, echo: Any
) -> None:
    """A rent answer that echoes the request (login, UPSTREAM_AUTH_TOKEN, other env tokens) is scrubbed:
    this text becomes /readyz's and /status's last error."""
    route = router.put("/api/v0/asks/7/")
    route.side_effect = lambda request: echo(json.loads(request.content))
    with pytest.raises(errors.VastError) as caught:
        await vast.rent(7, _request())
    assert "***" in str(caught.value)
    _assert_clean(caught.value)


async def test_a_later_error_echoing_a_rent_secret_is_scrubbed_too(
    router: respx.MockRouter, vast: VastClient
) -> None:
    """Once a rent carried them, the secrets are scrubbed from every later error (a list echoing env)."""
    router.put("/api/v0/asks/7/").respond(200, json={"success": True, "new_contract": 99})
    assert await vast.rent(7, _request()) == 99
    router.get("/api/v0/users/current").respond(500, text=f"crash: env={TOKEN} login={PASSWORD}")
    with pytest.raises(errors.VastUnavailable) as caught:
        await vast.whoami()
    _assert_clean(caught.value)


def test_rent_secrets_are_the_login_its_password_and_long_env_values() -> None:
    """The login and its password are secrets, and env values of 8+ characters; short flags are not."""
    found = wire.rent_secrets(SecretStr(LOGIN), {"A": "1", "B": "true", "C": TOKEN})
    assert set(found) == {LOGIN, PASSWORD, TOKEN}
    assert wire.rent_secrets(None, {}) == ()


def test_scrub_replaces_the_longest_secret_first_and_escaped_forms() -> None:
    """A secret inside another goes with the longer one; JSON-escaped and URL-encoded forms are replaced."""
    text = f"login {LOGIN} json {json.dumps(PASSWORD)} url token%3D{TOKEN}"
    assert wire.scrub(text, PASSWORD, LOGIN, TOKEN) == 'login *** json "***" url token%3D***'


def test_errors_are_classified_on_the_raw_answer_not_the_scrubbed_one() -> None:
    """Secrets are removed from the message only: a short registry password that happens to occur in
    "no_such_ask" or "Invalid user key" does not change what the answer means."""
    gone = httpx.Response(404, json={"success": False, "error": "no_such_ask", "msg": "no_such_ask"})
    refused = httpx.Response(404, json={"success": False, "msg": "Invalid user key"})
    limited = httpx.Response(429, text="API requests too frequent endpoint threshold=3.0")
    assert isinstance(wire.map_failure(wire.CALL_RENT, gone, secrets=["a"]), errors.OfferGone)
    assert isinstance(wire.map_failure("show instance", refused, secrets=["e"]), errors.AuthError)
    rate = wire.map_failure("search offers", limited, secrets=["3"])
    assert isinstance(rate, errors.RateLimited) and rate.retry_after_s == 3.0
    assert "3" not in str(rate).split(":", 1)[1], "the message is still scrubbed"
