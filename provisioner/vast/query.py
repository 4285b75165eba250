"""The Vast.ai search-query language and the search request body (pure: no I/O).

Owns three things, each written to match what the official ``vastai`` 1.9.1 CLI
sends (``vastai/api/query.py::parse_query`` and ``search__offers`` in
``vastai/cli/commands/offers.py``), down to key order and value types:

- :func:`parse_query`: the CLI's query string (``gpu_name=RTX_3060 num_gpus>=1``)
  to the JSON filter dict, with the CLI's default filters;
- :func:`load_filter`: the value of ``VAST_SEARCH_QUERY``, either a query string
  or the console's JSON filter;
- :func:`search_body` and :func:`merge_filters`: the ``POST /api/v0/bundles/``
  body, and adding constraints (price caps, bans) to a filter.

Deliberate divergences from the official parser, each because the official
result silently rents something other than what was asked for, or sends a body
the server cannot use. Everything the official parser rejects, we reject too.

- An unknown field name is an error (the official parser only warns on stderr
  and still sends it, so a typo such as ``gpu_nmae`` silently drops a
  constraint). Accepted: the official ``offers_fields``, its aliases, and the
  documented extras ``hosting_type``, ``os_version`` and ``reliability2``.
- A bracketed list with an operator other than ``in``/``notin``
  (``gpu_name=[A,B]`` would send the one string ``"A,B"``).
- A value that is empty once its quotes are removed (``gpu_name=""``), also as a
  list element.
- ``nan`` or ``inf`` for a multiplied field (not valid JSON once sent).
- A dotted ``driver_version`` whose three parts are not 1 to 3 digits each
  (``1..2`` or ``5_35.1.1`` would be padded into a meaningless number).
- A value of the wrong type for a field whose type the official field table
  gives (``vastai search offers --help``): ``num_gpus=lots``, ``reliability>abc``
  or ``datacenter=yes`` are sent as strings by the official parser, the server
  matches nothing, and a provisioner would search forever. Integers
  (``num_gpus``, ``compute_cap`` ...) need an integer, floats (``reliability``,
  ``dph`` ...) a finite number, booleans (``verified`` ...) ``true``/``false``,
  also in list elements and in the JSON form. Valid values are still sent
  exactly as the official parser sends them (numbers as strings).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from provisioner import errors
from provisioner.vast import fields

# The official tokenizer, verbatim: field, operator, spaces, value, spaces.
_TOKEN = re.compile(
    r"([a-zA-Z0-9_]+)( *[=><!]+| +(?:[lg]te?|nin|neq|eq|not ?eq|not ?in|in) )?( *)"
    r"(\[[^\]]+\]|\"[^\"]+\"|[^ ]+)?( *)"
)

_OPERATORS: dict[str, str] = {
    ">=": "gte",
    ">": "gt",
    "gt": "gt",
    "gte": "gte",
    "<=": "lte",
    "<": "lt",
    "lt": "lt",
    "lte": "lte",
    "!=": "neq",
    "==": "eq",
    "=": "eq",
    "eq": "eq",
    "neq": "neq",
    "noteq": "neq",
    "not eq": "neq",
    "notin": "notin",
    "not in": "notin",
    "nin": "notin",
    "in": "in",
}
_LIST_OPERATORS = frozenset({"in", "notin"})
#: the operators of the JSON form, as the API spells them
_WIRE_OPERATORS = frozenset(_OPERATORS.values())
_WILDCARDS = frozenset({"?", "*", "any"})

_KNOWN_FIELDS = fields.OFFER_FIELDS | fields.EXTRA_FIELDS
_SPELLABLE_FIELDS = sorted(_KNOWN_FIELDS | fields.ALIASES.keys())
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_DRIVER_PART = re.compile(r"[0-9]{1,3}")
# Keys of the search body that are not filters; a filter must not set them.
_BODY_KEYS = frozenset({"order", "type", "limit", "allocated_storage"})


def _default_filter() -> dict[str, Any]:
    """Return the filters the CLI adds unless ``-n``: verified, not external, rentable."""
    return {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}}


def parse_query(text: str, *, defaults: bool = True) -> dict[str, Any]:
    """Parse a CLI search query into the JSON filter ``vastai search offers`` sends.

    With ``defaults`` the CLI's default filters come first, and a wildcard
    (``verified=any``) removes one. Raises :class:`errors.QueryError` naming the
    bad part.
    """
    text = text.strip()
    result = _default_filter() if defaults else {}
    matches = list(_TOKEN.finditer(text))
    _check_consumed(text, matches)
    previous = ""
    for match in matches:
        _apply_token(result, match, previous)
        previous = match.group(0).strip()
    return result


def _check_consumed(text: str, matches: list[re.Match[str]]) -> None:
    """Raise if the tokens do not cover the whole text (the CLI's "Unconsumed text")."""
    position = 0
    for match in matches:
        if match.start() != position:
            break
        position = match.end()
    if position != len(text):
        raise errors.QueryError(f"unexpected text at {text[position:]!r}: expected field op value")


def _apply_token(result: dict[str, Any], match: re.Match[str], previous: str) -> None:
    """Add one ``field op value`` token to ``result``, as the official parser does."""
    field, raw_op, _, raw_value, _ = match.groups(default="")
    token = match.group(0).strip()
    op = raw_op.strip()
    if not op:
        if previous and fields.ALIASES.get(field, field) not in _KNOWN_FIELDS:
            raise errors.QueryError(
                f"unexpected text at '{previous} {token}': quote values with spaces or use '_'"
            )
        raise errors.QueryError(f"missing operator in {token!r}")
    op_name = _OPERATORS.get(op)
    if op_name is None:
        raise errors.QueryError(f"unknown operator {op!r} in {token!r}")
    field = fields.ALIASES.get(field, field)
    if field not in _KNOWN_FIELDS:
        raise errors.QueryError(_unknown_field_message(match.group(1)))
    is_list = op_name in _LIST_OPERATORS
    if not is_list and (raw_value.startswith("[") or raw_value.endswith("]")):
        raise errors.QueryError(f"a [list] needs 'in' or 'notin' in {token!r}")

    text = raw_value.strip(",[]")
    value: Any = text
    if field == "driver_version" and "." in text:
        if is_list:
            raise errors.QueryError(f"driver_version does not take a list in {token!r}")
        value = _driver_number(text, token)
    elif is_list:
        value = [part.strip() for part in text.split(",") if part.strip()]
    if not value:
        raise errors.QueryError(f"missing value in {token!r}")
    if isinstance(value, str) and value in _WILDCARDS:
        if op_name != "eq":
            raise errors.QueryError(f"a wildcard only works with '=' in {token!r}")
        result.pop(field, None)
        return
    converted = _convert(field, value, token)
    _check_type(field, converted, token)
    result.setdefault(field, {})[op_name] = converted


def _convert(field: str, value: Any, token: str) -> Any:
    """Return the JSON value: ``_`` → space, quotes off, units multiplied, booleans and null."""
    if isinstance(value, int):  # a padded driver version
        return value
    if isinstance(value, list):
        items = [item.replace("_", " ").strip('"') for item in value]
        if not all(items):
            raise errors.QueryError(f"empty list element in {token!r}")
        if field in fields.MULTIPLIERS:
            raise errors.QueryError(f"{field} does not take a list in {token!r}")
        return items
    text = str(value).replace("_", " ").strip('"')
    if not text:
        raise errors.QueryError(f"empty value in {token!r}")
    if field in fields.MULTIPLIERS:
        try:
            number = float(text)
        except ValueError:
            raise errors.QueryError(f"{field} needs a number in {token!r}") from None
        if not math.isfinite(number):
            raise errors.QueryError(f"{field} needs a finite number in {token!r}")
        return number * fields.MULTIPLIERS[field]
    return {"true": True, "True": True, "false": False, "False": False, "null": None, "None": None}.get(
        text, text
    )


def _check_type(field: str, value: Any, where: str) -> None:
    """Raise if ``value`` (or an element of it) does not fit the field's type in the official table."""
    if field in fields.INT_FIELDS:
        check, wanted = _is_integer, "an integer"
    elif field in fields.FLOAT_FIELDS:
        check, wanted = _is_number, "a number"
    elif field in fields.BOOL_FIELDS:
        check, wanted = _is_bool, "true or false"
    else:
        return
    for item in value if isinstance(value, list) else [value]:
        if not check(item):
            raise errors.QueryError(f"{field} needs {wanted}, not {item!r}, in {where!r}")


def _is_integer(item: Any) -> bool:
    """An int (not a bool), or the text of one."""
    if isinstance(item, str):
        return bool(_INT_TEXT.fullmatch(item.strip()))
    return isinstance(item, int) and not isinstance(item, bool)


def _is_number(item: Any) -> bool:
    """A finite int or float (not a bool), or the text of one (no ``_`` digit separators)."""
    if isinstance(item, str):
        if "_" in item:
            return False
        try:
            item = float(item)
        except ValueError:
            return False
    return isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item)


