"""The README's configuration table against the settings classes: every env var listed, none extra.

The env var names come from the pydantic models (a field ``foo_bar`` is ``FOO_BAR``; a field with
``AliasChoices`` is read under each choice, upper-cased) plus the ``VAST_ENV_<NAME>`` prefix rule, so
a new setting without a README row (or a row for a removed one) fails here, naming the variable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from provisioner import settings

README = Path(__file__).resolve().parents[2] / "README.md"
#: every settings class a command loads (``Settings`` for run, ``ReaperSettings`` for reap, ...)
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    settings.RedisAccess,
    settings.VastAccess,
    settings.Settings,
    settings.ReaperSettings,
)
#: how the README writes the prefix rule's row
PREFIX_ROW = f"{settings.REMOTE_ENV_PREFIX}<NAME>"
_NAME_RE = re.compile(r"`([A-Z][A-Z0-9_]*(?:<NAME>)?)`")


@dataclass(frozen=True)
class EnvVar:
    """One setting as the environment spells it: its primary name, the other names read, its default."""

    name: str
    aliases: tuple[str, ...]
    field: FieldInfo


@dataclass(frozen=True)
class Row:
    """One row of the README's configuration table."""

    name: str
    default: str
    text: str


def env_names(name: str, field: FieldInfo) -> tuple[str, ...]:
    """The env var names a field is read under (pydantic-settings, case-insensitive): primary first."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        names = [choice.upper() for choice in alias.choices if isinstance(choice, str)]
    elif isinstance(alias, str):
        names = [alias.upper()]
    else:
        names = [name.upper()]
    return tuple(dict.fromkeys(names))


def env_vars() -> dict[str, EnvVar]:
    """Every env var the settings classes read, by primary name (derived fields excluded)."""
    found: dict[str, EnvVar] = {}
    for cls in SETTINGS_CLASSES:
        for name, field in cls.model_fields.items():
            if field.exclude:
                continue
            primary, *aliases = env_names(name, field)
            found[primary] = EnvVar(primary, tuple(aliases), field)
    return found


def config_rows() -> dict[str, Row]:
    """The README's configuration table: variable -> row (the section up to the next ``## ``)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, Row] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) < 3:
            continue
        for name in _NAME_RE.findall(cells[0]):
            assert name not in rows, f"README configuration table: {name} has two rows"
            rows[name] = Row(name, cells[1], line)
    return rows


def documented_default(value: object) -> str | None:
    """A plain default as the README's default cell writes it; None when it is not a plain value."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"{value:g}"
    if isinstance(value, str | Path):
        return str(value)
    return None


def test_every_env_var_the_settings_read_has_a_row() -> None:
    """A variable the settings read but the README's configuration table lacks is named."""
    rows = config_rows()
    missing = sorted(set(env_vars()) - set(rows))
    assert not missing, f"README configuration table lacks a row for: {', '.join(missing)}"
    assert PREFIX_ROW in rows, f"README configuration table lacks the {PREFIX_ROW} row"


def test_no_row_for_a_variable_nothing_reads() -> None:
    """A README row for a variable no settings class reads (removed or misspelt) is named."""
    extra = sorted(set(config_rows()) - set(env_vars()) - {PREFIX_ROW})
    assert not extra, f"README configuration table has rows nothing reads: {', '.join(extra)}"


def test_other_accepted_names_are_mentioned_in_their_row() -> None:
    """A variable read under a second name (``BLACKLIST_REDIS``) says so in its row."""
    rows = config_rows()
    unmentioned = [
        f"{alias} (in the {var.name} row)"
        for var in env_vars().values()
        for alias in var.aliases
        if var.name in rows and f"`{alias}`" not in rows[var.name].text
    ]
    assert not unmentioned, f"README configuration table does not mention: {', '.join(unmentioned)}"


def test_required_variables_are_marked_required() -> None:
    """Exactly the variables without a default are marked **required**."""
    rows = config_rows()
    required = {name for name, var in env_vars().items() if var.field.is_required()}
    marked = {name for name, row in rows.items() if "**required**" in row.default}
    assert required == marked, f"required: {sorted(required)}; marked in the README: {sorted(marked)}"
    assert required == set(settings.Settings.REQUIRED) | set(settings.ReaperSettings.REQUIRED)


def test_plain_defaults_match_the_code() -> None:
    """Each plain default (number, flag, text) is the one the code has."""
    rows = config_rows()
    wrong = []
    for name, var in env_vars().items():
        default = var.field.default
        if name not in rows or default is PydanticUndefined or default is None:
            continue
        expected = documented_default(default)
        cell = rows[name].default
        if expected is None or not (cell.startswith("`") and cell.endswith("`")):
            continue
        written = cell.strip("`")
        if expected != written and not _same_number(expected, written):
            wrong.append(f"{name}: README {written!r}, code {expected!r}")
    assert not wrong, "README defaults differ from the code: " + "; ".join(wrong)


def test_the_table_is_read() -> None:
    """The parser finds the table (so the tests above cannot pass on an empty read)."""
    rows = config_rows()
    assert {"POD_NAME", "VAST_API_KEY", "BLACKLIST_REDIS_URL", PREFIX_ROW} <= set(rows)
    assert rows["NGINX_LISTEN_PORT"].default == "`3000`"
    assert len(env_vars()) > 50


def _same_number(left: str, right: str) -> bool:
    try:
        return float(left) == float(right)
    except ValueError:
        return False
