"""Fixtures shared by the unit tests: a fake Redis server with clients on it, and a settable clock."""

from __future__ import annotations

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
