"""The Vast.ai client against respx: exact wire format, error mapping, retries and secret hygiene."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx
from pydantic import SecretStr

from provisioner import errors, model
from provisioner.vast import client, wire
from provisioner.vast.client import RentRequest, RetryPolicy, VastClient

BASE = "http://vast.test"
KEY = "k3y-5ecret-0123456789abcdef"
NOW = 1_800_000_000.0
POLICY = RetryPolicy(
    attempts=3, initial_backoff_s=0.01, max_backoff_s=0.04, retry_after_cap_s=5.0, jitter=0.0
)
LABEL = "k8s_pod=vast-pod-0"
SPEC = model.TemplateSpec(
    name="k8s-nginx",
    image="nginx",
    tag="latest",
    env="-p 8000:8000 -e FOO=bar",
    onstart="echo hi",
    disk_gb=20.0,
)

# docs/vast-api.md §10: `vastai create instance 123 --image nginx --label k8s_pod=vast-pod-0 --disk 20
# --env '-p 8000:8000 -e FOO=bar'` as sent by the official 1.9.1 CLI.
CAPTURED_RENT_BODY: dict[str, Any] = {
    "client_id": "me",
    "image": "nginx",
    "env": {"-p 8000:8000": "1", "FOO": "bar"},
    "price": None,
    "disk": 20.0,
    "label": "k8s_pod=vast-pod-0",
    "extra": None,
    "onstart": None,
    "image_login": None,
    "python_utf8": False,
    "lang_utf8": False,
    "use_jupyter_lab": False,
    "jupyter_dir": None,
    "force": False,
    "cancel_unavail": False,
    "template_hash_id": None,
    "user": None,
    "runtype": "ssh",
}
# docs/vast-api.md §10: the query string of `vastai --raw show instances`.
CAPTURED_LIST_QUERY = (
    "select_filters=%7B%7D&order_by=%5B%7B%22col%22%3A+%22id%22%2C+%22dir%22%3A+%22asc%22%7D%5D&limit=25"
)
# docs/vast-api.md §10: the query string of `vastai search templates name=k8s-nginx`.
CAPTURED_TEMPLATE_QUERY = (
    "select_cols=%5B%22%2A%22%5D&select_filters=%7B%22name%22%3A+%7B%22eq%22%3A+%22k8s-nginx%22%7D%7D"
)


class FakeSleep:
    """Records every wait instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Observer:
    """Records what the client reports for metrics."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, int | None]] = []
        self.waits: list[tuple[str, float]] = []

    def request_done(self, call: str, status: int | None, elapsed_s: float) -> None:
        assert elapsed_s >= 0
        self.requests.append((call, status))

    def rate_limit_wait(self, call: str, seconds: float) -> None:
        self.waits.append((call, seconds))


@pytest.fixture
def router() -> Any:
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient() as c:
        yield c


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def observer() -> Observer:
    return Observer()


@pytest.fixture
def vast(http: httpx.AsyncClient, sleep: FakeSleep, observer: Observer) -> VastClient:
    return VastClient(
        http,
        SecretStr(KEY),
        base_url=BASE + "/",
        retry=POLICY,
        observer=observer,
        sleep=sleep,
        clock=lambda: NOW,
    )


def rent_request(**overrides: Any) -> RentRequest:
    fields: dict[str, Any] = {
        "image": "nginx",
        "env": {"FOO": "bar"},
        "ports": [8000],
        "label": LABEL,
        "disk_gb": 20.0,
    }
    fields.update(overrides)
    return RentRequest(**fields)


def instance_row(instance_id: int, label: str | None = LABEL, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": instance_id,
        "label": label,
        "actual_status": "running",
        "start_date": 1.0,
        "extra_env": [],
    }
    row.update(extra)
    return row


def template_row(template_id: int, hash_id: str, **extra: Any) -> dict[str, Any]:
    row = {"id": template_id, "hash_id": hash_id, "name": "k8s-nginx", "private": True, "creator_id": 7}
    row.update(extra)
    return row


def templates(*rows: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"success": True, "templates_found": len(rows), "templates": list(rows)})


def query_of(request: httpx.Request) -> dict[str, Any]:
    """Form-decode the query string, then JSON-decode each value that is JSON (docs/vast-api.md §1)."""
    result: dict[str, Any] = {}
    for key, value in parse_qsl(request.url.query.decode(), keep_blank_values=True):
        try:
            result[key] = json.loads(value)
        except ValueError:
            result[key] = value
    return result


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


def assert_api_headers(request: httpx.Request, *, with_body: bool) -> None:
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["User-Agent"] == "vast-pod-provisioner/0.1"
    assert "api_key" not in str(request.url)
    if with_body:
        assert request.headers["Content-Type"] == "application/json"
    else:
        assert request.content == b""
        assert "Content-Type" not in request.headers


# ---------------------------------------------------------------- wire format


async def test_whoami_wire_format_and_drops_api_key(router: respx.MockRouter, vast: VastClient) -> None:
    """whoami is a bodyless GET /api/v0/users/current with Bearer auth, and the api_key field is dropped."""
    route = router.get("/api/v0/users/current").respond(200, json={"id": 7, "email": "a@b", "api_key": KEY})
    assert await vast.whoami() == {"id": 7, "email": "a@b"}
    request = route.calls.last.request
    assert request.method == "GET"
    assert request.url.path == "/api/v0/users/current"
    assert request.url.query == b""
    assert_api_headers(request, with_body=False)


async def test_search_offers_posts_flat_body(router: respx.MockRouter, vast: VastClient) -> None:
    """search_offers POSTs the filter as a flat JSON body to /api/v0/bundles/ and parses the offers."""
    route = router.post("/api/v0/bundles/").respond(200, json={"offers": [{"id": 11, "dph_total": "0.25"}]})
    query = {"gpu_name": {"eq": "RTX 3060"}, "order": [["dph_total", "asc"]], "type": "on-demand"}
    offers = await vast.search_offers(query)
    assert [(o.id, o.dph_total) for o in offers] == [(11, 0.25)]
    request = route.calls.last.request
    assert_api_headers(request, with_body=True)
    assert body_of(request) == query


async def test_search_offers_skips_malformed_offers(router: respx.MockRouter, vast: VastClient) -> None:
    """A malformed offer object is skipped, the rest are returned."""
    bad = [{"id": None}, "not an object", {"id": 3, "dph_total": "cheap"}]
    router.post("/api/v0/bundles/").respond(200, json={"offers": [*bad, {"id": 4}]})
    assert [o.id for o in await vast.search_offers({})] == [4]


@pytest.mark.parametrize("answer", [{}, {"offers": None}, {"offers": {}}, []], ids=str)
async def test_search_offers_without_offers_list_is_bad_response(
    router: respx.MockRouter, vast: VastClient, answer: Any
) -> None:
    """A search answer without an 'offers' list is VastBadResponse, not 'no offers'."""
    router.post("/api/v0/bundles/").respond(200, json=answer)
    with pytest.raises(errors.VastBadResponse, match="search offers"):
        await vast.search_offers({})


async def test_rent_body_matches_the_captured_cli_body(router: respx.MockRouter, vast: VastClient) -> None:
    """rent PUTs /api/v0/asks/{id}/ with every 1.9.1 body key, runtype args, and returns new_contract."""
    route = router.put("/api/v0/asks/123/").respond(200, json={"success": True, "new_contract": 4567})
    assert await vast.rent(123, rent_request()) == 4567
    request = route.calls.last.request
    assert_api_headers(request, with_body=True)
    sent = body_of(request)
    expected = {**CAPTURED_RENT_BODY, "cancel_unavail": True, "runtype": "args"}
    assert sent == expected
    assert list(sent) == list(CAPTURED_RENT_BODY)


async def test_rent_with_template_login_and_bid(router: respx.MockRouter, vast: VastClient) -> None:
    """With a template the runtype key is omitted; the login is unwrapped into the body; a bid sets price."""
    route = router.put("/api/v0/asks/9/").respond(200, json={"success": True, "new_contract": 10})
    req = rent_request(
        template_hash_id="abc123",
        ports=[9000, 8000, 8000],
        bid_price=0.2,
        onstart="echo hi",
        image_login=SecretStr("-u bob -p s3cret docker.io"),
        cancel_unavail=False,
    )
    assert await vast.rent(9, req) == 10
    sent = body_of(route.calls.last.request)
    assert "runtype" not in sent
    assert sent["template_hash_id"] == "abc123"
    assert sent["image_login"] == "-u bob -p s3cret docker.io"
    assert sent["env"] == {"FOO": "bar", "-p 8000:8000": "1", "-p 9000:9000": "1"}
    assert (sent["price"], sent["onstart"], sent["cancel_unavail"]) == (0.2, "echo hi", False)


async def test_list_instances_query_matches_capture(router: respx.MockRouter, vast: VastClient) -> None:
    """list_instances sends exactly the CLI's v1 query string: JSON values, then form encoding."""
    route = router.get("/api/v1/instances/").respond(200, json={"instances": [], "next_token": None})
    assert await vast.list_instances() == []
    request = route.calls.last.request
    assert request.url.path == "/api/v1/instances/"
    assert request.url.query.decode() == CAPTURED_LIST_QUERY
    assert_api_headers(request, with_body=False)


