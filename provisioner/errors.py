"""The project's one error tree.

Every failure that leaves an adapter is one of these; library exceptions are
mapped at the boundary (``raise ... from exc``) and never escape raw.

    ProvisionerError
    ├── ConfigError            bad configuration (exit code 2); names the variable
    │   └── QueryError         a search query that does not parse
    ├── VastError              anything the Vast.ai API did to us; carries ``call``
    │   ├── AuthError          401/403, or 404 with ``error: auth_error``
    │   ├── OfferGone          404 ``no_such_ask`` / 410 on rent: try the next offer
    │   ├── RateLimited        429; ``retry_after_s`` when the server said so
    │   │   └── SearchQuotaExceeded   the daily search quota: never retried
    │   ├── VastUnavailable    5xx, timeouts, connection errors (transient)
    │   │   └── AuthRefusedAgain   401/403 for a key that worked before in this process: retried
    │   ├── RentOutcomeUnknown a rent whose outcome is unknown: list by label first
    │   ├── VastRejected       any other 4xx: the request itself is wrong
    │   └── VastBadResponse    not JSON, or JSON of the wrong shape
    ├── StoreError             Redis failed or is unreachable
    ├── NginxError             nginx would not start, test or reload
    ├── KubeError              the Kubernetes API did not say whether a pod exists (the reaper)
    ├── AdminServerError       the admin server cannot listen on ADMIN_HOST:ADMIN_PORT
    └── ShutdownForced         a second signal cut the shutdown short
"""

from __future__ import annotations


class ProvisionerError(Exception):
    """Base of every error the provisioner raises on purpose."""


class ConfigError(ProvisionerError):
    """The configuration is invalid; ``variable`` names the env var at fault."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


class QueryError(ConfigError):
    """A search query does not parse; the message names the bad part."""

    def __init__(self, problem: str, variable: str = "VAST_SEARCH_QUERY") -> None:
        super().__init__(variable, problem)


class VastError(ProvisionerError):
    """A Vast.ai API call failed; ``call`` says which one, ``status`` the HTTP status if any."""

    def __init__(self, call: str, reason: str, *, status: int | None = None) -> None:
        self.call = call
        self.reason = reason
        self.status = status
        where = f"{call}: HTTP {status}: " if status is not None else f"{call}: "
        super().__init__(where + reason)


class AuthError(VastError):
    """The API key was refused."""


class OfferGone(VastError):
    """The offer was taken or withdrawn between search and rent."""


class RateLimited(VastError):
    """The API said 429; ``retry_after_s`` is the server's hint (uncapped: what to wait), or None."""

    def __init__(
        self, call: str, reason: str, *, status: int | None = 429, retry_after_s: float | None = None
    ) -> None:
        super().__init__(call, reason, status=status)
        self.retry_after_s = retry_after_s


class SearchQuotaExceeded(RateLimited):
    """The daily search quota is spent; ``retry_after_s`` points at its reset."""


class VastUnavailable(VastError):
    """A transient failure: 5xx, a timeout or a connection error."""


class AuthRefusedAgain(VastUnavailable):
    """A key that worked before in this process was refused (401/403): a fault to retry, not an exit."""


class RentOutcomeUnknown(VastError):
    """A rent may or may not have happened; list by label before renting again."""


class VastRejected(VastError):
    """The API rejected the request (a 4xx that is not one of the above)."""


class VastBadResponse(VastError):
    """The API answered something that is not the documented shape."""


class StoreError(ProvisionerError):
    """The shared store (Redis) failed."""


class NginxError(ProvisionerError):
    """nginx failed to start, to accept a config, or to reload."""


class KubeError(ProvisionerError):
    """The Kubernetes API did not say whether a pod exists (``provisioner reap`` with ``REAP_CHECK_PODS``)."""


class AdminServerError(ProvisionerError):
    """The admin server cannot listen on ``ADMIN_HOST:ADMIN_PORT`` (the port is taken, say)."""

    def __init__(self, host: str, port: int, problem: str) -> None:
        self.host = host
        self.port = port
        super().__init__(f"ADMIN_PORT: cannot listen on {host}:{port}: {problem}")


class ShutdownForced(ProvisionerError):
    """A second signal cut the shutdown short (nginx was stopped without its full drain)."""
