"""Container-side details: env flags and port keys, image names as docker prints them, log text."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

DEFAULT_LOG_TAIL = 1000
MAX_PORTS = 64


def parse_env_flags(text: str | None) -> dict[str, str]:
    """A template's env string (`-e K=V -p 8000:8000 -h name`) as the create-instance env dict."""
    result: dict[str, str] = {}
    if not text:
        return result
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    flag: str | None = None
    for token in tokens:
        if flag is None:
            flag = token if token in ("-e", "-p", "-h", "-v", "-n") else None
            continue
        if flag == "-e":
            key, sep, value = token.partition("=")
            if sep:
                result[key] = value
        elif flag in ("-p", "-v", "-n"):
            result[f"{flag} {token}"] = "1"
        else:
            result[flag] = token
        flag = None
    return result


def port_keys(env: Mapping[str, str]) -> list[str]:
    """Docker-style port keys ("8000/tcp", "9000/udp") for each `-p HOST:CONTAINER[/proto]` env key."""
    keys: list[str] = []
    for name in env:
        if not name.startswith("-p "):
            continue
        container = name[3:].strip().rsplit(":", 1)[-1]
        number, _, proto = container.partition("/")
        if number.isdigit() and proto in ("", "tcp", "udp"):
            key = f"{int(number)}/{proto or 'tcp'}"
            if key not in keys:
                keys.append(key)
    return keys[:MAX_PORTS]


def split_image(image: str) -> tuple[str, str]:
    """("library/nginx", "latest") for "nginx", as docker pull prints them."""
    image = image.partition("@")[0]
    name, tag = image, "latest"
    if ":" in image.rsplit("/", 1)[-1]:
        name, _, tag = image.rpartition(":")
    return (name if "/" in name else f"library/{name}"), tag or "latest"


def template_image(template: Mapping[str, Any]) -> str | None:
    """The image a template runs: `image`, with `:tag` added when the image has none."""
    image = template.get("image")
    if not isinstance(image, str) or not image:
        return None
    tag = template.get("tag")
    if tag and ":" not in image.rsplit("/", 1)[-1]:
        return f"{image}:{tag}"
    return image


def render_logs(entries: Iterable[tuple[float, str, str]], *, tail: Any, grep: Any, daemon_only: bool) -> str:
    """Log text for `request_logs`: timestamped lines in time order, grep-filtered, the last `tail` ones."""
    ordered = sorted(entries, key=lambda entry: entry[0])
    lines = [f"{_iso(at)} {text}" for at, source, text in ordered if not daemon_only or source == "daemon"]
    if grep:
        lines = [line for line in lines if str(grep) in line]
    try:
        count = int(tail) if tail not in (None, "") else DEFAULT_LOG_TAIL
    except (TypeError, ValueError):
        count = DEFAULT_LOG_TAIL
    lines = lines[-count:] if count > 0 else []
    return "\n".join(lines) + ("\n" if lines else "")


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