async def test_list_instances_follows_next_token(router: respx.MockRouter, vast: VastClient) -> None:
    """Pages are followed via next_token -> after_token until it is null; rows come back in id order."""
    pages = [
        {"instances": [instance_row(1), instance_row(2)], "next_token": "t1"},
        {"instances": [instance_row(3)], "next_token": "t2"},
        {"instances": [instance_row(4)], "next_token": None},
    ]
    route = router.get("/api/v1/instances/").mock(side_effect=[httpx.Response(200, json=p) for p in pages])
    assert [i.id for i in await vast.list_instances({"label": {"eq": LABEL}})] == [1, 2, 3, 4]
    queries = [query_of(call.request) for call in route.calls]
    assert [q.get("after_token") for q in queries] == [None, "t1", "t2"]
    for q in queries:
        assert q["select_filters"] == {"label": {"eq": LABEL}}
        assert q["order_by"] == [{"col": "id", "dir": "asc"}]
        assert q["limit"] == 25


async def test_list_instances_looping_token_is_bad_response(
    router: respx.MockRouter, vast: VastClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A next_token that never ends stops at the page cap with VastBadResponse."""
    monkeypatch.setattr(client, "MAX_PAGES", 3)
    route = router.get("/api/v1/instances/").respond(200, json={"instances": [], "next_token": "again"})
    with pytest.raises(errors.VastBadResponse, match="pages"):
        await vast.list_instances()
    assert route.call_count == 3


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"instances": None}),
        httpx.Response(200, json={}),
        httpx.Response(200, json={"instances": {"id": 1}}),
        httpx.Response(200, json=None),
        httpx.Response(200, text="<html>maintenance</html>"),
        httpx.Response(200, json={"instances": [{"label": "no id"}]}),
    ],
    ids=["null", "missing", "object", "json-null", "html", "row-without-id"],
)
async def test_list_instances_bad_shapes(
    router: respx.MockRouter, vast: VastClient, answer: httpx.Response
) -> None:
    """A list answer that is not JSON or has no proper 'instances' list is VastBadResponse, never 'none'."""
    route = router.get("/api/v1/instances/").mock(return_value=answer)
    with pytest.raises(errors.VastBadResponse, match="list instances"):
        await vast.list_instances()
    assert route.call_count == 1


async def test_list_by_label_filters_on_server_and_client(router: respx.MockRouter, vast: VastClient) -> None:
    """list_by_label asks for label eq and drops any row whose label is not exactly ours."""
    rows = [instance_row(1), instance_row(2, label=LABEL + "0"), instance_row(3, label=None)]
    route = router.get("/api/v1/instances/").respond(200, json={"instances": rows})
    assert [i.id for i in await vast.list_by_label(LABEL)] == [1]
    assert query_of(route.calls.last.request)["select_filters"] == {"label": {"eq": LABEL}}


async def test_instance_parsing_strips_ip_and_reads_hostport_strings(
    router: respx.MockRouter, vast: VastClient
) -> None:
    """public_ipaddr whitespace is stripped and HostPort strings become ints (via model.Instance)."""
    ports = {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}], "22/tcp": None}
    row = instance_row(5, public_ipaddr=" 203.0.113.9\n", ports=ports)
    router.get("/api/v1/instances/").respond(200, json={"instances": [row]})
    (instance,) = await vast.list_instances()
    assert instance.public_ipaddr == "203.0.113.9"
    assert instance.host_port(8000) == 41234
    assert instance.host_port(22) is None


async def test_show_instance_wire_and_parse(router: respx.MockRouter, vast: VastClient) -> None:
    """show_instance GETs /api/v0/instances/{id}/?owner=me and parses the single 'instances' object."""
    route = router.get("/api/v0/instances/5/").respond(200, json={"instances": instance_row(5)})
    instance = await vast.show_instance(5)
    assert instance is not None
    assert (instance.id, instance.label) == (5, LABEL)
    request = route.calls.last.request
    assert request.url.query == b"owner=me"
    assert_api_headers(request, with_body=False)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"instances": None}),
        httpx.Response(
            404, json={"success": False, "error": "no_such_instance", "msg": "Instance 5 not found."}
        ),
        httpx.Response(404, json={"detail": "Not found."}),
        httpx.Response(404, json={"success": False, "msg": "Instance 5 not found."}),
    ],
    ids=["instances-null", "404-no_such_instance", "404-detail", "404-msg-only"],
)
async def test_show_instance_gone_is_none(
    router: respx.MockRouter, vast: VastClient, answer: httpx.Response
) -> None:
    """A gone instance shows as None: {"instances": null}, or a JSON 404 in any of the forms Vast
    uses (vast-api.md §12 leaves the form open; a form not recognised stalled every tick before)."""
    router.get("/api/v0/instances/5/").mock(return_value=answer)
    assert await vast.show_instance(5) is None


async def test_show_instance_plain_404_is_not_gone(router: respx.MockRouter, vast: VastClient) -> None:
    """A 404 that is not JSON (a wrong base URL, a proxy's page) is VastRejected, not 'gone'; the
    API's own key-refused 404 is an AuthError."""
    router.get("/api/v0/instances/5/").respond(404, text="<h1>Not Found</h1>")
    with pytest.raises(errors.VastRejected, match="Not Found"):
        await vast.show_instance(5)
    router.get("/api/v0/instances/6/").respond(404, json={"success": False, "msg": "Invalid user key"})
    with pytest.raises(errors.AuthError):
        await vast.show_instance(6)


async def test_destroy_instance_wire(router: respx.MockRouter, vast: VastClient) -> None:
    """destroy_instance DELETEs /api/v0/instances/{id}/ with the JSON body {} and returns True."""
    route = router.delete("/api/v0/instances/5/").respond(200, json={"success": True})
    assert await vast.destroy_instance(5) is True
    request = route.calls.last.request
    assert_api_headers(request, with_body=True)
    assert request.content == b"{}"


@pytest.mark.parametrize("code", ["not_found", "no_such_instance"])
async def test_destroy_already_gone_is_false(router: respx.MockRouter, vast: VastClient, code: str) -> None:
    """A 404 not_found/no_such_instance on destroy means already gone: False, not an error."""
    router.delete("/api/v0/instances/5/").respond(404, json={"success": False, "error": code, "msg": "gone"})
    assert await vast.destroy_instance(5) is False


async def test_destroy_is_retried(router: respx.MockRouter, vast: VastClient, sleep: FakeSleep) -> None:
    """destroy is idempotent, so a 503 is retried."""
    route = router.delete("/api/v0/instances/5/").mock(
        side_effect=[httpx.Response(503, text="busy"), httpx.Response(200, json={"success": True})]
    )
    assert await vast.destroy_instance(5) is True
    assert route.call_count == 2
    assert sleep.waits == [0.01]


async def test_find_template_query_and_selection(router: respx.MockRouter, vast: VastClient) -> None:
    """find_template sends the CLI's query and picks the newest exact-name private template."""
    route = router.get("/api/v0/template/").mock(
        return_value=templates(
            template_row(10, "old"),
            template_row(12, "new"),
            template_row(30, "public", private=False, creator_id=None),
            template_row(40, "other", name="k8s-nginx2"),
            {"id": 50, "name": "k8s-nginx"},
        )
    )
    found = await vast.find_template("k8s-nginx")
    assert found is not None
    assert (found.id, found.hash_id) == (12, "new")
    request = route.calls.last.request
    assert request.url.query.decode() == CAPTURED_TEMPLATE_QUERY
    assert_api_headers(request, with_body=False)


async def test_find_template_by_creator(router: respx.MockRouter, vast: VastClient) -> None:
    """With creator_id the filter carries it, and only that creator's templates count."""
    route = router.get("/api/v0/template/").mock(
        return_value=templates(
            template_row(12, "mine", private=False), template_row(13, "theirs", creator_id=8)
        )
    )
    found = await vast.find_template("k8s-nginx", creator_id=7)
    assert found is not None and found.hash_id == "mine"
    filters = query_of(route.calls.last.request)["select_filters"]
    assert filters == {"name": {"eq": "k8s-nginx"}, "creator_id": {"eq": 7}}


async def test_find_template_none(router: respx.MockRouter, vast: VastClient) -> None:
    """No matching template gives None."""
    router.get("/api/v0/template/").mock(return_value=templates())
    assert await vast.find_template("k8s-nginx") is None


async def test_create_template_posts_and_reads_back(router: respx.MockRouter, vast: VastClient) -> None:
    """create_template POSTs the §9.2 body without registry credentials, then reads the hash back by name."""
    post = router.post("/api/v0/template/").respond(200, json={"success": True, "msg": "created"})
    get = router.get("/api/v0/template/").mock(return_value=templates(template_row(77, "h1")))
    template = await vast.create_template(SPEC)
    assert (template.id, template.hash_id) == (77, "h1")
    request = post.calls.last.request
    assert_api_headers(request, with_body=True)
    sent = body_of(request)
    captured_keys = {"name", "image", "tag", "href", "repo", "env", "onstart", "jup_direct", "ssh_direct"}
    captured_keys |= {"use_jupyter_lab", "runtype", "use_ssh", "jupyter_dir", "docker_login_repo"}
    captured_keys |= {
        "extra_filters",
        "recommended_disk_space",
        "readme",
        "readme_visible",
        "desc",
        "private",
    }
    assert captured_keys <= set(sent)
    assert sent["name"] == "k8s-nginx" and sent["image"] == "nginx" and sent["tag"] == "latest"
    assert sent["env"] == "-p 8000:8000 -e FOO=bar" and sent["onstart"] == "echo hi"
    assert (sent["runtype"], sent["private"], sent["extra_filters"]) == ("args", True, {})
    assert sent["recommended_disk_space"] == 20
    assert not sent["docker_login_repo"] and not sent["docker_login_user"] and not sent["docker_login_pass"]
    assert get.call_count == 1


async def test_create_template_takes_the_hash_from_the_answer(
    router: respx.MockRouter, vast: VastClient
) -> None:
    """A create answer carrying the template is used as is: no read-back (it would wait a search slot)."""
    answer = {"success": True, "template": {"id": 78, "hash_id": "h2"}}
    router.post("/api/v0/template/").respond(200, json=answer)
    get = router.get("/api/v0/template/").mock(return_value=templates())
    template = await vast.create_template(SPEC)
    assert (template.id, template.hash_id, template.name) == (78, "h2", "k8s-nginx")
    assert get.call_count == 0


@pytest.mark.parametrize(
    "failure",
    [httpx.Response(502, text="bad gateway"), httpx.ReadTimeout("slow"), httpx.Response(200, text="<html>")],
    ids=["502", "read-timeout", "non-json-200"],
)
async def test_create_template_ambiguous_reads_back_instead_of_posting_again(
    router: respx.MockRouter, vast: VastClient, failure: Any
) -> None:
    """After an ambiguous create answer the template is looked up by name; the POST is never repeated."""
    post = router.post("/api/v0/template/").mock(side_effect=[failure])
    router.get("/api/v0/template/").mock(return_value=templates(template_row(77, "h1")))
    assert (await vast.create_template(SPEC)).hash_id == "h1"
    assert post.call_count == 1


async def test_create_template_ambiguous_and_absent_raises(
    router: respx.MockRouter, vast: VastClient
) -> None:
    """An ambiguous create whose template is not found raises the original error after one POST."""
    post = router.post("/api/v0/template/").mock(side_effect=httpx.ReadTimeout("slow"))
    router.get("/api/v0/template/").mock(return_value=templates())
    with pytest.raises(errors.VastUnavailable, match="create template"):
        await vast.create_template(SPEC)
    assert post.call_count == 1


async def test_create_template_retried_when_unsent(router: respx.MockRouter, vast: VastClient) -> None:
    """A connect error or a 429 (nothing was written) is retried for a template write."""
    post = router.post("/api/v0/template/").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(429, text="API requests too frequent"),
            httpx.Response(200, json={"success": True}),
        ]
    )
    router.get("/api/v0/template/").mock(return_value=templates(template_row(77, "h1")))
    assert (await vast.create_template(SPEC)).hash_id == "h1"
    assert post.call_count == 3


