"""Vast's filter language on the server side: `{"col": {"op": value}}` conditions, coercion and ordering.

Shared by offer search, the v1 instance list and template search. Coercion follows docs/vast-api.md §11:
the CLI sends numbers as strings (`{"eq": "1"}`), `gpu_name` with spaces (underscores are accepted too),
`geolocation` compares the trailing two-letter country code, `driver_version` may arrive as the CLI's
integer form (`535.86.05` -> 535086005). Ordering puts nulls last on ascending order, as PostgreSQL does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OPERATORS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})
_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})

# Country names that hosts write in full instead of the code (the docs' v1 example shows one).
_COUNTRY_NAMES = {
    "united states": "US",
    "canada": "CA",
    "germany": "DE",
    "france": "FR",
    "japan": "JP",
    "norway": "NO",
    "united kingdom": "GB",
    "netherlands": "NL",
    "sweden": "SE",
    "singapore": "SG",
}


class FilterError(ValueError):
    """A filter or ordering the server rejects (answered as 400 invalid_request)."""


@dataclass(frozen=True)
class Condition:
    """One `column op value` test."""

    column: str
    op: str
    value: Any


def parse_filters(raw: Any, *, allowed: Callable[[str], bool] | None = None) -> list[Condition]:
    """Turn a select_filters / search dict into conditions; a bare value means `eq`."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        raise FilterError("filters must be a JSON object")
    conditions: list[Condition] = []
    for column, spec in raw.items():
        if allowed is not None and not allowed(column):
            raise FilterError(f"Invalid filter column: {column}")
        if isinstance(spec, Mapping):
            for op, value in spec.items():
                if op not in OPERATORS:
                    raise FilterError(f"Invalid filter operator {op!r} for column {column}")
                listed = value if isinstance(value, list) or op not in ("in", "notin") else [value]
                conditions.append(Condition(column, op, listed))
        else:
            conditions.append(Condition(column, "eq", spec))
    return conditions


def row_matches(row: Mapping[str, Any], conditions: Sequence[Condition]) -> bool:
    """Whether `row` passes every condition (a column the row lacks compares as null)."""
    return all(_test(row.get(c.column), c) for c in conditions)


def country_code(geolocation: Any) -> str | None:
    """The trailing two-letter country code of a free-text geolocation ("Texas, US" -> "US")."""
    if not isinstance(geolocation, str) or not geolocation.strip():
        return None
    last = geolocation.rsplit(",", 1)[-1].strip()
    if len(last) == 2 and last.isalpha():
        return last.upper()
    return _COUNTRY_NAMES.get(last.lower())


def driver_version_number(version: str) -> int | None:
    """The CLI's integer form of a driver version: each of three parts padded to 3 digits."""
    parts = version.strip().split(".")
    try:
        numbers = [int(p) for p in parts[:3]] + [0] * (3 - len(parts[:3]))
    except ValueError:
        return None
    return numbers[0] * 1_000_000 + numbers[1] * 1_000 + numbers[2]


def _test(actual: Any, cond: Condition) -> bool:
    """Evaluate one condition against one value."""
    if cond.op in ("in", "notin"):
        hit = any(_equal(actual, cond.column, item) for item in cond.value)
        return hit if cond.op == "in" else not hit
    if cond.op == "eq":
        return _equal(actual, cond.column, cond.value)
    if cond.op == "neq":
        return not _equal(actual, cond.column, cond.value)
    left, right = _comparable(actual, cond.column, cond.value)
    if left is None or right is None:
        return False
    try:
        if cond.op == "gt":
            return bool(left > right)
        if cond.op == "gte":
            return bool(left >= right)
        if cond.op == "lt":
            return bool(left < right)
        return bool(left <= right)
    except TypeError:
        return False


def _equal(actual: Any, column: str, wanted: Any) -> bool:
    """Equality after coercing `wanted` to the type of `actual`."""
    if column == "geolocation" and isinstance(wanted, str) and len(wanted.strip()) == 2:
        return country_code(actual) == wanted.strip().upper()
    if actual is None or wanted is None:
        return actual is None and wanted is None
    left, right = _comparable(actual, column, wanted)
    if left is None or right is None:
        return False
    if isinstance(left, str) and isinstance(right, str):
        return left.casefold() == right.casefold() if column == "geolocation" else left == right
    return bool(left == right)


def _comparable(actual: Any, column: str, wanted: Any) -> tuple[Any, Any]:
    """Both sides in one type, or None on a side that cannot be coerced."""
    if actual is None or wanted is None:
        return None, None
    if isinstance(actual, bool):
        return actual, _as_bool(wanted)
    if isinstance(actual, int | float):
        return actual, _as_number(wanted)
    if isinstance(actual, str):
        if column == "driver_version" and _as_number(wanted) is not None and not isinstance(wanted, str):
            return driver_version_number(actual), _as_number(wanted)
        if column == "gpu_name" and isinstance(wanted, str):
            return actual, wanted.replace("_", " ")
        if isinstance(wanted, str):
            return actual, wanted
        if isinstance(wanted, bool):
            return actual, str(wanted).lower()
        if isinstance(wanted, int | float):
            number = _as_number(actual)
            return (number, wanted) if number is not None else (actual, str(wanted))
    return actual, wanted


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _order_value_cmp(a: Any, b: Any) -> int:
    """Compare two column values; null is greater than anything (PostgreSQL's default)."""
    if a is None or b is None:
        return (a is None) - (b is None)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return (a > b) - (a < b)
    sa, sb = str(a), str(b)
    return (sa > sb) - (sa < sb)


def compare_keys(a: Sequence[Any], b: Sequence[Any], descending: Sequence[bool]) -> int:
    """Compare two sort keys column by column, honouring each column's direction."""
    for left, right, desc in zip(a, b, descending, strict=True):
        result = _order_value_cmp(left, right)
        if result:
            return -result if desc else result
    return 0


def sort_rows(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], descending: Sequence[bool]
) -> list[Mapping[str, Any]]:
    """Rows sorted by `columns`; stable, nulls last on ascending columns."""

    def cmp(x: Mapping[str, Any], y: Mapping[str, Any]) -> int:
        return compare_keys([x.get(c) for c in columns], [y.get(c) for c in columns], descending)

    return sorted(rows, key=functools.cmp_to_key(cmp))


def parse_offer_order(raw: Any) -> tuple[list[str], list[bool]]:
    """Offer search `order`: a list of `[field, "asc"|"desc"]` (a bare field name means asc)."""
    if raw is None:
        return ["score"], [True]
    if not isinstance(raw, list):
        raise FilterError("order must be a list of [field, direction] pairs")
    columns: list[str] = []
    descending: list[bool] = []
    for item in raw:
        if isinstance(item, str):
            field, direction = item, "asc"
        elif isinstance(item, list | tuple) and len(item) in (1, 2) and isinstance(item[0], str):
            field = item[0]
            direction = str(item[1]) if len(item) == 2 else "asc"
        else:
            raise FilterError(f"invalid order entry {item!r}")
        if direction.lower() not in ("asc", "desc"):
            raise FilterError(f"invalid order direction {direction!r}")
        columns.append(field)
        descending.append(direction.lower() == "desc")
    return columns, descending
