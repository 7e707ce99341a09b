"""Per-request context (request id, execution id, trace) and log lines Cloud Logging understands.

On Cloud Functions, stdout lines that are JSON objects become structured entries: `severity`,
`message`, `time`, and the `logging.googleapis.com/...` fields tie a line to its request trace.
"""

import json
import logging
import os
import re
import sys
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