async def test_update_template_v1(router: respx.MockRouter, vast: VastClient) -> None:
    """update_template PUTs /api/v1/template/ with id, hash_id and the full body, then reads the new hash."""
    put = router.put("/api/v1/template/").respond(200, json={"success": True})
    router.get("/api/v0/template/").mock(return_value=templates(template_row(77, "new")))
    existing = model.Template(id=77, hash_id="old", name="k8s-nginx", private=True, creator_id=7)
    assert (await vast.update_template(existing, SPEC)).hash_id == "new"
    sent = body_of(put.calls.last.request)
    assert_api_headers(put.calls.last.request, with_body=True)
    assert (sent["id"], sent["hash_id"], sent["name"], sent["env"]) == (77, "old", "k8s-nginx", SPEC.env)
    assert list(sent)[:2] == ["id", "hash_id"]


@pytest.mark.parametrize("status", [404, 405])
async def test_update_template_falls_back_to_v0(
    router: respx.MockRouter, vast: VastClient, status: int
) -> None:
    """If PUT /api/v1/template/ answers 404/405, the docs' PUT /api/v0/template/ with hash_id is used."""
    v1 = router.put("/api/v1/template/").respond(status, json={"detail": "Method Not Allowed"})
    v0 = router.put("/api/v0/template/").respond(
        200, json={"success": True, "template": {"id": 77, "hash_id": "n"}}
    )
    router.get("/api/v0/template/").mock(return_value=templates(template_row(77, "n")))
    existing = model.Template(id=77, hash_id="old", name="k8s-nginx", private=True, creator_id=7)
    assert (await vast.update_template(existing, SPEC)).hash_id == "n"
    assert v1.call_count == 1
    sent = body_of(v0.calls.last.request)
    assert sent["hash_id"] == "old" and "id" not in sent and sent["image"] == "nginx"


