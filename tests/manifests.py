"""The deployment files as the tests see them: rendered Kubernetes manifests, compose, env var names.

``kustomize(path)`` renders a kustomization with the bundled kubectl (offline). ``container_env``
builds a container's environment the way the kubelet does (``envFrom`` first, then ``env`` in order
with ``$(VAR)`` expansion, downward-API and Secret values supplied by the caller).
``known_env_names()`` is the set of variables ``Settings`` (and the reaper's ``ReaperSettings``) read,
derived from their fields, so that a misspelt name in a manifest or in the compose file fails a test
instead of being silently ignored. ``reaper_container`` is the CronJob's container.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices

from provisioner import settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KUBECTL = str(BIN / "kubectl")
K8S = ROOT / "k8s"
OVERLAY = K8S / "overlays" / "two-ports"
COMPOSE = ROOT / "docker-compose.yml"

_REF_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@functools.cache
def kustomize_text(path: Path) -> str:
    """``kubectl kustomize path`` (raises with kubectl's message when it fails)."""
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{result.stderr}")
    return result.stdout


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The rendered resources of a kustomization."""
    return [doc for doc in yaml.safe_load_all(kustomize_text(path)) if doc]


def find(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one resource of ``kind`` (and ``name``); fails when there is not exactly one."""
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def provisioner_container(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The container of the StatefulSet that runs ``provisioner run``."""
    sts = find(docs, "StatefulSet")
    containers = [
        c
        for c in sts["spec"]["template"]["spec"]["containers"]
        if "provisioner" in (c.get("command", []) + c.get("args", []))
    ]
    assert len(containers) == 1, "the StatefulSet must have exactly one container running the provisioner"
    return containers[0]


def reaper_container(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The one container of the reaper CronJob (``provisioner reap``)."""
    cron = find(docs, "CronJob")
    containers = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1 and "reap" in containers[0].get("args", []), "one `provisioner reap`"
    found: dict[str, Any] = containers[0]
    return found


def config_map_data(docs: Iterable[dict[str, Any]], name: str) -> dict[str, str]:
    """The data of the rendered ConfigMap that a reference ``name`` points at (kustomize renames it)."""
    return dict(find(docs, "ConfigMap", name).get("data", {}))


@functools.cache
def known_env_names() -> frozenset[str]:
    """Every env var name ``Settings`` or ``ReaperSettings`` reads: fields and aliases, upper-cased.

    One ConfigMap feeds both the pods and the reaper CronJob, so the names of either are known.
    """
    names: set[str] = set()
    fields = [*settings.Settings.model_fields.items(), *settings.ReaperSettings.model_fields.items()]
    for field_name, info in fields:
        if info.exclude:  # derived values such as remote_env are not read from the environment
            continue
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(field_name.upper())
    return frozenset(names)


def is_known_env_name(name: str) -> bool:
    """A setting, or ``VAST_ENV_<NAME>`` (passed to the remote container)."""
    prefix = settings.REMOTE_ENV_PREFIX
    return name in known_env_names() or (name.startswith(prefix) and len(name) > len(prefix))


def references(value: str) -> list[str]:
    """The ``$(VAR)`` names a Kubernetes env value refers to (``$$`` escapes)."""
    return [m.group(1) for m in _REF_RE.finditer(value) if m.group(1)]


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubelet's expansion: ``$(VAR)`` of a variable defined before, others left as they are."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REF_RE.sub(replace, value)


def env_problems(docs: list[dict[str, Any]], container: dict[str, Any] | None = None) -> list[str]:
    """Why a container's env names (default: the provisioner's) are wrong: unknown or unresolved refs.

    A name that is not a setting is allowed only as a helper that another value refers to with
    ``$(NAME)`` (``POD_NAMESPACE`` for ``VAST_LABEL``); every reference must name a variable
    defined before it, or the kubelet passes the ``$(...)`` text through literally.
    """
    container = container if container is not None else provisioner_container(docs)
    problems: list[str] = []
    defined: list[str] = []
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        assert ref is not None, f"unsupported envFrom {source}"
        if "configMapRef" in source:
            keys = config_map_data(docs, ref["name"]).keys()
        else:
            keys = find(docs, "Secret", ref["name"]).get("data", {}).keys()
        for key in keys:
            name = source.get("prefix", "") + key
            defined.append(name)
            if not is_known_env_name(name):
                problems.append(f"{name} (from {ref['name']}) is not a setting")
    entries = container.get("env", [])
    referenced = {ref for entry in entries for ref in references(entry.get("value", ""))}
    for entry in entries:
        name = entry["name"]
        for ref in references(entry.get("value", "")):
            if ref not in defined:
                problems.append(f"{name} refers to $({ref}), which is not defined before it")
        defined.append(name)
        if not is_known_env_name(name) and name not in referenced:
            problems.append(f"{name} is not a setting (and no other value refers to it)")
    return problems


def container_env(
    container: Mapping[str, Any],
    docs: list[dict[str, Any]],
    *,
    fields: Mapping[str, str],
    secrets: Mapping[tuple[str, str], str],
) -> dict[str, str]:
    """The environment the kubelet would give ``container``.

    ``fields``: downward-API values by fieldPath (``metadata.name`` ...); ``secrets``: values by
    (secret name, key). A missing optional secret key leaves the variable out, as the kubelet does.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"unsupported envFrom {source}"
        for key, value in config_map_data(docs, source["configMapRef"]["name"]).items():
            env[source.get("prefix", "") + key] = value
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = expand(entry["value"], env)
            continue
        source = entry["valueFrom"]
        if "fieldRef" in source:
            env[name] = fields[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            key = (ref["name"], ref["key"])
            if key in secrets:
                env[name] = secrets[key]
            else:
                assert ref.get("optional"), f"{name}: secret {key} is required but was not supplied"
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = config_map_data(docs, ref["name"])[ref["key"]]
        else:
            raise AssertionError(f"{name}: unsupported valueFrom {source}")
    return env


def compose() -> dict[str, Any]:
    """docker-compose.yml as data (YAML anchors and merge keys resolved)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


_INTERPOLATION_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def compose_value(value: object) -> str:
    """A compose environment value with ``${VAR:-default}`` interpolated from its default."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return _INTERPOLATION_RE.sub(lambda m: m.group(2) or "", text)
