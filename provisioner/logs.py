"""Log set-up: one JSON object per line (or plain text), each carrying the pod name and instance id.

Standard ``logging`` with a small formatter; extra fields passed through
``extra=`` (``instance_id``, ``event``, ``actual_status`` …) land as keys in
the JSON object. The instance id of a line is the one the call passed, else the
instance this pod currently serves or boots (``set_instance_id``, kept up to
date by the daemon). Lines copied from the remote container carry
``"source": "remote"`` (``[remote]`` in text). Secrets never reach a log call
(they live in ``SecretStr``), and a last-resort filter masks any registered
secret anyway.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

#: the ``source`` field of lines copied from the remote container's log
REMOTE_SOURCE = "remote"
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class SecretMask(logging.Filter):
    """Replace any registered secret that slipped into a message or field with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self.mask(record.getMessage())
            record.args = None
            for key, value in list(vars(record).items()):
                if key not in _STANDARD and isinstance(value, str):
                    setattr(record, key, self.mask(value))
        return True


class ContextFilter(logging.Filter):
    """Stamp every record with the pod name (and the current instance id unless the call set one)."""

    def __init__(self, pod: str) -> None:
        super().__init__()
        self.pod = pod
        self.instance_id: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        record.pod = self.pod
        if getattr(record, "instance_id", None) is None:
            record.instance_id = self.instance_id
        return True


def set_instance_id(instance_id: int | None) -> None:
    """Stamp later lines without an instance id of their own with ``instance_id`` (None: no instance)."""
    for handler in logging.getLogger().handlers:
        for flt in handler.filters:
            if isinstance(flt, ContextFilter):
                flt.instance_id = instance_id


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "msg": ..., "pod": ..., "instance_id": ..., ...}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time level pod[instance] message key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        pod = getattr(record, "pod", "-")
        iid = getattr(record, "instance_id", None)
        where = f"{pod}[{iid}]" if iid is not None else pod
        source = "[remote] " if getattr(record, "source", None) == REMOTE_SOURCE else ""
        line = f"{stamp} {record.levelname.lower():7} {where} {source}{record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            line += f" ({record.exc_info[0].__name__}: {record.exc_info[1]})"
        return line


def add_secret(secret: str) -> None:
    """Mask ``secret`` too, in every line from now on (one read after logging was set up)."""
    for handler in logging.getLogger().handlers:
        for flt in handler.filters:
            if isinstance(flt, SecretMask) and secret and len(secret) >= 4:
                flt.secrets.append(secret)


def setup_logging(
    *, pod: str, fmt: str = "json", debug: bool = False, secrets: Iterable[str] = ()
) -> ContextFilter:
    """Configure the root logger for the provisioner; returns the context filter to update."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    context = ContextFilter(pod)
    handler.addFilter(context)
    handler.addFilter(SecretMask(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return context
