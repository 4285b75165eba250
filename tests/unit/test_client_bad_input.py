"""The Vast.ai client against answers and inputs that would otherwise escape as raw library errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from provisioner import errors
from provisioner.vast.client import RetryPolicy, VastClient

BASE = "http://vast.test"
KEY = "k3y-5ecret-0123456789abcdef"


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
