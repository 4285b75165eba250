"""The official `vastai` 1.9.1 CLI against the simulator over real HTTP: the sim speaks Vast's wire format.

The CLI exits 0 even after HTTP errors (docs/vast-api.md §2.1), so every step asserts on its output.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from provisioner.sim.app import SimConfig, SimRuntime, serving_sim

pytestmark = pytest.mark.integration

API_KEY = "cli-test-key"


def vastai_binary() -> str:
    """The `vastai` console script of this virtualenv (or on PATH), or skip."""
    beside = Path(sys.executable).parent / "vastai"
    if beside.exists():
        return str(beside)
    found = shutil.which("vastai")
    if found is None:
        pytest.skip("the official vastai CLI is not installed")
    return found


@dataclass
class Cli:
    """Runs `vastai --url <sim> …` with an isolated HOME and the sim as VAST_URL."""

    binary: str
    url: str
    env: dict[str, str]
    runtime: SimRuntime

    async def run(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            "--url",
            self.url,
            *args,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(60):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def raw(self, *args: str) -> Any:
        code, out, err = await self.run(*args, "--raw")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
async def cli(tmp_path: Path) -> AsyncIterator[Cli]:
    """The sim on a real port, and the CLI pointed at it with `--url` and VAST_URL."""
    home = tmp_path / "home"
    home.mkdir()
    async with serving_sim(SimConfig(boot_delay_s=0.5, api_key=API_KEY)) as (url, runtime):
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "VAST_URL": url,
            "VAST_API_KEY": API_KEY,
            "VASTAI_NO_UPDATE_CHECK": "1",
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
        yield Cli(vastai_binary(), url, env, runtime)


async def test_search_offers_matches_the_filter(cli: Cli) -> None:
    """`search offers 'gpu_name=RTX_4090 num_gpus=1' --raw` returns only clean 1x RTX 4090 offers."""
    offers = await cli.raw("search", "offers", "gpu_name=RTX_4090 num_gpus=1")
    assert offers
    for offer in offers:
        assert (offer["gpu_name"], offer["num_gpus"]) == ("RTX 4090", 1)
        assert offer["verified"] and offer["rentable"] and not offer["external"]
        assert offer["id"] == offer["ask_contract_id"]
    counts = cli.runtime.requests.counts()
    assert counts["search"] == 1
    assert counts["gpu_names"] == 1  # the parser-time fetch went to VAST_URL
    cheap = await cli.raw(
        "search", "offers", "gpu_name=RTX_4090 num_gpus=1 geolocation in [US,CA]", "-o", "dph+"
    )
    assert [o["dph_total"] for o in cheap] == sorted(o["dph_total"] for o in cheap)
    assert all(o["geolocation"].endswith((", US", ", CA")) for o in cheap)


async def test_instance_lifecycle(cli: Cli) -> None:
    """create → show (until running) → label → logs → show instances → destroy → show says it is gone."""
    offer_id = (await cli.raw("search", "offers", "gpu_name=RTX_4090 num_gpus=1", "--limit", "1"))[0]["id"]
    created = await cli.raw(
        "create", "instance", str(offer_id), "--image", "nginx", "--label", "k8s_pod=x", "--disk", "20",
        "--env", "-p 8000:8000",
    )  # fmt: skip
    assert created["success"] is True
    instance_id = created["new_contract"]

    async with asyncio.timeout(20):
        while True:
            shown = await cli.raw("show", "instance", str(instance_id))
            if shown["actual_status"] == "running":
                break
            await asyncio.sleep(0.2)
    assert shown["label"] == "k8s_pod=x"
    assert shown["extra_env"] == {"-p 8000:8000": "1"}  # the CLI turned the pairs into a dict
    assert int(shown["ports"]["8000/tcp"][0]["HostPort"]) > 0
    assert shown["public_ipaddr"].strip() == "127.0.0.1"

    code, out, err = await cli.run("label", "instance", str(instance_id), "k8s_pod=y")
    assert code == 0, err
    assert f"label for {instance_id} set to k8s_pod=y" in out

    code, out, err = await cli.run("logs", str(instance_id))
    assert code == 0, err
    assert "Started container" in out
    assert "Pulling from library/nginx" in out

    listed = await cli.raw("show", "instances")
    assert [(row["id"], row["label"]) for row in listed] == [(instance_id, "k8s_pod=y")]
    code, out, err = await cli.run("show", "instances", "--no-color")
    assert code == 0, err
    assert "Total: 1 instances" in out
    assert "k8s_pod=y: 1" in out
    assert str(instance_id) in out
    assert "1.6/20 GB (8%)" in out

    again = await cli.run("create", "instance", str(offer_id), "--image", "nginx", "--raw")
    assert "no_such_ask" in again[2]

    code, out, err = await cli.run("destroy", "instance", str(instance_id), "-y")
    assert code == 0, err
    assert f"destroying instance {instance_id}" in out
    assert await cli.raw("show", "instance", str(instance_id)) == {"instances": None}
    code, out, err = await cli.run("show", "instance", str(instance_id))
    assert "not found or no longer exists" in err
    assert await cli.raw("show", "instances") == []


async def test_wrong_key_is_reported(cli: Cli) -> None:
    """A wrong key gets the CLI's 401 "Invalid user key" message (it still exits 0)."""
    cli.env["VAST_API_KEY"] = "wrong"
    code, _, err = await cli.run("show", "instances", "--raw")
    assert code == 0
    assert json.loads(err.strip().splitlines()[-1]) == {
        "error": True,
        "status_code": 401,
        "msg": "Invalid user key",
    }


@pytest.mark.parametrize(
    ("form", "msg"),
    [
        ("text", "(no detail message supplied)"),  # plain text: the CLI finds no JSON `msg`
        ("text_bare", "(no detail message supplied)"),
        ("json", None),  # {"detail": …}: no `msg` key either
        ("rate_limit_exceeded", "API requests too frequent endpoint threshold=30.0"),
    ],
)
async def test_rate_limit_forms_reach_the_official_client(cli: Cli, form: str, msg: str | None) -> None:
    """Inside the show interval the CLI gets 429 in each body form, after its 3 attempts (§2.2)."""
    cli.runtime.update_config(
        {"rate_limits": True, "rate_limit_body": form, "rate_limit_overrides": {"show": 30}}
    )
    assert await cli.raw("show", "instance", "5") == {"instances": None}
    code, out, err = await cli.run("show", "instance", "5", "--raw")
    assert (code, out) == (0, "")
    assert json.loads(err.strip().splitlines()[-1]) == {"error": True, "status_code": 429, "msg": msg}
    assert cli.runtime.requests.status_counts()["show"] == {"200": 1, "429": 3}
    assert dict(cli.runtime.limits.limiter.refused) == {"show": 3}


async def test_official_client_waits_out_retry_after(cli: Cli) -> None:
    """With Retry-After on, the CLI's refused show is retried after the slot opens and succeeds."""
    cli.runtime.update_config(
        {"rate_limits": True, "rate_limit_retry_after": True, "rate_limit_overrides": {"show": 5}}
    )
    assert await cli.raw("show", "instance", "5") == {"instances": None}
    assert await cli.raw("show", "instance", "5") == {"instances": None}
    # the second command started well inside the 5 s interval (a CLI start takes ~1 s), so it met one 429
    assert cli.runtime.requests.status_counts()["show"] == {"200": 2, "429": 1}
