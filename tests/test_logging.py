"""Log lines as Cloud Logging reads them: audit entries, the access line, trace ids, no secrets."""

import io
import json
import logging
import os
import random
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gunicorn.glogging import Logger as GunicornLogger
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from app.core.observability.logs import (
    CloudLoggingFormatter,
    TextFormatter,
    configure_logging,
    new_request_id,
    read_headers,
)
from tests.helpers import unique
from tests.identity_fakes import Issuer


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def text(self) -> str:
        return self.stream.getvalue()

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line]

    def of(self, logger: str, request_id: str | None = None) -> list[dict[str, Any]]:
        return [
            entry
            for entry in self.entries()
            if entry["logger"] == logger and (request_id is None or entry.get("request_id") == request_id)
        ]


@pytest.fixture
def logs() -> Iterator[Captured]:
    """The app's log lines, formatted exactly as on Cloud Functions (JSON), every level."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter("my-project"))
    app_logger = logging.getLogger("app")
    previous = app_logger.level
    app_logger.addHandler(handler)
    app_logger.setLevel(logging.DEBUG)
    yield Captured(stream)
    app_logger.removeHandler(handler)
    app_logger.setLevel(previous)


async def test_every_write_is_one_audit_entry_at_notice(
    authed: httpx.AsyncClient, issuer: Issuer, logs: Captured
) -> None:
    headers = {"Authorization": f"Bearer {issuer.token('alice@example.com')}", "X-Request-ID": unique("audit")}
    project = (await authed.post("/v1/projects", json={"name": unique()}, headers=headers)).json()
    url = f"/v1/projects/{project['id']}"
    await authed.patch(url, json={"description": "d"}, headers=headers)
    await authed.get(url, headers=headers)  # a read is not audited
    await authed.patch(url, json={"description": "stale"}, headers=headers | {"If-Match": '"nope"'})  # refused
    await authed.delete(url, headers=headers)
    entries = logs.of("app.audit", headers["X-Request-ID"])
    assert [entry["severity"] for entry in entries] == ["NOTICE"] * 3
    assert [entry["audit"] for entry in entries] == [
        {
            "principal": "alice@example.com",
            "action": action,
            "resource_type": "project",
            "resource_id": project["id"],
            "version": version,
            "request_id": headers["X-Request-ID"],
        }
        for action, version in [("create", 1), ("update", 2), ("delete", 2)]
    ]


async def test_task_writes_are_audited_with_their_resource_type(client: httpx.AsyncClient, logs: Captured) -> None:
    project = (await client.post("/v1/projects", json={"name": unique()})).json()
    task = (await client.post(f"/v1/projects/{project['id']}/tasks", json={"title": "t"})).json()
    (entry,) = [entry for entry in logs.of("app.audit") if entry["audit"]["resource_id"] == task["id"]]
    assert entry["audit"] | {"request_id": None} == {
        "principal": None,  # AUTH_MODE=none
        "action": "create",
        "resource_type": "task",
        "resource_id": task["id"],
        "version": 1,
        "request_id": None,
    }


async def test_each_request_writes_one_access_line(client: httpx.AsyncClient, logs: Captured) -> None:
    request_id = unique("access")
    headers = {"X-Request-ID": request_id, "User-Agent": "tests/1.0", "X-Forwarded-For": "203.0.113.7, 10.0.0.1"}
    response = await client.post("/v1/projects?debug=1", json={"name": unique()}, headers=headers)
    (entry,) = logs.of("app.access", request_id)
    http_request = entry.pop("httpRequest")
    assert http_request.pop("latency").endswith("s")
    assert http_request == {
        "requestMethod": "POST",
        "requestUrl": "/v1/projects?debug=1",
        "status": 201,
        "requestSize": response.request.headers["content-length"],
        "responseSize": str(len(response.content)),
        "userAgent": "tests/1.0",
        "remoteIp": "10.0.0.1",  # the entry the front end appended; the rest is the client's say-so
        "protocol": "HTTP/1.1",
    }
    assert (entry["severity"], entry["message"]) == ("INFO", "POST /v1/projects 201")


@pytest.mark.parametrize(
    ("headers", "trace", "span"),
    [
        (
            {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            "0af7651916cd43dd8448eb211c80319c",
            "b7ad6b7169203331",
        ),
        (
            {"X-Cloud-Trace-Context": "105445aa7843bc8bf206b12000100000/123;o=1"},
            "105445aa7843bc8bf206b12000100000",
            "000000000000007b",
        ),
        ({"X-Cloud-Trace-Context": "105445AA7843BC8BF206B12000100000"}, "105445aa7843bc8bf206b12000100000", None),
    ],
)
async def test_log_lines_carry_the_trace_from_either_header(
    client: httpx.AsyncClient, logs: Captured, headers: dict[str, str], trace: str, span: str | None
) -> None:
    request_id = unique("trace")
    await client.get("/v1/projects", headers=headers | {"X-Request-ID": request_id, "Function-Execution-Id": "ex-1"})
    (entry,) = logs.of("app.access", request_id)
    assert entry["logging.googleapis.com/trace"] == f"projects/my-project/traces/{trace}"
    assert entry.get("logging.googleapis.com/spanId") == span
    assert entry["logging.googleapis.com/labels"] == {"execution_id": "ex-1"}


async def test_a_malformed_trace_header_is_ignored(client: httpx.AsyncClient, logs: Captured) -> None:
    request_id = unique("badtrace")
    await client.get("/healthz", headers={"traceparent": "garbage", "X-Request-ID": request_id})
    (entry,) = logs.of("app.access", request_id)
    assert "logging.googleapis.com/trace" not in entry


async def test_no_token_password_or_authorization_header_reaches_a_log_line(
    authed: httpx.AsyncClient, issuer: Issuer, logs: Captured
) -> None:
    good, expired = issuer.token("alice@example.com"), issuer.token(expires_in=-60)
    secrets = [good, expired, "hunter2-password", "s3cr3t-query-token"]
    for token in [good, expired, "not.a.jwt", "hunter2-password"]:
        await authed.get("/v1/projects", headers={"Authorization": f"Bearer {token}"})
        await authed.post("/v1/projects", json={"name": unique()}, headers={"Authorization": f"Bearer {token}"})
    await authed.get("/v1/projects?access_token=s3cr3t-query-token&password=hunter2-password&q=x")
    await authed.get("/healthz", headers={"Authorization": f"Basic {good}"})
    text = logs.text()
    assert logs.of("app.access"), "nothing was logged: the test would prove nothing"
    for secret in [*secrets, *(secret.split(".")[1] for secret in secrets[:2])]:
        assert secret not in text
    assert "Bearer " not in text and "Authorization" not in text
    assert "access_token=REDACTED" in text and "password=REDACTED" in text and "q=x" in text


def test_text_format_is_for_people() -> None:
    record = logging.LogRecord("app.x", logging.WARNING, __file__, 1, "disk %s", ("full",), None)
    line = TextFormatter().format(record)
    assert line.endswith("WARNING app.x disk full")


def test_request_ids_made_in_forked_workers_differ() -> None:
    """Workers fork from the process that imported the app: each makes ids of its own, whatever
    seeds Python's shared generator (Hypothesis does, for every example)."""
    random.seed(0)
    ids = set()
    for _ in range(2):
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's coverage is not collected
            try:
                random.seed(0)
                os.write(write, new_request_id().encode())
            finally:
                os._exit(0)
        os.close(write)
        ids.add(os.read(read, 64).decode())
        os.close(read)
        os.waitpid(child, 0)
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", made) for made in ids)


