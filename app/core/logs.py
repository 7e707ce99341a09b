"""Per-request context (request id, execution id, trace) and log lines Cloud Logging understands.

On Cloud Functions, stdout lines that are JSON objects become structured entries: `severity`,
`message`, `time`, and the `logging.googleapis.com/...` fields tie a line to its request trace.
"""

import json
import logging
import os
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import Headers


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str
    execution_id: str | None = None  # functions-framework's `Function-Execution-Id`
    trace_id: str | None = None
    span_id: str | None = None  # 16 hex digits, as Cloud Logging wants


current_request: ContextVar[RequestContext | None] = ContextVar("current_request", default=None)

NOTICE = 25  # Cloud Logging's NOTICE: normal but significant, such as a change to data
logging.addLevelName(NOTICE, "NOTICE")
access_logger = logging.getLogger("app.access")
audit_logger = logging.getLogger("app.audit")
_SECRET_QUERY_NAMES = re.compile(r"token|key|secret|password|auth|signature|credential", re.IGNORECASE)

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/(\d{1,20}))?(?:;o=[01])?")


def trace_of(headers: Headers) -> tuple[str | None, str | None]:
    """(trace id, span id) from W3C `traceparent`, else from Google's `X-Cloud-Trace-Context`."""
    if match := _TRACEPARENT.fullmatch(headers.get("traceparent", "").strip()):
        return match.group(1), match.group(2)
    if match := _CLOUD_TRACE.fullmatch(headers.get("x-cloud-trace-context", "").strip()):
        span = match.group(2)
        return match.group(1).lower(), f"{int(span) & (2**64 - 1):016x}" if span else None
    return None, None


def audit(*, action: str, resource_type: str, resource_id: object, version: int, principal: str | None) -> None:
    """One entry per write, at NOTICE, with a stable `audit` object for log-based metrics and sinks.

    Inside `audited_transaction`, the entry waits for the commit: a rolled-back write is not audited.
    """
    context = current_request.get()
    entry = {
        "principal": principal,
        "action": action,
        "resource_type": resource_type,
        "resource_id": str(resource_id),
        "version": version,
        "request_id": context.request_id if context else None,
    }
    message = f"{action} {resource_type} {resource_id} v{version} by {principal or 'anonymous'}"
    if (held := _held_audit.get()) is not None:
        held.append((message, entry))
    else:
        audit_logger.log(NOTICE, message, extra={"fields": {"audit": entry}})


_held_audit: ContextVar[list[tuple[str, dict[str, Any]]] | None] = ContextVar("held_audit", default=None)


@contextmanager
def audited_transaction() -> Iterator[None]:
    """Wrap a transaction: the audit entries of its writes are written when it ends without error."""
    held: list[tuple[str, dict[str, Any]]] = []
    token = _held_audit.set(held)
    try:
        yield
    finally:
        _held_audit.reset(token)
    for message, entry in held:  # not reached when the transaction raised (and so rolled back)
        audit_logger.log(NOTICE, message, extra={"fields": {"audit": entry}})


def log_access(scope: MutableMapping[str, Any], status: int, response_size: int, latency_s: float) -> None:
    """The request's single access-log line, with Cloud Logging's `httpRequest` fields."""
    level = logging.ERROR if status >= 500 else logging.INFO
    if not access_logger.isEnabledFor(level):
        return
    headers = Headers(scope=scope)
    forwarded = headers.get("x-forwarded-for", "").split(",")[0].strip()
    client = scope.get("client") or ("", 0)
    http_request = {
        "requestMethod": scope["method"],
        "requestUrl": _safe_url(scope),
        "status": status,
        "responseSize": str(response_size),
        "userAgent": headers.get("user-agent", ""),
        "remoteIp": forwarded or client[0],
        "latency": f"{latency_s:.6f}s",
        "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
    }
    if (length := headers.get("content-length", "")).isdigit():
        http_request["requestSize"] = length
    message = f"{scope['method']} {scope['path']} {status}"
    access_logger.log(level, message, extra={"fields": {"httpRequest": http_request}})


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
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people: `time level logger [request id] message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(request)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        context = current_request.get()
        record.request = f"[{context.request_id}] " if context else ""
        return super().format(record)


def configure_logging(*, level: str, json_lines: bool) -> None:
    """Own the root logger. Called in the worker, after the framework has set up its own logging."""
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
