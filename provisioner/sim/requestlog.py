"""What the sim was asked: a bounded log of requests, and unbounded counters per endpoint and status.

The log keeps the latest 20,000 requests (method, path, endpoint name, status, time, query) for tests that
look at single calls; the counters never drop anything, so a long benchmark can still read how many calls
each endpoint got and how many of them were answered 429.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any


class RequestLog:
    """The request log and its counters; `clear()` empties both."""

    def __init__(self, size: int = 20_000) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._by_status: Counter[tuple[str, int]] = Counter()

    def record(self, method: str, path: str, endpoint: str, status: int, query: str) -> None:
        self._entries.append(
            {
                "method": method,
                "path": path,
                "endpoint": endpoint,
                "status": status,
                "ts": time.time(),
                "query": query,
            }
        )
        self._by_status[(endpoint, status)] += 1

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries)

    def counts(self) -> dict[str, int]:
        """Requests per endpoint since the last clear."""
        result: Counter[str] = Counter()
        for (endpoint, _), n in self._by_status.items():
            result[endpoint] += n
        return dict(result)

    def status_counts(self) -> dict[str, dict[str, int]]:
        """Requests per endpoint and HTTP status (as a string, for JSON) since the last clear."""
        result: dict[str, dict[str, int]] = {}
        for (endpoint, status), n in sorted(self._by_status.items()):
            result.setdefault(endpoint, {})[str(status)] = n
        return result

    def count_429(self) -> dict[str, int]:
        """429 answers per endpoint (rate limits and injected 429 faults alike)."""
        return {endpoint: n for (endpoint, status), n in self._by_status.items() if status == 429}

    def clear(self) -> None:
        self._entries.clear()
        self._by_status.clear()
