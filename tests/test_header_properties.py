"""Property-based (Hypothesis): arbitrary bytes in every header the API reads, on every route and
method of the OpenAPI document. No answer is a 5xx, every error is a problem document, and the
service is alive and quick afterwards. In-process for breadth, then against the real served
function for what its server lets through.

Bounded for CI (HYPOTHESIS_MAX_EXAMPLES, default 300 in-process and a quarter of that served);
a longer sweep: `HYPOTHESIS_MAX_EXAMPLES=5000 make test PYTEST_ARGS=tests/test_header_properties.py`.
"""

import asyncio
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api import create_app
from app.core.settings import Settings
from tests.function_server import FunctionServer
from tests.helpers import asgi_client, unique
from tests.identity_fakes import AUDIENCE, Issuer

T = TypeVar("T")
MAX_EXAMPLES = int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "300"))
ORIGIN = "https://app.example"  # the served_hardened fixture allows it too

# Every header some layer of the app reads (the server's own, such as Content-Length, included).
HEADERS_READ = [
    "authorization",
    "content-type",
    "content-length",
    "if-match",
    "if-none-match",
    "idempotency-key",
    "x-request-id",
    "traceparent",
    "x-cloud-trace-context",
    "function-execution-id",
    "user-agent",
    "x-forwarded-for",
    "origin",
    "access-control-request-method",
    "access-control-request-headers",
    "host",
]
METHODS = ["GET", "HEAD", "POST", "PATCH", "DELETE", "PUT", "OPTIONS"]


DIGIT_LIKE = [b"\xb2", b"\xb9", b"1" * 5000, b"3000000000", b"2147483648", b"-1", b"+1", b" 1", b"1.0", b"0x10"]


def _raw(*, line_safe: bool, max_size: int = 64) -> st.SearchStrategy[bytes]:
    """Any bytes; over a real connection, none that ends the header line (the server splits there)."""
    raw = st.binary(max_size=max_size)
    return raw.map(lambda value: value.translate(None, b"\r\n\x00")) if line_safe else raw


def _values(name: str, resource_ids: list[str], *, line_safe: bool) -> st.SearchStrategy[bytes]:
    """Random bytes, or bytes shaped like what the header's parser expects, with near misses."""
    raw = _raw(line_safe=line_safe)
    number = st.one_of(st.integers(0, 2**70).map(lambda value: str(value).encode()), st.sampled_from(DIGIT_LIKE), raw)
    hex_id = st.one_of(st.sampled_from([uuid.UUID(value).hex.encode() for value in resource_ids]), raw)
    tag = st.builds(
        lambda weak, id_, version: weak + b'"' + id_ + b"." + version + b'"',
        st.sampled_from([b"", b"W/"]),
        hex_id,
        number,
    )
    shaped: dict[str, st.SearchStrategy[bytes]] = {
        "if-match": st.one_of(st.lists(tag, min_size=1, max_size=4).map(b", ".join), st.just(b"*")),
        "content-length": number,
        "idempotency-key": st.one_of(st.text(alphabet="abc-_.~!", min_size=1, max_size=300).map(str.encode), raw),
        "authorization": st.builds(bytes.__add__, st.sampled_from([b"Bearer ", b"bearer  ", b"Basic ", b""]), raw),
        "content-type": st.builds(
            bytes.__add__, st.sampled_from([b"application/json", b"application/merge-patch+json", b"text/plain"]), raw
        ),
        "traceparent": st.builds(lambda a, b: b"00-" + a + b"-" + b + b"-01", raw, raw),
        "x-cloud-trace-context": st.builds(lambda a, b: a + b"/" + b + b";o=1", raw, number),
        "x-forwarded-for": st.lists(st.one_of(st.ip_addresses().map(lambda ip: str(ip).encode()), raw), max_size=4).map(
            b", ".join
        ),
        "user-agent": st.one_of(raw, _raw(line_safe=line_safe, max_size=1000)),
    }
    shaped["if-none-match"] = shaped["if-match"]
    return st.one_of(raw, shaped[name]) if name in shaped else raw


def _headers(resource_ids: list[str], *, line_safe: bool) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    one = st.sampled_from(HEADERS_READ).flatmap(
        lambda name: st.tuples(st.just(name.encode()), _values(name, resource_ids, line_safe=line_safe))
    )
    return st.lists(one, min_size=1, max_size=6)


