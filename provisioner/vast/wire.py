"""Pure helpers for the Vast.ai wire format, used by ``client``: no I/O, no state.

Owns the query-string encoding (docs/vast-api.md §1), the template body (§9.2) and ``map_failure``, the one
place where an unwanted HTTP answer or an httpx error becomes one of ``provisioner.errors`` (§2.3).
It reads httpx's types, so the import rules place it below the adapters, not in the pure core.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote, quote_plus, urlencode, urlsplit

import httpx
from pydantic import SecretStr

from provisioner import errors, model

#: the call name that turns 404 ``no_such_ask`` / 410 into ``OfferGone``.
CALL_RENT: Final = "rent"
#: the JSON ``error`` codes of a 404 that means "that instance does not exist (any more)".
GONE_CODES: Final = frozenset({"not_found", "no_such_instance"})
_DETAIL_CHARS: Final = 200
#: the longest wait a 429 may ask for (the daily search quota resets within a day): a bogus header (a
#: reset in milliseconds) must not rest the pod for years while liveness, rightly, stays 200
MAX_SERVER_WAIT_S: Final = 24 * 3600.0
#: an env value of a rent this long or longer is scrubbed from error texts (it may be a token)
MIN_ENV_SECRET_CHARS: Final = 8


def template_body(spec: model.TemplateSpec) -> dict[str, Any]:
    """The template fields of ``POST /api/v0/template/`` (docs/vast-api.md §9.2).

    Registry credentials are never stored in a template: the login goes with each rent.
    """
    disk = spec.disk_gb
    return {
        "name": spec.name,
        "image": spec.image,
        "tag": spec.tag,
        "href": None,
        "repo": None,
        "env": spec.env,
        "onstart": spec.onstart,
        "jup_direct": False,
        "ssh_direct": False,
        "use_jupyter_lab": False,
        "runtype": "args",
        "use_ssh": False,
        "jupyter_dir": None,
        "docker_login_repo": None,
        "docker_login_user": "",
        "docker_login_pass": "",
        "extra_filters": {},
        "recommended_disk_space": int(disk) if float(disk).is_integer() else disk,
        "readme": None,
        "readme_visible": False,
        "desc": "Managed by vast-pod-provisioner; manual edits are overwritten.",
        "private": True,
    }


def encode_query(params: Mapping[str, Any]) -> str:
    """§1: values that are not strings are ``json.dumps``'d (default separators), then form-encoded."""
    return urlencode([(k, v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()])


def _unreached(call: str, failure: httpx.HTTPError, secrets: Sequence[str]) -> errors.VastUnavailable:
    """No answer: what happened and the URL it went to, without credentials or query (nothing secret)."""
    kind = "timed out" if isinstance(failure, httpx.TimeoutException) else "connection failed"
    text = _short(scrub(str(failure), *secrets))
    try:
        url = failure.request.url.copy_with(userinfo=b"", query=None, fragment=None)
    except RuntimeError:  # an error raised before any request was made
        where = ""
    else:
        where = f" to {scrub(str(url), *secrets)}"
    return errors.VastUnavailable(
        call, f"{kind}{where} ({type(failure).__name__}{': ' + text if text else ''})"
    )


_THRESHOLD_RE = re.compile(r"threshold\s*=\s*([0-9]+(?:\.[0-9]+)?)")


def map_failure(
    call: str,
    failure: httpx.Response | httpx.HTTPError,
    *,
    secrets: Sequence[str] = (),
    now: float | None = None,
) -> errors.VastError:
    """The one translation of an unwanted HTTP answer or an httpx error into the project's errors.

    ``secrets`` (the API key and every other secret the client holds) are replaced by ``***`` wherever
    they would appear in the message; ``now`` (unix seconds) turns ``X-RateLimit-Reset`` into a wait.
    A 2xx answer given here is one whose body is not JSON (``VastBadResponse``) or says
    ``success: false`` (``VastRejected``).
    """
    if isinstance(failure, httpx.HTTPError):
        return _unreached(call, failure, secrets)
    status = failure.status_code
    body = _json_or_none(failure)
    code = body.get("error") if isinstance(body, Mapping) else None
    code = code if isinstance(code, str) else ""
    raw = _detail(failure, body)
    detail = _short(scrub(raw, *secrets))  # for the message; the classification reads the raw text
    if failure.is_success:
        if body is None:
            return errors.VastBadResponse(call, f"answer is not JSON: {detail}", status=status)
        if isinstance(body, Mapping) and body.get("success") is False:
            return errors.VastRejected(call, detail, status=status)
        return errors.VastBadResponse(call, f"unexpected answer: {detail}", status=status)
    lowered = raw.lower()
    if _refuses_key(status, code, lowered):
        return errors.AuthError(call, f"API key refused: {detail}", status=status)
    if status == 429:
        if code == "search_quota_exceeded":
            reset = _header_number(failure, "X-RateLimit-Reset")
            wait = None if reset is None else max(0.0, reset - (time.time() if now is None else now))
            wait = None if wait is None else min(wait, MAX_SERVER_WAIT_S)
            return errors.SearchQuotaExceeded(call, f"daily search quota spent: {detail}", retry_after_s=wait)
        wait = _header_number(failure, "Retry-After")
        if wait is None:
            # Vast's 429s rarely carry Retry-After but often name the endpoint's minimum interval:
            # "API requests too frequent endpoint threshold=3.0" -> wait that long before retrying
            threshold = _THRESHOLD_RE.search(raw)
            wait = float(threshold.group(1)) if threshold else None
        wait = None if wait is None else min(wait, MAX_SERVER_WAIT_S)
        return errors.RateLimited(call, f"rate limited: {detail}", retry_after_s=wait)
    # vast-api.md §11.1: a 404 or 410 on a rent is the offer gone, whatever its body says
    if call == CALL_RENT and status in (404, 410):
        return errors.OfferGone(call, f"offer gone: {detail}", status=status)
    if status >= 500:
        return errors.VastUnavailable(call, detail, status=status)
    if status >= 400:
        return errors.VastRejected(call, detail, status=status)
    return errors.VastBadResponse(call, f"unexpected HTTP status: {detail}", status=status)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _detail(response: httpx.Response, body: Any) -> str:
    """The server's own words: ``error`` plus ``msg``/``message``/``detail``, or a text body."""
    if isinstance(body, Mapping):
        code = body.get("error")
        message = next((body[k] for k in ("msg", "message", "detail") if body.get(k)), None)
        parts = [str(code)] if isinstance(code, str) and code else []
        if message is not None and str(message) not in parts:
            parts.append(str(message))
        text = ": ".join(parts) or "(no detail message)"
    elif body is not None:
        text = json.dumps(body)
    else:
        text = response.text.strip() or "(empty body)"
    return text


def _short(text: str) -> str:
    return " ".join(text.split())[:_DETAIL_CHARS]


def _header_number(response: httpx.Response, name: str) -> float | None:
    try:
        value = float(response.headers.get(name, ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def scrub(text: str, *secrets: str) -> str:
    """``text`` with every occurrence of each secret (raw, URL-encoded, or escaped as in JSON or a repr)
    replaced by ``***``; the longest first, so that a secret holding another (a login, its password)
    goes whole."""
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        escaped = (quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1], repr(secret)[1:-1])
        for form in (secret, *escaped):
            text = text.replace(form, "***")
    return text


def rent_secrets(image_login: SecretStr | None, env: Mapping[str, str]) -> tuple[str, ...]:
    """What a rent carries that no error text may show: the registry login (``-u USER -p PASS [REG]``)
    and its password, and the value of every env entry of ``MIN_ENV_SECRET_CHARS`` or more (env carries
    ``UPSTREAM_AUTH_TOKEN`` and whatever ``VAST_ENV_*`` holds; shorter values are flags, not secrets)."""
    found = [value for value in env.values() if len(value) >= MIN_ENV_SECRET_CHARS]
    if image_login is not None:
        login = image_login.get_secret_value()
        words = login.split()
        found.append(login)
        found += [words[i + 1] for i in range(len(words) - 1) if words[i] in ("-p", "--password")]
    return tuple(found)


def result_url(call: str, answer: Any) -> str:
    """The http(s) ``result_url`` of a ``request_logs`` answer (§8), checked the way httpx will parse it.

    Missing, not http(s), or unparseable (a port that is not a number, a broken IPv6 literal) is
    ``VastBadResponse``; the message never quotes the URL (its query may hold a token).
    """
    url = answer.get("result_url") if isinstance(answer, Mapping) else None
    if not isinstance(url, str):
        raise errors.VastBadResponse(call, "answer has no http(s) 'result_url'")
    try:
        parts = urlsplit(url)
        _ = parts.port  # parsing the port is the check
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise errors.VastBadResponse(call, f"answer's 'result_url' does not parse: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.VastBadResponse(call, "answer has no http(s) 'result_url'")
    return url


def _refuses_key(status: int, code: str, lowered: str) -> bool:
    """The answer refuses the API key. A 403 that names a bad argument (rent: "Offer … is not your
    own") is about the request, not the key; a 404 refuses it only in so many words."""
    if status == 401 or (status == 403 and code != "invalid_args"):
        return True
    words = code == "auth_error" or "invalid user key" in lowered or "session expired" in lowered
    return status == 404 and words


def is_not_found(response: httpx.Response) -> bool:
    """A JSON 404 but the API's "key refused" one: for showing one instance, whose 404 may come in any
    JSON form once it is destroyed (vast-api.md §12: ``{"detail": ...}``, ``{"msg": ...}``; the caller
    confirms "gone" before acting on it). A 404 that is not JSON is a wrong URL, not an answer."""
    body = _json_or_none(response)
    if response.status_code != 404 or body is None:
        return False
    code = body.get("error") if isinstance(body, Mapping) else None
    return not _refuses_key(404, code if isinstance(code, str) else "", _detail(response, body).lower())


def is_gone(response: httpx.Response) -> bool:
    """A 404 whose JSON ``error`` says the instance does not exist: an answer, not a failure."""
    body = _json_or_none(response)
    return response.status_code == 404 and isinstance(body, Mapping) and body.get("error") in GONE_CODES