@pytest.fixture
def own_logging() -> Iterator[None]:
    """configure_logging changes the process's logging: put it back afterwards."""
    saved = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = saved
    logging.root.handlers[:], logging.root.level = handlers, level


@pytest.mark.usefixtures("own_logging")
def test_the_servers_own_error_lines_still_format_once_the_app_owns_logging() -> None:
    """gunicorn's error lines (uvicorn's "Exception in ASGI application" among them) print the
    process id as a number: configure_logging must leave it, and the thread's, to be looked up."""
    configure_logging(level="INFO", json_lines=True)
    record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", None, None)
    line = logging.Formatter(GunicornLogger.error_fmt).format(record)
    assert f"[{os.getpid()}] [ERROR] Exception in ASGI application" in line
    assert logging.Formatter("%(thread)d %(threadName)s").format(record) != "None None"


_HEADER_NAMES = st.sampled_from(
    [
        *(b"x-request-id", b"traceparent", b"x-cloud-trace-context", b"function-execution-id", b"user-agent"),
        *(b"content-length", b"x-forwarded-for", b"host", b"x-request-ids", b"content-type"),
    ]
)


@given(st.lists(st.tuples(_HEADER_NAMES, st.binary(max_size=8)), max_size=12))
def test_the_headers_picked_in_one_pass_are_those_starlette_reads(fields: list[tuple[bytes, bytes]]) -> None:
    """The middleware and the access line read their headers in one pass, as Headers would."""
    picked = read_headers({"headers": fields})
    headers = Headers(raw=fields)
    for name in ("x-request-id", "traceparent", "x-cloud-trace-context", "function-execution-id", "user-agent"):
        assert picked.get(name) == headers.get(name)
    assert picked.get("content-length") == headers.get("content-length")
    assert picked.get("x-forwarded-for", "") == ",".join(headers.getlist("x-forwarded-for"))
    assert set(picked) <= {name.decode() for name, _ in fields} - {"host", "x-request-ids", "content-type"}