async def test_update_template_prefers_answer_over_stale_read(
    router: respx.MockRouter, vast: VastClient
) -> None:
    """When the read-back still shows the old hash but the answer carries a new one, the new one wins."""
    router.put("/api/v1/template/").respond(
        200, json={"success": True, "template": {"id": 77, "hash_id": "new"}}
    )
    router.get("/api/v0/template/").mock(return_value=templates(template_row(77, "old")))
    existing = model.Template(id=77, hash_id="old", name="k8s-nginx", private=True, creator_id=7)
    assert (await vast.update_template(existing, SPEC)).hash_id == "new"


async def test_update_template_other_rejection_does_not_fall_back(
    router: respx.MockRouter, vast: VastClient
) -> None:
    """A 400 from PUT /api/v1/template/ is raised as VastRejected without trying v0."""
    router.put("/api/v1/template/").respond(
        400, json={"error": "invalid_args", "msg": "Template name is required"}
    )
    v0 = router.put("/api/v0/template/").respond(200, json={"success": True})
    existing = model.Template(id=77, hash_id="old", name="k8s-nginx")
    with pytest.raises(errors.VastRejected, match="Template name is required"):
        await vast.update_template(existing, SPEC)
    assert v0.call_count == 0


async def test_request_logs_flow(router: respx.MockRouter, vast: VastClient, sleep: FakeSleep) -> None:
    """Logs: PUT request_logs with a string tail, then GET result_url without auth until it answers 200."""
    result_url = "http://logs.test/instance_logs/abc.log"
    put = router.put("/api/v0/instances/request_logs/5/").respond(
        200, json={"success": True, "result_url": result_url}
    )
    fetch = router.get(result_url).mock(
        side_effect=[httpx.Response(404), httpx.Response(404), httpx.Response(200, text="line1\nline2\n")]
    )
    text = await vast.request_logs(5, tail=50, poll_attempts=5, poll_interval_s=0.3)
    assert text == "line1\nline2\n"
    assert_api_headers(put.calls.last.request, with_body=True)
    assert body_of(put.calls.last.request) == {"tail": "50"}
    assert fetch.call_count == 3
    for call in fetch.calls:
        assert "Authorization" not in call.request.headers
        assert KEY not in str(call.request.headers) and KEY not in str(call.request.url)
    assert sleep.waits == [0.3, 0.3, 0.3]


