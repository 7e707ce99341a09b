"""Per-request context (request id, execution id, trace) and log lines Cloud Logging understands.

On Cloud Functions, stdout lines that are JSON objects become structured entries: `severity`,
`message`, `time`, and the `logging.googleapis.com/...` fields tie a line to its request trace.

A client never shapes a line: control characters are escaped (JSON lines are ASCII) and each
field taken from the request is cut at a documented length (`*_LIMIT`).
"""

import json
import logging
import os
import random
import re
import sys
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str
    execution_id: str | None = None  # functions-framework's `Function-Execution-Id`
    trace_id: str | None = None
    span_id: str | None = None  # 16 hex digits, as Cloud Logging wants


current_request: ContextVar[RequestContext | None] = ContextVar("current_request", default=None)

# Request ids: 32 random hex digits. Ids, not secrets: a generator of their own, reseeded in each
# forked worker (as the random module's), makes them without the system call and object of
# uuid.uuid4(), some 2 % of a read; anything seeding the shared one (a test) cannot repeat them.
_ids = random.Random()  # noqa: S311 - ids, not secrets
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    return f"{_ids.getrandbits(128):032x}"


access_logger = logging.getLogger("app.access")
_SECRET_QUERY_NAMES = re.compile(r"token|key|secret|password|auth|signature|credential", re.IGNORECASE)

URL_LIMIT = 2048  # requestUrl, and the path in the access line's message
USER_AGENT_LIMIT = 512
EXECUTION_ID_LIMIT = 64
METHOD_LIMIT = 32
_IP_ADDRESS = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*")  # v4, or v6 (has a ":")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/(\d{1,20}))?(?:;o=[01])?")


# The request headers the context and the access line read, picked in one pass by `read_headers`.
_READ_HEADERS = frozenset(
    {b"x-request-id", b"traceparent", b"x-cloud-trace-context", b"function-execution-id", b"user-agent"}
    | {b"content-length", b"x-forwarded-for"}
)


def read_headers(scope: MutableMapping[str, Any]) -> dict[str, str]:
    """The headers above as Starlette's `Headers.get` reads them (the first of a repeated one;
    X-Forwarded-For all of them, joined by commas, as `getlist` and a proxy's list), in one pass:
    a `Headers.get` scans the fields anew, and raises and catches a KeyError for each one absent:
    3 % of a read's instructions."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _READ_HEADERS:
            key = name.decode("latin-1")
            if key not in found:
                found[key] = value.decode("latin-1")
            elif key == "x-forwarded-for":
                found[key] += "," + value.decode("latin-1")
    return found


def trace_of(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(trace id, span id) from W3C `traceparent`, else from Google's `X-Cloud-Trace-Context`."""
    if match := _TRACEPARENT.fullmatch(headers.get("traceparent", "").strip()):
        return match.group(1), match.group(2)
    if match := _CLOUD_TRACE.fullmatch(headers.get("x-cloud-trace-context", "").strip()):
        span = match.group(2)
        return match.group(1).lower(), f"{int(span) & (2**64 - 1):016x}" if span else None
    return None, None


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, and an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit] + "…"


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode()


def escape_controls(text: str) -> str:
    """CR, LF, ESC, NEL, U+2028 and the like as escapes: a client cannot start a line of its own."""
    return _CONTROL.sub(_escape, text)


def remote_ip(headers: Mapping[str, str], scope: MutableMapping[str, Any], trusted_proxy_hops: int) -> str:
    """The X-Forwarded-For entry `trusted_proxy_hops` from the right (Google's front end appends the
    address it was reached from; entries to its left are the client's say-so), else the peer.
    `headers` as `read_headers` gives them: every X-Forwarded-For field, joined."""
    peer: str = (scope.get("client") or ("",))[0]
    if trusted_proxy_hops < 1:
        return peer
    entries = headers.get("x-forwarded-for", "").rsplit(",", trusted_proxy_hops)
    if len(entries) < trusted_proxy_hops:  # fewer entries than trusted proxies
        return peer
    candidate = entries[-trusted_proxy_hops].strip()
    return candidate if len(candidate) <= 45 and _IP_ADDRESS.fullmatch(candidate) else peer


