"""Helpers shared by the packaging tests (Dockerfile, Kubernetes manifests, docker-compose)."""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

import pytest

from provisioner import settings
from tests import manifests
from tests.manifests import ROOT

SECRET_NAME = "vast-credentials"
SECRET_PATTERN = re.compile(r"(KEY|SECRET|TOKEN|PASSW|LOGIN|CREDENTIAL)", re.IGNORECASE)


def defaults() -> settings.Settings:
    """Settings with only the required values: the defaults the manifests must agree with."""
    return settings.Settings(
        pod_name="vast-pod-0",
        vast_api_key="test-key",
        vast_template_name="t",
        vast_template_image="repo/image:1",
    )


def load_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> settings.Settings:
    """``load_settings()`` over exactly ``env`` (nothing else from this process's environment)."""
    for name in list(os.environ):
        if manifests.is_known_env_name(name.upper()):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings.load_settings()


def project() -> dict[str, Any]:
    """The [project] table of pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        table: dict[str, Any] = tomllib.load(f)["project"]
    return table