async def test_request_logs_never_ready(router: respx.MockRouter, vast: VastClient) -> None:
    """A result_url that never answers 200 gives VastUnavailable after poll_attempts GETs."""
    router.put("/api/v0/instances/request_logs/5/").respond(200, json={"result_url": f"{BASE}/logs/x.log"})
    fetch = router.get("/logs/x.log").mock(side_effect=[httpx.Response(403), httpx.ReadTimeout("slow")] * 2)
    with pytest.raises(errors.VastUnavailable, match="request logs"):
        await vast.request_logs(5, poll_attempts=4)
    assert fetch.call_count == 4


@pytest.mark.parametrize("answer", [{}, {"result_url": "file:///etc/passwd"}, {"result_url": 5}], ids=str)
async def test_request_logs_needs_http_result_url(
    router: respx.MockRouter, vast: VastClient, answer: Any
) -> None:
    """A missing or non-http(s) result_url is VastBadResponse and is never fetched."""
    router.put("/api/v0/instances/request_logs/5/").respond(200, json=answer)
    with pytest.raises(errors.VastBadResponse, match="result_url"):
        await vast.request_logs(5)


def test_encode_query_matches_the_cli() -> None:
    """Query values are json.dumps'd with default separators, then form-encoded (space -> '+')."""
    params = {"select_cols": ["*"], "select_filters": {"name": {"eq": "k8s-nginx"}}}
    assert wire.encode_query(params) == CAPTURED_TEMPLATE_QUERY
    assert wire.encode_query({"owner": "me", "after_token": "a b"}) == "owner=me&after_token=a+b"


# ---------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("answer", "expected", "text"),
    [
        (
            httpx.Response(401, json={"error": "auth_error", "msg": "Invalid user key"}),
            errors.AuthError,
            "Invalid",
        ),
        (httpx.Response(403, json={"error": "not_authorized", "msg": "nope"}), errors.AuthError, "nope"),
        (httpx.Response(404, json={"success": False, "error": "auth_error"}), errors.AuthError, "auth_error"),
        (httpx.Response(404, json={"msg": "Invalid user key"}), errors.AuthError, "Invalid user key"),
        (
            httpx.Response(404, json={"msg": "Session expired. Please log in again."}),
            errors.AuthError,
            "expired",
        ),
        (
            httpx.Response(400, json={"error": "invalid_request", "msg": "bad col"}),
            errors.VastRejected,
            "bad col",
        ),
        (httpx.Response(404, text="Not Found"), errors.VastRejected, "Not Found"),
        (httpx.Response(410, json={"error": "deprecated_endpoint"}), errors.VastRejected, "deprecated"),
        (httpx.Response(200, text="<html>oops</html>"), errors.VastBadResponse, "not JSON: <html>oops"),
        (httpx.Response(200, json={"success": False, "msg": "no"}), errors.VastRejected, "no"),
        (httpx.Response(200, json=[1, 2]), errors.VastBadResponse, "not an object"),
    ],
    ids=[
        "401",
        "403",
        "404-auth_error",
        "404-invalid-key",
        "404-session",
        "400",
        "404-text",
        "410-other-call",
        "200-html",
        "200-success-false",
        "200-list",
    ],
)
async def test_error_mapping(
    router: respx.MockRouter, vast: VastClient, answer: httpx.Response, expected: type[Exception], text: str
) -> None:
    """Each non-retryable answer maps to its error; the message names the call and the server's words."""
    route = router.get("/api/v0/users/current").mock(return_value=answer)
    with pytest.raises(expected) as caught:
        await vast.whoami()
    assert type(caught.value) is expected
    assert str(caught.value).startswith("whoami: ")
    assert text in str(caught.value)
    assert route.call_count == 1


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(
            404, json={"success": False, "error": "invalid_args", "msg": "error 404/3603: no_such_ask"}
        ),
        httpx.Response(410, json={"success": False, "error": "no_such_ask", "msg": "no longer available"}),
        httpx.Response(404, json={"detail": "Not found."}),
        httpx.Response(404, json={"success": False, "msg": "ask 123 is not available"}),
    ],
    ids=["404-no_such_ask", "410", "404-detail", "404-other-words"],
)
async def test_rent_offer_gone(router: respx.MockRouter, vast: VastClient, answer: httpx.Response) -> None:
    """404 and 410 on rent are OfferGone (try the next offer), whatever the body says (vast-api.md
    §11.1), after one request; a refusal would count towards the rental's two."""
    route = router.put("/api/v0/asks/123/").mock(return_value=answer)
    with pytest.raises(errors.OfferGone):
        await vast.rent(123, rent_request())
    assert route.call_count == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("timed out"),
        httpx.Response(502, text="Bad Gateway"),
        httpx.Response(504, text="Gateway Timeout"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("[Errno 104] Connection reset by peer"),
        httpx.Response(200, text="<html>"),
        httpx.Response(200, json={"success": True}),
        httpx.Response(200, json={"success": True, "new_contract": "soon"}),
    ],
    ids=["timeout", "502", "504", "dropped", "reset", "200-html", "200-no-contract", "200-bad-contract"],
)
async def test_rent_outcome_unknown_after_one_request(
    router: respx.MockRouter, vast: VastClient, sleep: FakeSleep, failure: Any
) -> None:
    """An ambiguous rent answer is RentOutcomeUnknown after exactly one request: never retried."""
    route = router.put("/api/v0/asks/123/").mock(
        side_effect=[failure, httpx.Response(200, json={"new_contract": 1})]
    )
    with pytest.raises(errors.RentOutcomeUnknown, match="list by label"):
        await vast.rent(123, rent_request())
    assert route.call_count == 1
    assert sleep.waits == []


