"""Fixtures shared by the unit tests: a fake Redis server with clients on it, and a settable clock."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import fakeredis
import pytest

from tests.fakes import Clock


@pytest.fixture
def server() -> fakeredis.FakeServer:
    """One fake Redis server; clients made on it share its data, like pods sharing one Redis."""
    return fakeredis.FakeServer()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(server: fakeredis.FakeServer) -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    c = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    yield c
    await c.aclose()


#: the variables a pod cannot run without
REQUIRED_ENV = {
    "POD_NAME": "vast-pod-0",
    "VAST_API_KEY": "k3y-abcdef",
    "VAST_TEMPLATE_NAME": "whisper",
    "VAST_TEMPLATE_IMAGE": "ghcr.io/acme/whisper:1.2",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean environment holding only the required variables, plus what a test sets."""
    for key in list(os.environ):
        if key.startswith(
            ("VAST_", "NGINX_", "BLACKLIST_", "PROXY_", "ADMIN_", "POD_", "DOCKER_", "RECONCILE", "REAP_")
        ):
            monkeypatch.delenv(key)
    for key in ("DEBUG", "LOG_FORMAT", "UPSTREAM_AUTH_HEADER", "REMOTE_LOGS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in REQUIRED_ENV.items():
        monkeypatch.setenv(key, value)
    return monkeypatch
