"""The audit trail: one entry per write, at NOTICE, with a stable `audit` object that log-based
metrics and sinks can select (`jsonPayload.audit.action`, `.resource_type`, ...)."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from app.core.observability.logs import current_request

NOTICE = 25  # Cloud Logging's NOTICE: normal but significant, such as a change to data
logging.addLevelName(NOTICE, "NOTICE")
audit_logger = logging.getLogger("app.audit")


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