async def test_rent_rate_limited_is_not_retried(router: respx.MockRouter, vast: VastClient) -> None:
    """A 429 on rent is RateLimited (nothing was rented) and is not retried."""
    route = router.put("/api/v0/asks/123/").respond(429, json={"detail": "API requests too frequent"})
    with pytest.raises(errors.RateLimited):
        await vast.rent(123, rent_request())
    assert route.call_count == 1


async def test_rent_success_false_is_rejected(router: respx.MockRouter, vast: VastClient) -> None:
    """A 200 with success: false on rent is VastRejected with the server's msg."""
    router.put("/api/v0/asks/123/").respond(
        200, json={"success": False, "error": "invalid_price", "msg": "too low"}
    )
    with pytest.raises(errors.VastRejected, match="too low"):
        await vast.rent(123, rent_request())


async def test_429_plain_text_is_retried_with_backoff(
    router: respx.MockRouter, vast: VastClient, sleep: FakeSleep, observer: Observer
) -> None:
    """A plain-text 429 is retried with exponential backoff, and each wait is reported to the observer."""
    too_fast = httpx.Response(429, text="API requests too frequent")
    route = router.get("/api/v0/users/current").mock(
        side_effect=[too_fast, too_fast, httpx.Response(200, json={"id": 7})]
    )
    assert await vast.whoami() == {"id": 7}
    assert route.call_count == 3
    assert sleep.waits == [0.01, 0.02]
    assert observer.waits == [("whoami", 0.01), ("whoami", 0.02)]
    assert observer.requests == [("whoami", 429), ("whoami", 429), ("whoami", 200)]


async def test_429_json_detail_exhausts_attempts(router: respx.MockRouter, vast: VastClient) -> None:
    """After the last attempt the mapped RateLimited is raised (not a tenacity RetryError), with detail."""
    detail = {"detail": "API requests too frequent endpoint threshold=4.5"}
    route = router.get("/api/v1/instances/").respond(429, json=detail)
    with pytest.raises(errors.RateLimited, match=r"threshold=4\.5") as caught:
        await vast.list_instances()
    assert caught.value.retry_after_s == 4.5, "the threshold Vast names is the wait"
    assert route.call_count == POLICY.attempts


async def test_429_threshold_in_plain_text_sets_the_wait(
    router: respx.MockRouter, vast: VastClient, sleep: FakeSleep
) -> None:
    """Without Retry-After, the endpoint threshold in a plain-text 429 is the wait before the retry."""
    limited = httpx.Response(429, text="API requests too frequent endpoint threshold=3.0")
    router.get("/api/v0/users/current").mock(side_effect=[limited, httpx.Response(200, json={})])
    assert await vast.whoami() == {}
    assert sleep.waits == [3.0 + POLICY.initial_backoff_s]


async def test_429_retry_after_is_honoured(
    router: respx.MockRouter, vast: VastClient, sleep: FakeSleep, observer: Observer
) -> None:
    """A numeric Retry-After within the cap is the minimum wait before the retry (plus the backoff step)."""
    limited = httpx.Response(429, headers={"Retry-After": "2"}, text="API requests too frequent")
    router.get("/api/v0/users/current").mock(side_effect=[limited, httpx.Response(200, json={})])
    assert await vast.whoami() == {}
    # the server's 2 s plus the first (jitter-free in these tests) backoff step
    assert sleep.waits == [2.0 + POLICY.initial_backoff_s]
    assert observer.waits == [("whoami", 2.0 + POLICY.initial_backoff_s)]


async def test_429_retry_after_above_cap_is_not_retried(
    router: respx.MockRouter, vast: VastClient, sleep: FakeSleep
) -> None:
    """A Retry-After above the cap raises RateLimited at once, carrying the server's wait."""
    route = router.get("/api/v0/users/current").respond(429, headers={"Retry-After": "120"}, text="slow down")
    with pytest.raises(errors.RateLimited) as caught:
        await vast.whoami()
    assert caught.value.retry_after_s == 120.0
    assert route.call_count == 1
    assert sleep.waits == []


async def test_429_retry_after_of_years_is_capped_at_a_day(
    router: respx.MockRouter, vast: VastClient
) -> None:
    """A bogus Retry-After (a date in seconds) asks for at most a day's rest, not decades."""
    router.get("/api/v0/users/current").respond(429, headers={"Retry-After": "1764547200"}, text="slow down")
    with pytest.raises(errors.RateLimited) as caught:
        await vast.whoami()
    assert caught.value.retry_after_s == 24 * 3600.0


