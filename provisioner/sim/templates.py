"""Templates as Vast keeps them (docs/vast-api.md §9): numeric `id`, content `hash_id`, search, edit, delete.

`hash_id` is the md5 of the canonical JSON of the content fields (creator excluded, so two users' identical
templates share a hash). Creating content identical to one of your templates returns that template. Edits
recompute the hash: `PUT /api/v0/template/` edits in place (the old hash is gone), `PUT /api/v1/template/`
makes a new version and keeps the old hash resolvable for renting, as the 1.9.1 client describes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from provisioner.sim import filters

CONTENT_FIELDS: dict[str, Any] = {
    "name": None,
    "image": None,
    "tag": None,
    "href": None,
    "repo": None,
    "env": None,
    "onstart": None,
    "args_str": None,
    "jup_direct": False,
    "ssh_direct": False,
    "use_jupyter_lab": False,
    "runtype": "args",
    "use_ssh": False,
    "jupyter_dir": None,
    "docker_login_repo": None,
    "docker_login_user": None,
    "docker_login_pass": None,
    "extra_filters": {},
    "recommended_disk_space": None,
    "readme": None,
    "readme_visible": True,
    "desc": None,
    "private": True,
}
# Columns template search accepts in select_filters (§9.3), plus the other stored fields.
SEARCHABLE = frozenset(CONTENT_FIELDS) - {"docker_login_pass"} | {
    "id",
    "hash_id",
    "creator_id",
    "created_at",
    "count_created",
    "default_tag",
    "recent_create_date",
    "recommended",
}
_PUBLIC_CREATOR_ID = 1


class TemplateError(Exception):
    """A rejected template call, with the HTTP status and Vast's error body."""

    def __init__(self, status: int, error: str, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.body: dict[str, Any] = {"success": False, "error": error, "msg": msg}


def content_hash(content: Mapping[str, Any]) -> str:
    """md5 of the canonical JSON of the content fields: 32 hex characters."""
    canonical = {name: content.get(name, default) for name, default in CONTENT_FIELDS.items()}
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.md5(blob.encode(), usedforsecurity=False).hexdigest()


class TemplateStore:
    """All templates: the caller's, two public ones from another user, and old versions kept by v1 edits."""

    def __init__(self, clock: Callable[[], float], user_id: int) -> None:
        self._clock = clock
        self._user_id = user_id
        self._rows: dict[int, dict[str, Any]] = {}
        self._old_versions: dict[str, dict[str, Any]] = {}
        self._next_id = 310_000
        self._seed_public()

    def _seed_public(self) -> None:
        for name, image, tag in (
            ("PyTorch (Vast)", "vastai/pytorch", "latest"),
            ("vLLM", "vllm/vllm-openai", "v0.8.5"),
        ):
            body = {"name": name, "image": image, "tag": tag, "env": "-p 8000:8000", "private": False}
            self._insert(body, _PUBLIC_CREATOR_ID)

    def _insert(self, body: Mapping[str, Any], creator_id: int) -> dict[str, Any]:
        content = {name: body.get(name, default) for name, default in CONTENT_FIELDS.items()}
        now = self._clock()
        row: dict[str, Any] = {
            "id": self._next_id,
            "hash_id": content_hash(content),
            **content,
            "creator_id": creator_id,
            "count_created": 0,
            "created_at": now,
            "recent_create_date": None,
            "default_tag": content["tag"],
            "recommended": False,
        }
        self._next_id += 1
        self._rows[row["id"]] = row
        return row

    @staticmethod
    def public_view(row: Mapping[str, Any]) -> dict[str, Any]:
        """The row as the API returns it (the registry password is never echoed)."""
        return {k: v for k, v in row.items() if k != "docker_login_pass"}

    def all_rows(self) -> list[dict[str, Any]]:
        """Every current template (for `/_sim/state`)."""
        return [self.public_view(r) for r in self._rows.values()]

    def create(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """POST: (template, created); identical content of one of the caller's templates returns it."""
        _check_content(body)
        wanted = content_hash(body)
        for row in self._rows.values():
            if row["creator_id"] == self._user_id and row["hash_id"] == wanted:
                return self.public_view(row), False
        return self.public_view(self._insert(body, self._user_id)), True

    def _own(self, *, template_id: Any = None, hash_id: Any = None) -> dict[str, Any]:
        for row in self._rows.values():
            if row["creator_id"] != self._user_id:
                continue
            if template_id is not None and str(row["id"]) == str(template_id):
                return row
            if hash_id is not None and row["hash_id"] == hash_id:
                return row
        raise TemplateError(404, "not_found", "Template not found")

    @staticmethod
    def _rehash(row: dict[str, Any]) -> None:
        row["hash_id"] = content_hash(row)
        row["default_tag"] = row.get("tag")

    def edit_in_place(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT /api/v0/template/: `hash_id` plus the changed fields; same id, new hash, old hash gone."""
        if not body.get("hash_id") and body.get("id") is None:
            raise TemplateError(400, "invalid_args", "hash_id is required")
        row = self._own(template_id=body.get("id"), hash_id=body.get("hash_id"))
        for name in CONTENT_FIELDS:
            if name in body:
                row[name] = body[name]
        _check_content(row)
        self._rehash(row)
        return self.public_view(row)

    def new_version(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT /api/v1/template/: the full template with `id` and `hash_id`; the old hash stays resolvable."""
        if body.get("id") is None:
            raise TemplateError(400, "invalid_args", "id is required")
        row = self._own(template_id=body.get("id"))
        _check_content(body)
        previous = dict(row)
        for name, default in CONTENT_FIELDS.items():
            row[name] = body.get(name, default)
        self._rehash(row)
        if row["hash_id"] != previous["hash_id"]:
            self._old_versions[previous["hash_id"]] = previous
        return self.public_view(row)

    def delete(self, body: Mapping[str, Any]) -> int:
        """DELETE by `template_id` or `hash_id`; returns the deleted id."""
        if body.get("template_id") is None and not body.get("hash_id"):
            raise TemplateError(400, "invalid_args", "template_id or hash_id is required")
        row = self._own(template_id=body.get("template_id"), hash_id=body.get("hash_id"))
        del self._rows[row["id"]]
        return int(row["id"])

    def search(self, raw_filters: Any, order_by: Any) -> list[dict[str, Any]]:
        """The caller's templates and public ones matching `select_filters`; raises FilterError."""
        conditions = filters.parse_filters(raw_filters, allowed=lambda c: c in SEARCHABLE)
        visible = [
            r for r in self._rows.values() if r["creator_id"] == self._user_id or not r.get("private", True)
        ]
        hits = [self.public_view(r) for r in visible if filters.row_matches(r, conditions)]
        columns, descending = _template_order(order_by)
        return [dict(r) for r in filters.sort_rows(hits, columns, descending)]

    def resolve(self, hash_id: str) -> dict[str, Any] | None:
        """A template usable for renting by hash: a visible current one, or an old v1 version."""
        for row in self._rows.values():
            if row["hash_id"] == hash_id and (row["creator_id"] == self._user_id or not row.get("private")):
                return row
        return self._old_versions.get(hash_id)

    def count_rental(self, template_id: int) -> None:
        """Bump `count_created` when an instance is created from the template."""
        row = self._rows.get(template_id)
        if row is not None:
            row["count_created"] += 1
            row["recent_create_date"] = self._clock()


def _check_content(body: Mapping[str, Any]) -> None:
    if not isinstance(body.get("name"), str) or not body.get("name"):
        raise TemplateError(400, "invalid_args", "Template name is required")
    if not isinstance(body.get("image"), str) or not body.get("image"):
        raise TemplateError(400, "invalid_args", "Template image is required")
    env = body.get("env")
    if env is not None and not isinstance(env, str):
        raise TemplateError(400, "invalid_args", "Template env must be a string of docker flags")


def _template_order(order_by: Any) -> tuple[list[str], list[bool]]:
    """`order_by` as a column name, a `{"col","dir"}` list, or nothing (id ascending)."""
    if order_by is None or order_by == "":
        return ["id"], [False]
    items = order_by if isinstance(order_by, list) else [order_by]
    columns: list[str] = []
    descending: list[bool] = []
    for item in items:
        if isinstance(item, str):
            col, direction = item, "asc"
        elif isinstance(item, Mapping) and isinstance(item.get("col"), str):
            col, direction = item["col"], str(item.get("dir", "asc"))
        else:
            raise filters.FilterError(f"invalid order_by entry {item!r}")
        if col not in SEARCHABLE:
            raise filters.FilterError(f"Invalid order_by column: {col}")
        columns.append(col)
        descending.append(direction.lower() == "desc")
    return [*columns, "id"], [*descending, False]
