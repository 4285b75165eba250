"""What the reconciler reports: one ``EventKind`` enum and the ``Event`` record.

Shared by the reconciler and renter (which record events), the metrics (which count them) and
``status`` (which shows the latest). Pure: no I/O. The string values are the ``kind`` label of the
``vastprov_events_total`` metric and the ``event`` field of the JSON log lines, so they are stable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventKind(enum.StrEnum):
    """Every kind of event the reconciler and the renter record."""

    TEMPLATE_CREATED = "template-created"
    TEMPLATE_UPDATED = "template-updated"
    SERVE = "serve"
    UNSERVE = "unserve"
    HEALTH = "health"
    LIST_DOUBTED = "list-doubted"
    CONDEMN = "condemn"
    BAN = "ban"
    DESTROY = "destroy"
    RENT = "rent"
    RENT_SKIPPED = "rent-skipped"
    RENT_UNKNOWN = "rent-unknown"
    RENT_BACKOFF = "rent-backoff"
    RENT_WAITS = "rent-waits"
    RENT_LOCK_HELD = "rent-lock-held"
    OFFER_GONE = "offer-gone"
    OFFER_REFUSED = "offer-refused"
    NO_OFFERS = "no-offers"
    SPEND_CAP = "spend-cap"
    SPEND_CAP_UNCHECKED = "spend-cap-unchecked"


@dataclass(frozen=True, slots=True)
class Event:
    """A notable thing that happened, for logs, metrics and ``provisioner status``."""

    at: float
    kind: EventKind
    detail: str
    instance_id: int | None = None
    #: the machine-readable cause (a metric label): destroy, ban and rent reasons
    reason: str | None = None