async def test_429_unparseable_retry_after_uses_backoff(
    router: respx.MockRouter, vast: VastClient, sleep: FakeSleep
) -> None:
    """A Retry-After that is not a number is ignored in favour of the backoff."""
    limited = httpx.Response(429, headers={"Retry-After": "soon"}, text="too frequent")
    router.get("/api/v0/users/current").mock(side_effect=[limited, httpx.Response(200, json={})])
    await vast.whoami()
    assert sleep.waits == [0.01]


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"X-RateLimit-Reset": str(int(NOW) + 3600)}, 3600.0),
        ({"X-RateLimit-Reset": str(int(NOW) + 1)}, 1.0),
        ({"X-RateLimit-Reset": str(int(NOW * 1000))}, 24 * 3600.0),
        ({}, None),
    ],
    ids=["reset-in-1h", "reset-in-1s", "reset-in-ms-capped-at-a-day", "no-reset"],
)
async def test_search_quota_exceeded_is_not_retried(
    router: respx.MockRouter, vast: VastClient, sleep: FakeSleep, headers: dict[str, str], wait: float | None
) -> None:
    """429 search_quota_exceeded is SearchQuotaExceeded after one request, waiting until X-RateLimit-Reset."""
    route = router.post("/api/v0/bundles/").respond(
        429,
        headers=headers,
        json={"success": False, "error": "search_quota_exceeded", "msg": "Daily search quota exceeded"},
    )
    with pytest.raises(errors.SearchQuotaExceeded, match="quota") as caught:
        await vast.search_offers({})
    assert caught.value.retry_after_s == wait
    assert route.call_count == 1
    assert sleep.waits == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_retried_then_unavailable(
    router: respx.MockRouter, vast: VastClient, sleep: FakeSleep, observer: Observer, status: int
) -> None:
    """5xx on an idempotent call is retried with backoff, then VastUnavailable carrying the status."""
    route = router.get("/api/v0/instances/5/").respond(status, text="upstream trouble")
    with pytest.raises(errors.VastUnavailable, match="upstream trouble") as caught:
        await vast.show_instance(5)
    assert caught.value.status == status
    assert route.call_count == POLICY.attempts
    assert sleep.waits == [0.01, 0.02]
    assert observer.waits == []


async def test_transport_errors_retried_on_idempotent_call(
    router: respx.MockRouter, vast: VastClient, sleep: FakeSleep, observer: Observer
) -> None:
    """A timeout and a connect error on an idempotent call are retried, then the answer is used."""
    route = router.delete("/api/v0/instances/5/").mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), httpx.Response(200, json={})]
    )
    assert await vast.destroy_instance(5) is True
    assert route.call_count == 3
    assert sleep.waits == [0.01, 0.02]
    assert observer.requests == [
        ("destroy instance", None),
        ("destroy instance", None),
        ("destroy instance", 200),
    ]


def _transport_errors() -> list[type[httpx.TransportError]]:
    found: list[type[httpx.TransportError]] = []
    pending: list[type[httpx.TransportError]] = [httpx.TransportError]
    while pending:
        cls = pending.pop()
        subclasses = cls.__subclasses__()
        pending.extend(subclasses)
        if not subclasses:
            found.append(cls)
    return sorted(found, key=lambda c: c.__name__)


def test_transport_error_list_is_complete() -> None:
    """The parametrization below covers the httpx transport errors named in the brief."""
    names = {cls.__name__ for cls in _transport_errors()}
    assert {
        "ConnectError",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "RemoteProtocolError",
        "ReadError",
    } <= names


@pytest.mark.parametrize("exc_class", _transport_errors(), ids=lambda c: c.__name__)
async def test_every_transport_error_maps_to_ours(
    router: respx.MockRouter, vast: VastClient, exc_class: type[httpx.TransportError]
) -> None:
    """Every httpx transport error becomes VastUnavailable (RentOutcomeUnknown on rent), chained."""
    router.get("/api/v0/users/current").mock(side_effect=exc_class("boom"))
    with pytest.raises(errors.VastUnavailable) as caught:
        await vast.whoami()
    assert isinstance(caught.value.__cause__, exc_class)
    assert exc_class.__name__ in str(caught.value)
    rent = router.put("/api/v0/asks/1/").mock(side_effect=exc_class("boom"))
    with pytest.raises(errors.RentOutcomeUnknown):
        await vast.rent(1, rent_request())
    assert rent.call_count == 1


def test_connection_errors_name_the_url_without_secrets() -> None:
    """A failed connection names the URL it went to, without credentials, query or the API key."""
    request = httpx.Request("GET", f"http://u:pw@127.0.0.1:9/api/v0/users/current/?api_key={KEY}")
    mapped = wire.map_failure("whoami", httpx.ConnectError("refused", request=request), secrets=(KEY,))
    assert (
        str(mapped)
        == "whoami: connection failed to http://127.0.0.1:9/api/v0/users/current/ (ConnectError: refused)"
    )
    assert "pw" not in str(mapped) and KEY not in str(mapped)


def test_map_failure_maps_other_httpx_errors() -> None:
    """httpx errors outside the transport family (e.g. TooManyRedirects) still map to VastUnavailable."""
    mapped = wire.map_failure("whoami", httpx.TooManyRedirects("loop"))
    assert isinstance(mapped, errors.VastUnavailable)


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(401, json={"error": "auth_error", "msg": f"Invalid user key {KEY}"}),
        httpx.Response(404, text=f"no route for /api?api_key={KEY}"),
        httpx.Response(429, text=f"API requests too frequent for {KEY}"),
        httpx.Response(500, json={"detail": f"crash with Bearer {KEY}"}),
        httpx.Response(200, text=f"<html>{KEY}</html>"),
        httpx.Response(200, json={"success": False, "message": KEY}),
        httpx.Response(400, text="x" * 190 + KEY),
        httpx.ConnectError(f"cannot connect with {KEY}"),
        httpx.ReadTimeout(f"timed out sending Authorization: Bearer {KEY}"),
    ],
    ids=["401", "404-text", "429", "500-json", "200-html", "200-success-false", "long", "connect", "timeout"],
)
@pytest.mark.parametrize("call", ["whoami", "rent"])
async def test_no_error_reveals_the_api_key(
    router: respx.MockRouter, vast: VastClient, failure: Any, call: str
) -> None:
    """No error message, reason or repr contains the API key, even when the server echoes it."""
    router.get("/api/v0/users/current").mock(side_effect=[failure] * POLICY.attempts)
    router.put("/api/v0/asks/1/").mock(side_effect=[failure])
    with pytest.raises(errors.VastError) as caught:
        if call == "whoami":
            await vast.whoami()
        else:
            await vast.rent(1, rent_request())
    exc = caught.value
    for text in (str(exc), repr(exc), exc.reason, str(exc.args)):
        assert KEY not in text
        assert KEY[:8] not in text
    assert KEY not in repr(vast)


