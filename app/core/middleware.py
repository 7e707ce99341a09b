"""Pure ASGI middleware (no per-request task or body copy): request context and the body limit."""

import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import http_problem
from app.core.logs import RequestContext, current_request, log_access, trace_of

MAX_BODY_BYTES = 1024 * 1024
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class RequestContextMiddleware:
    """Echo a sane `X-Request-ID` (or make one); set the context logs carry; answer HEAD as GET
    without the body; write the access log.

    The context variable is deliberately not reset on the way out: the 500 handler runs after
    this middleware has returned, and its log line must still name the request. Each request
    runs in its own task, so nothing leaks from one request to the next.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        sent = headers.get("x-request-id", "")
        request_id = sent if _SANE_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        trace_id, span_id = trace_of(headers)
        execution_id = headers.get("function-execution-id")
        current_request.set(RequestContext(request_id, execution_id, trace_id, span_id))
        started, status, response_size = time.perf_counter(), 500, 0
        head = scope["method"] == "HEAD"

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
            log_access(scope, status, response_size, time.perf_counter() - started)


class BodySizeLimitMiddleware:
    """Answer 413 for a body over the limit: at once when Content-Length says so, else as it streams.

    A streamed (chunked) body is counted in `receive`; going over raises Starlette's 413
    HTTPException, which FastAPI passes through to the problem handlers.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:  # answered as the streamed case is
            response = await http_problem(Request(scope, receive), self._too_large())
            await response(scope, receive, send)
            return
        received = 0

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            return message

        await self.app(scope, receive_counted, send)

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"request bodies are limited to {self.max_bytes} bytes")