def _is_bool(item: Any) -> bool:
    return isinstance(item, bool)


def _driver_number(text: str, token: str) -> int:
    """Return ``535.86.05`` as ``535086005``: three parts, each padded to 3 digits."""
    parts = text.split(".")
    if len(parts) != 3 or not all(_DRIVER_PART.fullmatch(part) for part in parts):
        raise errors.QueryError(f"driver_version must look like 535.86.05 in {token!r}")
    number = int("".join(part.zfill(3) for part in parts))
    if number == 0:  # the official parser treats 0 as a blank value
        raise errors.QueryError(f"missing value in {token!r}")
    return number


def _unknown_field_message(field: str) -> str:
    """Return the error for an unknown field, with the closest known name if any."""
    close = difflib.get_close_matches(field, _SPELLABLE_FIELDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {field!r}{hint}"


def load_filter(value: str) -> dict[str, Any]:
    """Read ``VAST_SEARCH_QUERY``: a console JSON filter (``{...}``) or a CLI query string.

    The JSON form must be an object of operator objects and is returned as given, plus
    ``rentable eq true`` unless it names ``rentable`` or ``rented`` (the server does not add it: a
    search could return offers already taken, each a lost rent slot); the query form gets the CLI's
    defaults.
    """
    if not value.strip().startswith("{"):
        return parse_query(value)
    try:
        loaded = json.loads(value, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise errors.QueryError(f"invalid JSON filter: {exc}") from None
    if not isinstance(loaded, dict):
        raise errors.QueryError("a JSON filter must be an object")
    for field, constraint in loaded.items():
        if not isinstance(constraint, dict):
            raise errors.QueryError(
                f"JSON filter field {field!r} must map operators to values, like {{'eq': 1}}"
            )
        if field in _BODY_KEYS:
            raise errors.QueryError(f"{field!r} is not a filter field; it is set separately")
        if field not in _KNOWN_FIELDS:  # a typo would drop the constraint without a word
            raise errors.QueryError(_unknown_field_message(field))
        for op, operand in constraint.items():
            if op not in _WIRE_OPERATORS:
                raise errors.QueryError(
                    f"unknown operator {op!r} for {field!r} (one of {sorted(_WIRE_OPERATORS)})"
                )
            _check_type(field, operand, json.dumps({field: constraint}))
    if not loaded.keys() & {"rentable", "rented"}:
        loaded["rentable"] = {"eq": True}
    return loaded


def _no_constant(name: str) -> Any:
    """``json.loads`` would read NaN and Infinity, which the request body cannot carry."""
    raise errors.QueryError(f"invalid JSON filter: {name} is not a number a search can use")


def search_body(
    filter: Mapping[str, Any],
    *,
    order: list[list[str]] | None = None,
    offer_type: str = "on-demand",
    limit: int | None = None,
    allocated_storage: float = 5.0,
) -> dict[str, Any]:
    """Return the ``POST /api/v0/bundles/`` body as the CLI sends it.

    Filter keys first, then ``order`` (default ``[["score","desc"]]``), ``type``
    (``interruptible`` becomes ``bid``), ``limit`` only when given and non-zero
    (the CLI tests it for truth), and ``allocated_storage`` in GiB.
    """
    body: dict[str, Any] = dict(filter)
    body["order"] = [list(entry) for entry in order] if order is not None else [["score", "desc"]]
    body["type"] = "bid" if offer_type == "interruptible" else offer_type
    if limit:
        body["limit"] = int(limit)
    body["allocated_storage"] = float(allocated_storage)
    return body


def merge_filters(base: Mapping[str, Any], extra: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Return ``base`` with the constraints in ``extra`` added per field; ``extra`` wins per operator.

    New fields go last; neither argument is changed.
    """
    merged: dict[str, Any] = {field: _copy_constraint(field, value) for field, value in base.items()}
    for field, constraint in extra.items():
        merged.setdefault(field, {}).update(_copy_constraint(field, constraint))
    return merged


def _copy_constraint(field: str, constraint: Any) -> dict[str, Any]:
    """Return a copy of one field's operator object, or raise if it is not one."""
    if not isinstance(constraint, Mapping):
        raise errors.QueryError(f"filter field {field!r} must map operators to values")
    return dict(constraint)
