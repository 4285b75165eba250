"""Row faults: a 200 list or show answer whose instance rows are incomplete or missing (issue 16).

`row_incomplete` patches the targeted rows (`patch`: field -> value) and removes keys (`drop`);
`row_missing` leaves the targeted rows out of a v1 list page (keeping `instances_found`,
`total_instances` and `label_counts` consistent with the page) or answers a show with `{"instances": null}`.
A fault with a target (`instance_id`, `label`) applies only to an answer that holds a matching row; a fault
without one applies to every list or show answer (so `row_missing` gives an empty page).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from provisioner.sim.faults import Fault, FaultQueue, json_response

#: the endpoints whose answers carry instance rows
ROW_ENDPOINTS = frozenset({"list", "show"})


def _rows(payload: Any) -> list[dict[str, Any]]:
    """The instance rows of a list (`instances`: [...]) or show (`instances`: {...}) answer."""
    if not isinstance(payload, dict):
        return []
    found = payload.get("instances")
    if isinstance(found, dict):
        return [found]
    if isinstance(found, list):
        return [row for row in found if isinstance(row, dict)]
    return []


def _targeted(fault: Fault, row: dict[str, Any]) -> bool:
    if fault.instance_id is not None and row.get("id") != fault.instance_id:
        return False
    return fault.label is None or row.get("label") == fault.label


def _has_target(fault: Fault) -> bool:
    return fault.instance_id is not None or fault.label is not None


def applies(fault: Fault, payload: Any) -> bool:
    """Whether the fault spoils this answer: it targets no row, or the answer holds a row it targets."""
    return not _has_target(fault) or any(_targeted(fault, row) for row in _rows(payload))


def spoil(fault: Fault, payload: dict[str, Any]) -> dict[str, Any]:
    """The answer with the fault's rows patched or left out."""
    rows = _rows(payload)
    hit = [row for row in rows if _targeted(fault, row)]
    if fault.kind == "row_incomplete":
        for row in hit:
            row.update(fault.patch)
            for key in fault.drop:
                row.pop(key, None)
        return payload
    if not isinstance(payload.get("instances"), list):  # a show, or a list already null
        return {**payload, "instances": None} if hit else payload
    gone = {id(row) for row in hit}
    kept = [row for row in payload.get("instances") or [] if id(row) not in gone]
    counts = payload.get("label_counts")
    if isinstance(counts, dict):
        for row in hit:
            label = row.get("label") or ""
            if counts.get(label, 0) > 1:
                counts[label] -= 1
            else:
                counts.pop(label, None)
    if isinstance(payload.get("total_instances"), int):
        payload["total_instances"] = max(0, payload["total_instances"] - len(hit))
    payload["instances"] = kept
    payload["instances_found"] = len(kept)
    return payload


def spoil_rows(queue: FaultQueue, endpoint: str, response: Response) -> Response:
    """Apply the first queued row fault that fits this 200 answer of a list or show (else the answer)."""
    if endpoint not in ROW_ENDPOINTS or response.status_code != 200:
        return response
    try:
        payload = json.loads(bytes(response.body))
    except ValueError:
        return response
    fault = queue.take_rows(endpoint, lambda f: applies(f, payload))
    if fault is None or not isinstance(payload, dict):
        return response
    return json_response(spoil(fault, payload), 200, dict(_passed_headers(response)))


def _passed_headers(response: Response) -> dict[str, str]:
    """Headers of the original answer worth keeping (none of the body's own)."""
    skip = {"content-length", "content-type"}
    return {k: v for k, v in response.headers.items() if k.lower() not in skip}
