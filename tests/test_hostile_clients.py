"""Hostile and broken clients: each input here once reached a 500, a hang, unbounded memory, a forged
log line or a wrong answer. In-process through the ASGI app, and, where the server or Google's
runtime decides, against the real `functions-framework --target=api` on loopback."""

import base64
import io
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.api import create_app
from app.core.db.pagination import CURSOR_LAYOUT
from app.core.observability.logs import CloudLoggingFormatter, TextFormatter
from app.core.settings import Settings
from app.core.web.middleware import MAX_HEADER_BYTES, MAX_TARGET_BYTES
from tests.function_server import FunctionServer
from tests.helpers import MISSING_ID, assert_problem, error_locations, unique
from tests.identity_fakes import AUDIENCE, Issuer

# --- entity tags ------------------------------------------------------------------------------------


def _tag(resource: dict[str, Any], version: bytes) -> bytes:
    return b'"' + uuid.UUID(resource["id"]).hex.encode() + b"." + version + b'"'


IMPOSSIBLE_VERSIONS = [b"3000000000", b"2147483648", b"\xb2", b"\xd9\xa3", b"1" * 5000, b"-1", b"+1", b" 1"]


@pytest.mark.parametrize("version", IMPOSSIBLE_VERSIONS)
async def test_an_if_match_version_we_never_issue_is_412(
    client: httpx.AsyncClient, task: dict[str, Any], version: bytes
) -> None:
    url, headers = f"/v1/tasks/{task['id']}", [(b"if-match", _tag(task, version))]
    assert_problem(await client.patch(url, json={"title": "x"}, headers=headers), 412)
    assert_problem(await client.delete(url, headers=headers), 412)
    project_url = f"/v1/projects/{task['project_id']}"
    project_headers = [(b"if-match", b'"' + uuid.UUID(task["project_id"]).hex.encode() + b"." + version + b'"')]
    assert_problem(await client.delete(project_url, headers=project_headers), 412)
    assert (await client.get(url)).json()["version"] == 1


@pytest.mark.parametrize("version", IMPOSSIBLE_VERSIONS)
async def test_an_if_none_match_version_we_never_issue_is_a_normal_read(
    client: httpx.AsyncClient, task: dict[str, Any], version: bytes
) -> None:
    response = await client.get(f"/v1/tasks/{task['id']}", headers=[(b"if-none-match", _tag(task, version))])
    assert response.status_code == 200


async def test_a_long_list_of_tags_still_finds_the_current_one(client: httpx.AsyncClient, task: dict[str, Any]) -> None:
    url = f"/v1/tasks/{task['id']}"
    current = (await client.get(url)).headers["etag"]
    others = ", ".join(f'"{uuid.uuid4().hex}.{n}"' for n in range(200))
    assert (await client.get(url, headers={"If-None-Match": f"{others}, W/{current}"})).status_code == 304
    patched = await client.patch(url, json={"title": "y"}, headers={"If-Match": f"{others}, {current}"})
    assert patched.status_code == 200


# --- Idempotency-Key --------------------------------------------------------------------------------


