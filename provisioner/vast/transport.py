"""The plumbing under the Vast.ai client: one request with its retries, and the error mapping.

Idempotent calls are retried by tenacity with ``backoff.delay_s`` waits (exponential, capped,
jittered from the random source given) and a capped ``Retry-After``; template writes only when the
request never left (or a 429); a rent never (``Rule.NEVER``). With a ``pacer`` (issue 13) each attempt
is sent inside its endpoint's slot (``PACED_CALLS`` maps calls to endpoints): a 429 moves that slot
for every pod on the key, and the retry waits for the slot instead of a backoff. Every unwanted
answer and httpx error becomes one of ``provisioner.errors`` through ``wire.map_failure``. The API
key goes only into the ``Authorization`` header; request logs show the path, never the query,
headers or bodies; no error text shows the key or a secret a rent carried (``add_secrets``).

A 401/403 is ``AuthError`` (the daemon exits 3) only while the key has never worked in this process;
once an authenticated call has succeeded, a refusal is ``AuthRefusedAgain`` (a transient fault,
retried like a 5xx, logged as a WARNING with ``event=auth-refused``): an edge proxy's access denial
or an auth blip must not stop the proxy while the instance bills.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx
import tenacity
from pydantic import SecretStr

from provisioner import backoff, errors
from provisioner import pacer as pacing
from provisioner.vast import wire

log = logging.getLogger("provisioner.vast.client")

DEFAULT_BASE_URL: Final = "https://console.vast.ai"
USER_AGENT: Final = "vast-pod-provisioner/0.1"
_LOG_FETCH_TIMEOUT_S: Final = 10.0

Sleep = Callable[[float], Awaitable[None]]

#: which pacer budget each call spends (vast-api.md §2.3); any other call spends ``Endpoint.OTHER``
PACED_CALLS: Final[Mapping[str, pacing.Endpoint]] = {
    "list instances": pacing.Endpoint.LIST_INSTANCES,
    "show instance": pacing.Endpoint.SHOW_INSTANCE,
    "destroy instance": pacing.Endpoint.DESTROY,
    "find template": pacing.Endpoint.TEMPLATE_SEARCH,
    "create template": pacing.Endpoint.TEMPLATE_CREATE,
    "update template": pacing.Endpoint.TEMPLATE_CREATE,
    wire.CALL_RENT: pacing.Endpoint.CREATE_INSTANCE,
    "search offers": pacing.Endpoint.SEARCH_OFFERS,
    "whoami": pacing.Endpoint.WHOAMI,
    "request logs": pacing.Endpoint.LOGS,
}


def endpoint_of(call: str) -> pacing.Endpoint:
    """The pacer budget a call spends."""
    return PACED_CALLS.get(call, pacing.Endpoint.OTHER)


async def next_slot_s(pace: pacing.Pacer | None, call: str) -> float | None:
    """Seconds until ``call``'s next pacer slot (at least 0.1 s; what a 429 waits for), None unpaced."""
    return None if pace is None else max(await pace.free_in_s(endpoint_of(call)), 0.1)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of idempotent calls: ``attempts`` in total, exponential backoff, ``Retry-After`` up to a cap.

    ``jitter`` is a fraction in [0, 1]: each backoff is shortened by a random part of at most that fraction.
    A server ``Retry-After`` above ``retry_after_cap_s`` is not waited for: ``RateLimited`` is raised at once.
    """

    attempts: int = 4
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    retry_after_cap_s: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if min(self.initial_backoff_s, self.max_backoff_s, self.retry_after_cap_s) < 0:
            raise ValueError("backoff and cap must not be negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def backoff_s(self, retry_number: int, rand: backoff.Uniform = random.uniform) -> float:
        """The wait before retry ``retry_number`` (1-based) when the server gave no ``Retry-After``."""
        return backoff.delay_s(
            retry_number,
            start_s=self.initial_backoff_s,
            cap_s=self.max_backoff_s,
            jitter=self.jitter,
            rand=rand,
        )


DEFAULT_RETRY: Final = RetryPolicy()


class CallObserver(Protocol):
    """Hooks for metrics: one ``request_done`` per HTTP request, one ``rate_limit_wait`` per 429 backoff."""

    def request_done(self, call: str, status: int | None, elapsed_s: float) -> None: ...

    def rate_limit_wait(self, call: str, seconds: float) -> None: ...


class Rule(enum.Enum):
    """Which failures of a call may be retried."""

    NEVER = "never"  # rent: the outcome of a failed attempt is unknown
    UNSENT = "unsent"  # template writes: only 429 and errors before the request went out
    IDEMPOTENT = "idempotent"  # reads, destroy, logs: 429, 5xx and transport errors


class Transport:
    """Requests to the Vast.ai API over an injected ``httpx.AsyncClient``, with retries.

    ``sleep``, ``clock`` (unix seconds) and ``rand`` (the jitter's uniform draw) are seams for tests.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        api_key: SecretStr,
        *,
        base_url: str = DEFAULT_BASE_URL,
        retry: RetryPolicy = DEFAULT_RETRY,
        observer: CallObserver | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rand: backoff.Uniform = random.uniform,
        pacer: pacing.Pacer | None = None,
    ) -> None:
        self._http = http
        self.pacer = pacer
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self._retry = retry
        self._observer = observer
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        #: an authenticated call has succeeded in this process (a later 401/403 is a glitch)
        self.key_worked = False
        #: every secret this client was given (the key; a rent's login and env values): no error shows one
        self._secrets: set[str] = {api_key.get_secret_value()}

    def add_secrets(self, *values: str) -> None:
        """Scrub ``values`` too (blank ones are ignored) from the text of every later error."""
        self._secrets.update(value for value in values if value.strip())

    @property
    def _secret(self) -> str:
        return self._api_key.get_secret_value()

    def _error(self, call: str, failure: httpx.Response | httpx.HTTPError) -> errors.VastError:
        error = wire.map_failure(call, failure, secrets=tuple(self._secrets), now=self._clock())
        if isinstance(error, errors.AuthError) and self.key_worked:
            log.warning(
                "%s: the Vast.ai API refused the key that worked before (%s); retrying with backoff",
                call,
                error.reason,
                extra={"event": "auth-refused", "status": error.status},
            )
            return errors.AuthRefusedAgain(call, error.reason, status=error.status)
        return error

    def _json(self, call: str, response: httpx.Response) -> Any:
        """The JSON body of a 2xx answer; not JSON or ``success: false`` raise through ``map_failure``."""
        try:
            data = response.json()
        except ValueError:
            raise self._error(call, response) from None
        if isinstance(data, Mapping) and data.get("success") is False:
            raise self._error(call, response)
        return data

    async def _request(
        self,
        call: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        retry: Rule = Rule.IDEMPOTENT,
        accept: Callable[[httpx.Response], bool] | None = None,
    ) -> httpx.Response:
        """One API call with its retries: a 2xx answer, or one ``accept`` lets through; else our error."""
        url = self._base_url + path + (f"?{wire.encode_query(params)}" if params else "")

        async def attempt() -> httpx.Response:
            async with self._slot(call):
                response = await self._send(call, method, url, body)
                if response.is_success or (accept is not None and accept(response)):
                    return response
                raise self._error(call, response)

        if retry is Rule.NEVER:
            return await attempt()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            seconds = state.next_action.sleep if state.next_action else 0.0
            log.debug("%s: retrying in %.2fs after: %s", call, seconds, exc)
            if isinstance(exc, errors.RateLimited) and self._observer is not None:
                self._observer.rate_limit_wait(call, seconds)

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self._retry.attempts),
            wait=self._wait_s,
            retry=tenacity.retry_if_exception(
                self._is_transient if retry is Rule.IDEMPOTENT else self._is_unsent
            ),
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        response: httpx.Response = await retrying(attempt)
        return response

    def _slot(self, call: str) -> contextlib.AbstractAsyncContextManager[object]:
        """The endpoint's pacer slot (a 429 leaving it moves the slot fleet-wide), or nothing."""
        if self.pacer is None:
            return contextlib.nullcontext()
        return self.pacer.slot(endpoint_of(call))

    async def _send(
        self, call: str, method: str, url: str, body: Mapping[str, Any] | None, *, auth: bool = True
    ) -> httpx.Response:
        """One HTTP request, transport errors mapped. A JSON body (``{}`` if none) on all but GET."""
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json" if auth else "*/*"}
        content = None
        if method != "GET":
            headers["Content-Type"] = "application/json"
            content = json.dumps(dict(body or {}), allow_nan=False).encode()
        if auth:
            headers["Authorization"] = f"Bearer {self._secret}"
        timeout = httpx.USE_CLIENT_DEFAULT if auth else httpx.Timeout(_LOG_FETCH_TIMEOUT_S)
        try:
            request = self._http.build_request(method, url, headers=headers, content=content, timeout=timeout)
        except (httpx.InvalidURL, ValueError) as exc:  # a URL from an answer (result_url) that httpx refuses
            reason = wire.scrub(str(exc), *self._secrets)
            raise errors.VastBadResponse(call, f"cannot send to that URL: {reason}") from exc
        if not auth:
            request.headers.pop("Authorization", None)  # even if the injected client has a default one
        started = time.monotonic()
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as exc:
            self._observe(call, None, started)
            raise self._error(call, exc) from exc
        self._observe(call, response.status_code, started)
        if auth and response.is_success:
            self.key_worked = True
        # the path only: no query string (it may hold a result token), never headers or bodies
        log.debug(
            "%s: %s %s -> %s in %.3fs",
            call,
            method,
            request.url.path,
            response.status_code,
            time.monotonic() - started,
        )
        return response

    def _observe(self, call: str, status: int | None, started: float) -> None:
        if self._observer is not None:
            self._observer.request_done(call, status, time.monotonic() - started)

    def _wait_s(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, errors.RateLimited) and self.pacer is not None:
            return 0.0  # the 429 moved the endpoint's slot: the next attempt waits for it there
        wait = self._retry.backoff_s(state.attempt_number, self._rand)
        if isinstance(exc, errors.RateLimited) and exc.retry_after_s is not None:
            # the server's minimum, plus the growing jittered backoff: clients sharing a key that were
            # all told "wait 3 s" must not all come back at exactly 3 s
            return min(exc.retry_after_s, self._retry.retry_after_cap_s) + wait
        return wait

    def _is_transient(self, exc: BaseException) -> bool:
        """Worth another try of an idempotent call: 429 (not the daily quota, not a long Retry-After), 5xx."""
        if isinstance(exc, errors.SearchQuotaExceeded):
            return False
        if isinstance(exc, errors.RateLimited):
            return exc.retry_after_s is None or exc.retry_after_s <= self._retry.retry_after_cap_s
        return isinstance(exc, errors.VastUnavailable)

    def _is_unsent(self, exc: BaseException) -> bool:
        """Worth another try of a write: 429, or a failure before the request left (connect, pool)."""
        if isinstance(exc, errors.VastUnavailable):
            return isinstance(exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        return isinstance(exc, errors.RateLimited) and self._is_transient(exc)
