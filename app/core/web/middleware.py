"""Pure ASGI middleware (no per-request task or body copy): the request's limits and context.

The limits (see README, "Limits on what a client sends"): a request head of at most
MAX_HEADER_FIELDS fields and MAX_HEADER_BYTES bytes (431) and a target of MAX_TARGET_BYTES (414),
checked before any header is read; a body of MAX_BODY_BYTES (413) that arrives within
BODY_READ_TIMEOUT_S of the app asking for it (408). The server in front (uvicorn with httptools, as
functions-framework runs it) bounds none of these itself.
"""

import asyncio
import re
import time
from http import HTTPStatus
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import ProblemError, http_problem, response_for
from app.core.observability.logs import (
    EXECUTION_ID_LIMIT,
    RequestContext,
    clip,
    current_request,
    log_access,
    new_request_id,
    read_headers,
    trace_of,
)

MAX_HEADER_FIELDS = 100
MAX_HEADER_BYTES = 16 * 1024  # names and values together
MAX_TARGET_BYTES = 8 * 1024  # path and query string
MAX_BODY_BYTES = 1024 * 1024
BODY_READ_TIMEOUT_S = 10.0
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def _refusal(status: int, detail: str) -> ProblemError:
    problem = ProblemError(detail)
    problem.status, problem.title = status, HTTPStatus(status).phrase
    return problem


def _size(headers: list[tuple[bytes, bytes]]) -> int:
    size = 0
    for name, value in headers:  # a plain loop: cheaper than sum() over a generator
        size += len(name) + len(value)
    return size


def _oversized_head(scope: Scope) -> ProblemError | None:
    """Counted, never parsed; the fields are counted first, so a million tiny ones cost nothing."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    if len(headers) > MAX_HEADER_FIELDS or _size(headers) > MAX_HEADER_BYTES:
        return _refusal(431, f"send at most {MAX_HEADER_FIELDS} header fields, {MAX_HEADER_BYTES} bytes in all")
    if len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) > MAX_TARGET_BYTES:
        return _refusal(414, f"paths with their query strings are limited to {MAX_TARGET_BYTES} bytes")
    return None


class RequestContextMiddleware:
    """The outermost layer: refuse an oversized head; echo a sane `X-Request-ID` (or make one); set
    the context logs carry; answer HEAD as GET without the body; write the access log.

    The context variable is deliberately not reset on the way out: the 500 handler runs after
    this middleware has returned, and its log line must still name the request. Each request
    runs in its own task, so nothing leaks from one request to the next.
    """

    def __init__(self, app: ASGIApp, *, trusted_proxy_hops: int = 1) -> None:
        self.app = app
        self.trusted_proxy_hops = trusted_proxy_hops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        if problem := _oversized_head(scope):
            await self._refuse(scope, receive, send, problem, started)
            return
        headers = read_headers(scope)
        sent = headers.get("x-request-id", "")
        request_id = sent if _SANE_REQUEST_ID.fullmatch(sent) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        trace_id, span_id = trace_of(headers)
        if execution_id := headers.get("function-execution-id"):
            execution_id = clip(execution_id, EXECUTION_ID_LIMIT)
        current_request.set(RequestContext(request_id, execution_id, trace_id, span_id))
        head = scope["method"] == "HEAD"
        status, response_size = 500, 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_size
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            elif message["type"] == "http.response.body":
                if head:  # the GET's headers (Content-Length included), no body; the server sends none either
                    message = {**message, "body": b""}
                response_size += len(message.get("body", b""))
            await send(message)

        try:  # HEAD is GET for the app: a copy of the scope, so the server still knows to send no body
            await self.app({**scope, "method": "GET"} if head else scope, receive, send_with_id)
        finally:  # an error escaping here is answered with a 500 by the server error handler
            elapsed = time.perf_counter() - started
            log_access(scope, headers, status, response_size, elapsed, self.trusted_proxy_hops)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, problem: ProblemError, started: float) -> None:
        unread: dict[str, Any] = {**scope, "headers": [], "state": {"request_id": new_request_id()}}
        current_request.set(RequestContext(unread["state"]["request_id"]))
        response = response_for(Request(unread), problem)
        await response(scope, receive, send)
        log_access(unread, {}, problem.status, len(response.body), time.perf_counter() - started, 0)


class BodyLimitMiddleware:
    """Answer 413 for a body over the limit (at once when Content-Length says so, else as it streams)
    and 408 for one that has not arrived BODY_READ_TIMEOUT_S after the app first asked for it.

    The streamed cases raise Starlette's HTTPException from `receive`, which FastAPI passes through
    to the problem handlers; a 408 also closes the connection, whose unread body is still coming.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, read_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s if read_timeout_s is not None else BODY_READ_TIMEOUT_S

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The first Content-Length, as Headers.get reads it (without its KeyError when there is
        # none); a 5,000-digit one is over too.
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), b"").decode("latin-1")
        if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > self.max_bytes):
            response = await http_problem(Request(scope, receive), self._too_large())
            await response(scope, receive, send)
            return
        received, complete = 0, False
        deadline: float | None = None

        async def receive_limited() -> Message:
            nonlocal received, complete, deadline
            if complete:  # later calls wait for a disconnect: not the client's body, not bounded
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.read_timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, self._too_slow(), headers={"Connection": "close"}) from None
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            complete = not message.get("more_body", False)
            return message

        await self.app(scope, receive_limited, send)

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"request bodies are limited to {self.max_bytes} bytes")

    def _too_slow(self) -> str:
        return f"the request body did not arrive within {self.read_timeout_s:g} s"