def _operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every documented operation, and every other method on each path."""
    paths = app.openapi()["paths"]
    return [(method, path) for path in paths for method in METHODS]


def _sample(schema: dict[str, Any], schemas: dict[str, Any]) -> Any:
    """A value its schema accepts: an object of its required fields, each a sample of its own schema."""
    if "$ref" in schema:
        return _sample(schemas[schema["$ref"].rsplit("/", 1)[1]], schemas)
    if "anyOf" in schema:
        return _sample(schema["anyOf"][0], schemas)
    if "enum" in schema:
        return schema["enum"][0]
    kind, fmt = schema.get("type"), schema.get("format")
    if kind == "object":
        required = schema.get("required", [])
        return {
            name: _sample(field, schemas) for name, field in schema.get("properties", {}).items() if name in required
        }
    if kind == "string":
        formats = {"uuid": str(uuid.uuid4()), "date": "2027-03-01", "date-time": "2027-03-01T00:00:00Z"}
        return formats.get(fmt) or unique("fuzz")[: schema.get("maxLength", 100)]
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    return {"boolean": True, "array": []}.get(str(kind))


def _body(document: dict[str, Any], method: str, path: str, empty: bool = False) -> bytes | None:
    """A body the operation accepts, from its request schema (fresh names on every call); none where it takes none."""
    if method not in ("POST", "PATCH", "PUT"):
        return None
    if empty:
        return b""
    operation = document["paths"].get(path, {}).get(method.lower(), {})
    content = operation.get("requestBody", {}).get("content", {})
    if not content:
        return b"{}"
    schema = next(iter(content.values()))["schema"]
    return json.dumps(_sample(schema, document.get("components", {}).get("schemas", {}))).encode()


def _check(status: int, headers: httpx.Headers, content: bytes, method: str) -> None:
    assert status < 500, content[:500]
    if status >= 400 and method != "HEAD":
        assert headers["content-type"].startswith("application/problem+json"), (status, headers)
        assert f'"status":{status}'.encode() in content, content[:500]


class _AppInItsLoop:
    """The app and a client on an event loop of their own, in a thread: Hypothesis drives examples
    synchronously, and each example's request runs to completion on that loop."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.application = create_app(settings)
        self.http = asgi_client(self.application, timeout=30)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def close(self) -> None:
        self.run(self.http.aclose())
        self.run(self.application.state.database.dispose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def _url(path: str, ids: dict[str, str], fresh: bool) -> str:
    """The path template with an existing resource's id where the test made one, else a fresh id."""
    return re.sub(
        r"\{(\w+)\}", lambda match: str(uuid.uuid4()) if fresh else ids.get(match[1], str(uuid.uuid4())), path
    )


def test_any_header_bytes_on_any_route_get_no_5xx_and_only_problem_documents(database_url: str, issuer: Issuer) -> None:
    # Authentication and CORS on, so that every header the app can read is read.
    app = _AppInItsLoop(
        Settings(
            database_url=database_url,
            auth_mode="google",
            auth_audience=AUDIENCE,
            oidc_jwks_url=issuer.jwks_url,
            cors_allowed_origins=ORIGIN,
        )
    )
    try:
        token = [(b"authorization", f"Bearer {issuer.token('fuzz@example.com')}".encode())]
        project = app.run(app.http.post("/v1/projects", json={"name": unique("fuzz")}, headers=token)).json()
        task = app.run(app.http.post(f"/v1/projects/{project['id']}/tasks", json={"title": "t"}, headers=token))
        ids = {"project_id": project["id"], "task_id": task.json()["id"]}
        document = app.application.openapi()

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,  # the same examples on every run; HYPOTHESIS_MAX_EXAMPLES widens the sweep
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(
            operation=st.sampled_from(_operations(app.application)),
            headers=_headers(list(ids.values()), line_safe=False),
            authenticated=st.booleans(),
            fresh_ids=st.booleans(),
            empty_body=st.booleans(),
        )
        def one_request(
            operation: tuple[str, str],
            headers: list[tuple[bytes, bytes]],
            authenticated: bool,
            fresh_ids: bool,
            empty_body: bool,
        ) -> None:
            method, path = operation
            url, body = _url(path, ids, fresh_ids), _body(document, method, path, empty_body)
            response = app.run(
                app.http.request(method, url, headers=(token if authenticated else []) + headers, content=body)
            )
            _check(response.status_code, response.headers, response.content, method)
            assert response.headers["x-request-id"]

        one_request()
        started = time.monotonic()
        for _ in range(20):
            assert app.run(app.http.get("/healthz")).status_code == 200
        assert app.run(app.http.get("/readyz")).status_code == 200
        assert time.monotonic() - started < 5  # alive and answering: a liveness bound, not a speed target
    finally:
        app.close()


def _raw_request(
    server: FunctionServer, body: bytes | None, method: str, target: str, headers: list[tuple[bytes, bytes]]
) -> bytes:
    body = body or b""
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: fuzz", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers if name not in (b"host", b"content-length")]
    lines.append(b"Content-Length: %d" % len(body))
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def test_any_header_bytes_through_the_served_function(served_hardened: FunctionServer) -> None:
    served = served_hardened
    application = create_app(Settings(database_url="postgresql+asyncpg://unused@127.0.0.1:1/none"))
    project = httpx.post(f"{served.base_url}/v1/projects", json={"name": unique("served-fuzz")}).json()
    task = httpx.post(f"{served.base_url}/v1/projects/{project['id']}/tasks", json={"title": "t"}).json()
    ids = {"project_id": project["id"], "task_id": task["id"]}
    document = application.openapi()

    @settings(max_examples=max(MAX_EXAMPLES // 4, 10), deadline=None, derandomize=True, database=None)
    @given(operation=st.sampled_from(_operations(application)), headers=_headers(list(ids.values()), line_safe=True))
    def one_request(operation: tuple[str, str], headers: list[tuple[bytes, bytes]]) -> None:
        method, path = operation
        raw = _raw_request(served, _body(document, method, path), method, _url(path, ids, fresh=False), headers)
        head, _, content = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        response_headers = httpx.Headers([line.split(b": ", 1) for line in head.split(b"\r\n")[1:]])
        if "x-request-id" not in response_headers:  # answered by the server, which refused the head
            assert status == 400, raw[:500]
            return
        _check(status, response_headers, content, method)

    one_request()
    assert served.process.poll() is None, "the worker died"
    started = time.monotonic()
    assert httpx.get(f"{served.base_url}/healthz", timeout=5).status_code == 200
    assert time.monotonic() - started < 1  # a liveness bound, not a speed target