async def test_an_idempotency_key_with_an_empty_body_answers_as_without_it(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    json_type = {"content-type": "application/json"}
    for url in ["/v1/projects", f"/v1/projects/{project['id']}/tasks"]:
        without = await client.post(url, content=b"", headers=json_type)
        keyed = await client.post(url, content=b"", headers=json_type | {"Idempotency-Key": unique("empty")})
        assert assert_problem(keyed, 422)["errors"] == assert_problem(without, 422)["errors"]


async def test_two_idempotency_keys_are_refused(client: httpx.AsyncClient) -> None:
    headers = [("Idempotency-Key", unique("a")), ("Idempotency-Key", unique("b"))]
    response = await client.post("/v1/projects", json={"name": unique()}, headers=headers)
    assert ["header", "idempotency-key"] in error_locations(assert_problem(response, 422))


# --- cursors ----------------------------------------------------------------------------------------


async def _first_cursor(client: httpx.AsyncClient, url: str, **params: Any) -> str:
    page = (await client.get(url, params={"limit": 1} | params)).json()
    assert page["next_cursor"], page
    cursor: str = page["next_cursor"]
    return cursor


def _with_timestamp(cursor: str, microseconds: int) -> str:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    binding, _, row_id = CURSOR_LAYOUT.unpack(raw)
    return base64.urlsafe_b64encode(CURSOR_LAYOUT.pack(binding, microseconds, row_id)).decode().rstrip("=")


async def test_a_cursor_at_the_edge_of_the_calendar_is_422(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    edge = base64.urlsafe_b64encode(f"0001-01-01T00:00:00+23:59|{MISSING_ID}".encode()).decode().rstrip("=")
    tasks_url = f"/v1/projects/{project['id']}/tasks"
    for _ in range(2):
        await client.post(tasks_url, json={"title": "t"})
    issued = await _first_cursor(client, tasks_url)
    for url, cursor in [
        ("/v1/projects", edge),
        (tasks_url, edge),
        (tasks_url, _with_timestamp(issued, 2**63 - 1)),
        (tasks_url, _with_timestamp(issued, -(2**63))),
    ]:
        response = await client.get(url, params={"cursor": cursor})
        assert ["query", "cursor"] in error_locations(assert_problem(response, 422)), cursor


async def test_a_cursor_is_bound_to_its_list_and_filters(client: httpx.AsyncClient) -> None:
    marker = unique("bound")
    first, second = [(await client.post("/v1/projects", json={"name": f"{marker}-{n}"})).json() for n in range(2)]
    for project in (first, second):
        for status in ["todo", "todo", "done", "done"]:
            await client.post(f"/v1/projects/{project['id']}/tasks", json={"title": "t", "status": status})
    first_tasks, second_tasks = (f"/v1/projects/{p['id']}/tasks" for p in (first, second))
    projects_cursor = await _first_cursor(client, "/v1/projects", q=marker)
    tasks_cursor = await _first_cursor(client, first_tasks)
    done_cursor = await _first_cursor(client, first_tasks, status="done")
    for url, params in [
        (first_tasks, {"cursor": projects_cursor}),  # another list
        ("/v1/projects", {"cursor": tasks_cursor}),
        ("/v1/projects", {"cursor": projects_cursor}),  # the same list without its filter
        ("/v1/projects", {"cursor": projects_cursor, "q": marker + "x"}),
        (second_tasks, {"cursor": tasks_cursor}),  # another project's tasks
        (first_tasks, {"cursor": done_cursor}),
        (first_tasks, {"cursor": done_cursor, "status": "todo"}),
        (first_tasks, {"cursor": tasks_cursor, "status": "done"}),
    ]:
        response = await client.get(url, params=params)
        assert ["query", "cursor"] in error_locations(assert_problem(response, 422)), (url, params)
    for url, params in [
        ("/v1/projects", {"cursor": projects_cursor, "q": marker}),
        (first_tasks, {"cursor": tasks_cursor}),
        (first_tasks, {"cursor": done_cursor, "status": "done"}),
    ]:
        assert (await client.get(url, params=params)).status_code == 200, (url, params)


# --- bodies -----------------------------------------------------------------------------------------

NOT_JSON_BODIES = [
    b'{"name": "trunc',  # truncated
    b'{"name": "\xff"}',  # not UTF-8
    '{"name": "utf16"}'.encode("utf-16"),  # UTF-16 with its byte order mark
    '{"name": "utf16"}'.encode("utf-16-le"),
    '{"name": "utf32"}'.encode("utf-32"),
    b'\xef\xbb\xbf{"name": "bom"}',  # UTF-8 with a byte order mark
    b'{"name": "\xed\xa0\x80"}',  # an encoded surrogate: not UTF-8
    b'{"name": NaN}',
    b"[" * 100_000 + b"]" * 100_000,  # nested past json's recursion limit
]


@pytest.mark.parametrize("body", NOT_JSON_BODIES)
async def test_every_body_that_is_not_utf8_json_gets_one_problem(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/v1/projects", content=body, headers={"content-type": "application/json"})
    problem = assert_problem(response, 422)
    assert problem["detail"] == "the body is not valid JSON"
    assert problem["errors"] == [{"loc": ["body"], "msg": "send one UTF-8 JSON document", "type": "json_invalid"}]


@pytest.mark.parametrize("due_date", [0, 1700000000, 1.5, "2027-03-01T00:00:00", "20270301", "2027-3-1", True])
async def test_a_due_date_is_an_iso_date_only(
    client: httpx.AsyncClient, project: dict[str, Any], due_date: object
) -> None:
    url = f"/v1/projects/{project['id']}/tasks"
    assert ["body", "due_date"] in error_locations(
        assert_problem(await client.post(url, json={"title": "t", "due_date": due_date}), 422)
    )
    task = (await client.post(url, json={"title": "t", "due_date": "2027-03-01"})).json()
    assert task["due_date"] == "2027-03-01"
    patched = await client.patch(f"/v1/tasks/{task['id']}", json={"due_date": due_date})
    assert ["body", "due_date"] in error_locations(assert_problem(patched, 422))


# --- HTTP details -----------------------------------------------------------------------------------


async def test_405_lists_every_method_of_the_path(client: httpx.AsyncClient, task: dict[str, Any]) -> None:
    for method, url, allowed in [
        ("PUT", f"/v1/projects/{task['project_id']}", "DELETE, GET, HEAD, PATCH"),
        ("PUT", f"/v1/tasks/{task['id']}", "DELETE, GET, HEAD, PATCH"),
        ("DELETE", "/v1/projects", "GET, HEAD, POST"),
        ("OPTIONS", f"/v1/projects/{task['project_id']}/tasks", "GET, HEAD, POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ]:
        response = await client.request(method, url)
        assert_problem(response, 405)
        assert response.headers["allow"] == allowed, (method, url)


async def test_head_answers_as_get_without_a_body(client: httpx.AsyncClient, task: dict[str, Any]) -> None:
    for url in [f"/v1/tasks/{task['id']}", f"/v1/projects/{task['project_id']}/tasks", "/healthz", "/openapi.json"]:
        got, head = await client.get(url), await client.head(url)
        assert (head.status_code, head.content) == (200, b""), url
        for header in ["content-type", "content-length", "etag"]:
            assert head.headers.get(header) == got.headers.get(header), (url, header)
    assert (await client.head(f"/v1/tasks/{MISSING_ID}")).status_code == 404


async def test_204_and_304_carry_no_content_type(client: httpx.AsyncClient, task: dict[str, Any]) -> None:
    url = f"/v1/tasks/{task['id']}"
    not_modified = await client.get(url, headers={"If-None-Match": (await client.get(url)).headers["etag"]})
    deleted = await client.delete(url)
    for response, status in [(not_modified, 304), (deleted, 204)]:
        assert response.status_code == status
        assert "content-type" not in response.headers and response.content == b""


async def test_a_trailing_slash_is_a_404_never_a_redirect_built_from_host(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/projects/", headers={"Host": "evil.example"})
    assert_problem(response, 404)
    assert "location" not in response.headers


# --- request heads and bodies, and the served function --------------------------------------------


@pytest.fixture
def served(served_hardened: FunctionServer) -> FunctionServer:
    return served_hardened


def _port(server: FunctionServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def _exchange(server: FunctionServer, head: bytes, body_chunks: tuple[bytes, ...] = (), pause_s: float = 0) -> bytes:
    """Send a raw request (the head, then each chunk after `pause_s`); return the response."""
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as connection:
        connection.sendall(head)
        try:
            for chunk in body_chunks:
                time.sleep(pause_s)
                connection.sendall(chunk)
        except OSError:
            pass  # the server may already have answered and closed
        received = b""
        while not _complete(received) and (chunk := connection.recv(65536)):
            received += chunk
        return received


def _complete(response: bytes) -> bool:
    head, separator, body = response.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return bool(separator) and bool(lengths) and len(body) >= int(lengths[0])


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _access_lines(server: FunctionServer, request_id: str) -> list[dict[str, Any]]:
    return [e for e in server.json_logs() if e.get("logger") == "app.access" and e.get("request_id") == request_id]


def _wait_for(condition: Callable[[], Any], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


async def test_headers_over_the_limit_are_a_431_problem_read_by_nobody(client: httpx.AsyncClient) -> None:
    request_id = unique("big")
    response = await client.get(
        "/v1/projects", headers={"X-Request-ID": request_id, "X-Padding": "x" * (MAX_HEADER_BYTES + 1)}
    )
    assert_problem(response, 431)
    assert response.headers["x-request-id"] != request_id  # no header of the request was read
    many = [(f"x-h{n}", "1") for n in range(200)]
    assert_problem(await client.get("/v1/projects", headers=many), 431)


async def test_a_target_over_the_limit_is_a_414_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/projects", params={"q": "x" * MAX_TARGET_BYTES}), 414)


@pytest.mark.parametrize(("length", "status"), [(b"\xb2", 201), (b"1" * 5000, 413), (b"+5", 201), (b"-1", 201)])
async def test_an_impossible_content_length_is_no_500(client: httpx.AsyncClient, length: bytes, status: int) -> None:
    body = b'{"name": "%s"}' % unique("length").encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", length)]
    response = await client.post("/v1/projects", content=body, headers=headers)
    assert response.status_code == status, response.text  # read as sent (the server, not the app, checks it)


def test_a_huge_header_is_a_431_problem_and_the_worker_answers_right_after(served: FunctionServer) -> None:
    # The server reads the whole head before the app sees it (see README); the app keeps no copy of it.
    head = b"GET /v1/projects HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"u" * (10 * 1024 * 1024) + b"\r\n\r\n"
    answer = _exchange(served, head)
    assert _status(answer) == 431 and b"application/problem+json" in answer
    started = time.monotonic()
    assert httpx.get(f"{served.base_url}/healthz", timeout=10).status_code == 200
    assert time.monotonic() - started < 1  # a liveness bound, not a speed target


def test_a_body_that_never_comes_is_a_408_problem_and_the_connection_closes(served: FunctionServer) -> None:
    head = b"POST /v1/projects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n"
    started = time.monotonic()
    answer = _exchange(served, head)
    assert _status(answer) == 408 and b"application/problem+json" in answer
    assert b"connection: close" in answer.lower()
    assert time.monotonic() - started < 8


def test_a_body_sent_too_slowly_is_a_408_problem(served: FunctionServer) -> None:
    head = b"POST /v1/projects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"
    answer = _exchange(served, head, (b"{",) * 20, pause_s=0.2)
    assert _status(answer) == 408


# --- logs -------------------------------------------------------------------------------------------


class _Lines:
    def __init__(self, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)

    def __enter__(self) -> "_Lines":
        app_logger = logging.getLogger("app")
        self.level = app_logger.level
        app_logger.addHandler(self.handler)
        app_logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        app_logger = logging.getLogger("app")
        app_logger.removeHandler(self.handler)
        app_logger.setLevel(self.level)

    def text(self) -> str:
        return self.stream.getvalue()


async def test_text_logs_escape_control_characters(client: httpx.AsyncClient) -> None:
    forged = "\r\n2026-01-01 00:00:00,000 CRITICAL app.audit delete project everything by admin"
    with _Lines(TextFormatter()) as lines:
        await client.get("/v1/projects" + forged.replace("\r", "%0D").replace("\n", "%0A").replace(" ", "%20"))
        await client.get("/v1/projects\x85\u2028x")
        await client.get("/__test__/boom", headers={"User-Agent": "a\x1b[31mred"})
    text = lines.text()
    assert "CRITICAL" in text  # written, but escaped into the access line
    for line in text.split("\n")[:-1]:
        assert line.startswith("20") or line.startswith("    "), repr(line)  # an entry, or its indented traceback
    assert not any(character in text for character in "\r\x85\u2028\x1b")


async def test_json_logs_escape_unicode_line_separators(client: httpx.AsyncClient) -> None:
    with _Lines(CloudLoggingFormatter("p")) as lines:
        await client.get("/v1/projects\u2028\x85\u2029", headers={"User-Agent": "ua\u2028\x85".encode()})
    text = lines.text()
    assert text and not any(character in text for character in "\u2028\u2029\x85")
    assert len(text.splitlines()) == len([line for line in text.split("\n") if line])  # nothing splits a line
    assert all(json.loads(line) for line in text.splitlines())


async def test_each_logged_field_is_capped(client: httpx.AsyncClient) -> None:
    request_id = unique("caps")
    headers = {
        "X-Request-ID": request_id,
        "User-Agent": "u" * 5_000,
        "Function-Execution-Id": "e" * 5_000,
        "X-Forwarded-For": "1" * 3_000,
    }
    with _Lines(CloudLoggingFormatter("p")) as lines:
        await client.get("/v1/projects/" + "p" * 7000, headers=headers)
    (entry,) = [json.loads(line) for line in lines.text().splitlines() if request_id in line]
    http_request = entry["httpRequest"]
    assert len(http_request["userAgent"]) <= 512 + 1
    assert len(http_request["requestUrl"]) <= 2048 + 1 and len(entry["message"]) <= 2048 + 20
    assert len(entry["logging.googleapis.com/labels"]["execution_id"]) <= 64 + 1
    assert http_request["remoteIp"] == "127.0.0.1"  # not an address: the connection's peer instead
    assert len(json.dumps(entry)) < 6 * 1024  # every field capped: one request, one bounded entry


def test_remote_ip_is_the_address_googles_front_end_appended(served: FunctionServer) -> None:
    request_id = unique("xff")
    headers = {"X-Request-ID": request_id, "X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
    assert httpx.get(f"{served.base_url}/healthz", headers=headers).status_code == 200
    _wait_for(lambda: _access_lines(served, request_id))
    assert _access_lines(served, request_id)[0]["httpRequest"]["remoteIp"] == "203.0.113.9"


# --- settings that change what the app reads --------------------------------------------------------


@pytest.fixture
async def app_with(database_url: str) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    apps: list[FastAPI] = []

    def client_for(**settings: Any) -> httpx.AsyncClient:
        application = create_app(Settings(database_url=database_url, **settings))
        apps.append(application)
        transport = httpx.ASGITransport(app=application, client=("192.0.2.50", 4242))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    yield client_for
    for application in apps:
        await application.state.database.dispose()


@pytest.mark.parametrize(
    ("hops", "forwarded", "remote_ip"),
    [
        (1, "198.51.100.1, 203.0.113.9", "203.0.113.9"),
        (2, "198.51.100.1, 203.0.113.9, 192.0.2.1", "203.0.113.9"),
        (2, "203.0.113.9", "192.0.2.50"),  # fewer entries than proxies: the peer
        (0, "198.51.100.1", "192.0.2.50"),
        (1, "not-an-address", "192.0.2.50"),
    ],
)
async def test_trusted_proxy_hops_choose_the_remote_ip(
    app_with: Callable[..., httpx.AsyncClient], hops: int, forwarded: str, remote_ip: str
) -> None:
    request_id = unique("hops")
    with _Lines(CloudLoggingFormatter("p")) as lines:
        async with app_with(trusted_proxy_hops=hops) as http:
            await http.get("/healthz", headers={"X-Request-ID": request_id, "X-Forwarded-For": forwarded})
    (entry,) = [json.loads(line) for line in lines.text().splitlines() if request_id in line]
    assert entry["httpRequest"]["remoteIp"] == remote_ip


# --- CORS -------------------------------------------------------------------------------------------


async def test_cors_is_off_by_default(client: httpx.AsyncClient) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert_problem(await client.options("/v1/projects", headers=preflight), 405)
    response = await client.get("/v1/projects", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_cors_serves_the_allowed_origins_only(app_with: Callable[..., httpx.AsyncClient]) -> None:
    async with app_with(cors_allowed_origins="https://app.example, http://localhost:5173") as http:
        preflight = await http.options(
            "/v1/projects",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        refused = await http.options(
            "/v1/projects", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert_problem(refused, 400)
        simple = await http.get("/v1/projects", headers={"Origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert "etag" in simple.headers["access-control-expose-headers"].lower()
        other = await http.get("/v1/projects", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_cors_preflights_pass_before_authentication(
    app_with: Callable[..., httpx.AsyncClient], issuer: Issuer
) -> None:
    settings = {"auth_mode": "google", "auth_audience": AUDIENCE, "oidc_jwks_url": issuer.jwks_url}
    async with app_with(cors_allowed_origins="https://app.example", **settings) as http:
        preflight = await http.options(
            "/v1/projects",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200  # a browser sends no token with it
        refused = await http.get("/v1/projects", headers={"Origin": "https://app.example"})
        assert_problem(refused, 401)
        assert refused.headers["access-control-allow-origin"] == "https://app.example"  # the page can read why
        token = {"Authorization": f"Bearer {issuer.token('alice@example.com')}"}
        allowed = await http.get("/v1/projects", headers={"Origin": "https://app.example"} | token)
        assert allowed.status_code == 200


@pytest.mark.parametrize("origins", ["app.example", "https://app.example/", "https://app.example/path", "ftp://x"])
def test_cors_origins_are_validated_at_start_up(origins: str) -> None:
    with pytest.raises(ValueError, match=r"cors_allowed_origins"):
        Settings(database_url="postgresql+asyncpg://x@h/d", cors_allowed_origins=origins)


# --- what the served function never sees -------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"TRACE /v1/projects HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"PROPFIND /v1/projects HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /v1/%0Aprojects HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /v1/projects HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
    ],
)
def test_requests_the_framework_or_server_answers_never_reach_the_function(
    served: FunctionServer, head: bytes, status: int
) -> None:
    answer = _exchange(served, head)
    assert _status(answer) == status
    assert b"x-request-id" not in answer.lower() and b"text/plain" in answer  # not the app's problem documents


def test_a_path_ending_in_an_encoded_newline_reaches_the_function_and_is_logged_escaped(
    served: FunctionServer,
) -> None:
    request_id = unique("newline")
    head = f"GET /v1/projects%0A HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_id}\r\n\r\n"
    answer = _exchange(served, head.encode())
    assert request_id.encode() in answer
    _wait_for(lambda: _access_lines(served, request_id))
    (entry,) = _access_lines(served, request_id)
    assert entry["httpRequest"]["requestUrl"] == "/v1/projects\n"