def test_rent_request_repr_hides_secrets() -> None:
    """RentRequest's repr shows neither the registry login nor env values."""
    req = rent_request(
        env={"HF_TOKEN": "hf_secretvalue"}, image_login=SecretStr("-u bob -p pw-123 docker.io")
    )
    text = repr(req)
    assert "pw-123" not in text and "bob" not in text and "hf_secretvalue" not in text
    assert "HF_TOKEN" in text and "***" in text


# ---------------------------------------------------------------- small pieces


def test_backoff_is_exponential_capped_and_jittered() -> None:
    """Backoff doubles from initial_backoff_s up to max_backoff_s; jitter only ever shortens it."""
    policy = RetryPolicy(jitter=0.0)
    assert [policy.backoff_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    jittered = RetryPolicy(jitter=1.0)
    for n in range(1, 7):
        assert 0 <= jittered.backoff_s(n) <= policy.backoff_s(n)
    asked: list[tuple[float, float]] = []

    def lowest(low: float, high: float) -> float:
        asked.append((low, high))
        return low

    assert RetryPolicy(jitter=0.5).backoff_s(3, lowest) == 1.0
    assert asked == [(1.0, 2.0)], "the jitter draws from the random source it is given"


async def test_retry_jitter_comes_from_the_injected_source(router: respx.MockRouter) -> None:
    """The client's waits between retries use the ``rand`` it was built with (no hidden randomness)."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    router.get("/api/v0/users/current").mock(
        side_effect=[httpx.Response(502), httpx.Response(502), httpx.Response(200, json={"id": 1})]
    )
    async with httpx.AsyncClient() as http:
        vast = VastClient(
            http,
            SecretStr("k3y-0123456789"),
            base_url=BASE,
            retry=RetryPolicy(attempts=3, initial_backoff_s=1.0, max_backoff_s=8.0, jitter=1.0),
            sleep=sleep,
            rand=lambda low, high: high - 0.25,
        )
        assert await vast.whoami() == {"id": 1}
    assert waits == [0.75, 1.75]


@pytest.mark.parametrize(
    "fields",
    [{"image": None}, {"ports": [0]}, {"ports": [70000]}, {"label": " "}],
    ids=["no-image", "port-0", "port-high", "blank-label"],
)
def test_rent_request_rejects_nonsense(fields: dict[str, Any]) -> None:
    """A RentRequest without image or template, with a bad port or a blank label is refused up front."""
    with pytest.raises(ValueError):
        rent_request(**fields)


async def test_ids_must_be_positive_ints(vast: VastClient) -> None:
    """Ids go into URL paths, so anything but a positive int is refused before any request."""
    with pytest.raises(ValueError):
        await vast.destroy_instance(0)
    with pytest.raises(ValueError):
        await vast.rent(True, rent_request())


async def test_list_by_label_refuses_empty_label(vast: VastClient) -> None:
    """An empty label would match unlabelled instances, so it is refused."""
    with pytest.raises(ValueError):
        await vast.list_by_label("")


# ---------------------------------------------------------------- a key that worked, refused later (issue 16)

AUTH_BLIPS = [
    httpx.Response(401, json={"error": "auth_error", "msg": "Invalid user key"}),
    httpx.Response(403, json={"error": "not_authorized", "msg": "nope"}),
    httpx.Response(403, text="<html><body>403 Forbidden</body></html>"),
]


@pytest.mark.parametrize("blip", AUTH_BLIPS, ids=["401", "403", "edge-html-403"])
async def test_a_refusal_after_the_key_worked_is_retried(
    router: respx.MockRouter, vast: VastClient, sleep: FakeSleep, blip: httpx.Response, caplog: Any
) -> None:
    """Once a call succeeded, one 401/403 is a transient fault: retried with backoff, logged as a WARNING."""
    router.get("/api/v0/users/current").respond(json={"id": 1})
    listing = {"instances": [], "next_token": None}
    router.get("/api/v1/instances/").mock(side_effect=[blip, httpx.Response(200, json=listing)])
    await vast.whoami()
    with caplog.at_level("WARNING", logger="provisioner.vast.client"):
        assert await vast.list_instances() == []
    assert len(sleep.waits) == 1, "one backoff before the retry"
    refused = [r for r in caplog.records if getattr(r, "event", None) == "auth-refused"]
    assert len(refused) == 1 and refused[0].levelname == "WARNING"


async def test_a_lasting_refusal_after_the_key_worked_is_not_an_auth_error(
    router: respx.MockRouter, vast: VastClient
) -> None:
    """A key refused on every retry after it worked raises AuthRefusedAgain (retryable), not AuthError."""
    router.get("/api/v0/users/current").respond(json={"id": 1})
    router.get("/api/v1/instances/").respond(403, json={"error": "not_authorized"})
    await vast.whoami()
    with pytest.raises(errors.AuthRefusedAgain) as caught:
        await vast.list_instances()
    assert not isinstance(caught.value, errors.AuthError)
    assert isinstance(caught.value, errors.VastUnavailable) and caught.value.status == 403


async def test_a_key_refused_from_the_start_is_an_auth_error(
    router: respx.MockRouter, vast: VastClient, sleep: FakeSleep
) -> None:
    """A key that never worked in this process: 401 is AuthError at once (the daemon exits 3), no retry."""
    route = router.get("/api/v0/users/current").respond(401, json={"error": "auth_error"})
    with pytest.raises(errors.AuthError):
        await vast.whoami()
    assert route.call_count == 1 and not sleep.waits
    assert vast.key_worked is False