def log_access(
    scope: MutableMapping[str, Any],
    headers: Mapping[str, str],
    status: int,
    response_size: int,
    latency_s: float,
    trusted_proxy_hops: int,
) -> None:
    """The request's single access-log line, with Cloud Logging's `httpRequest` fields (`headers`
    as `read_headers` picks them)."""
    level = logging.ERROR if status >= 500 else logging.INFO
    if not access_logger.isEnabledFor(level):
        return
    method, path = clip(scope["method"], METHOD_LIMIT), clip(scope["path"], URL_LIMIT)
    http_request = {
        "requestMethod": method,
        "requestUrl": clip(_safe_url(scope), URL_LIMIT),
        "status": status,
        "responseSize": str(response_size),
        "userAgent": clip(headers.get("user-agent", ""), USER_AGENT_LIMIT),
        "remoteIp": remote_ip(headers, scope, trusted_proxy_hops),
        "latency": f"{latency_s:.6f}s",
        "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
    }
    if (length := headers.get("content-length", "")).isascii() and length.isdigit() and len(length) < 20:
        http_request["requestSize"] = length
    access_logger.log(level, f"{method} {path} {status}", extra={"fields": {"httpRequest": http_request}})


def _safe_url(scope: MutableMapping[str, Any]) -> str:
    """Path and query, with the values of anything that looks like a credential blanked."""
    url: str = scope["path"]  # as the client sent it, ROOT_PATH included
    query = scope.get("query_string", b"").decode("latin-1")
    if not query:
        return url
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        parts.append(f"{name}=REDACTED" if equals and _SECRET_QUERY_NAMES.search(name) else part)
    return f"{url}?{'&'.join(parts)}"


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per line, with the request's trace and ids when there is a request."""

    def __init__(self, project: str | None) -> None:
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": getattr(record, "severity", record.levelname),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        if record.exc_info:
            entry["message"] += "\n" + self.formatException(record.exc_info)
        if context := current_request.get():
            entry["request_id"] = context.request_id
            if context.execution_id:
                entry["logging.googleapis.com/labels"] = {"execution_id": context.execution_id}
            if context.trace_id:
                trace = f"projects/{self.project}/traces/{context.trace_id}" if self.project else context.trace_id
                entry["logging.googleapis.com/trace"] = trace
            if context.span_id:
                entry["logging.googleapis.com/spanId"] = context.span_id
        entry.update(getattr(record, "fields", {}))
        line = orjson.dumps(entry, default=str)  # escapes the control characters, not U+2028 and its kind:
        return line.decode() if line.isascii() else json.dumps(entry, default=str)  # ASCII, all escaped


class TextFormatter(logging.Formatter):
    """For people: `time level logger [request id] message`, one line per entry; a traceback
    follows on lines of its own, indented, so that no line of it reads as an entry."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(request)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        context = current_request.get()
        record.request = f"[{context.request_id}] " if context else ""
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        text = _CONTROL_BUT_NEWLINE.sub(_escape, super().formatException(ei))
        return "    " + text.replace("\n", "\n    ")


def configure_logging(*, level: str, json_lines: bool) -> None:
    """Own the root logger. Called in the worker, after the framework has set up its own logging.

    Neither format prints where a line was logged from, so logging is told not to walk the stack
    for it (the Logging HOWTO's "Optimization"): a few µs of every line, and a request writes one or
    two. The process and thread ids stay: gunicorn's own error lines print `%(process)d`.
    """
    logging._srcfile = None  # no caller: filename, lineno, funcName and stack_info go unfilled
    handler = logging.StreamHandler(sys.stdout)
    project = os.environ.get("GOOGLE_CLOUD_PROJECT")  # set at deploy; without it, bare trace ids
    handler.setFormatter(CloudLoggingFormatter(project) if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A dictConfig run by the framework disables loggers that existed before it: ours did.
    for name, logger in logging.root.manager.loggerDict.items():
        if (name == "app" or name.startswith("app.")) and isinstance(logger, logging.Logger):
            logger.disabled = False
