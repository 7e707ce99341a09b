"""Which database failures mean 'unavailable right now' (503, retry later) rather than a bug (500)."""

import logging
from collections.abc import Iterator

import asyncpg
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.errors import ServiceUnavailable, response_for

logger = logging.getLogger(__name__)

RETRY_AFTER_S = "5"

# Worth another connection attempt: the server is restarting, full, or not reachable yet.
TRANSIENT_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is an OSError)
    asyncpg.CannotConnectNowError,  # "the database system is starting up / shutting down"
    asyncpg.TooManyConnectionsError,
)


class DatabaseUnavailable(ServiceUnavailable):
    def __init__(self, reason: str) -> None:
        super().__init__(f"the database is not available: {reason}", headers={"Retry-After": RETRY_AFTER_S})


def causes(error: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps (SQLAlchemy's `orig`, Python's `__cause__`/`__context__`)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]


def breaks_the_connection(error: BaseException) -> bool:
    """Errors after which a pooled connection must not be reused (SQLAlchemy then drops the pool).

    A restart or failover ends sessions with AdminShutdown or a closed socket, and can leave an
    asyncpg connection stuck mid-operation (InternalClientError): none of these are always
    recognised as disconnects, and a broken connection returned to the pool fails the next request.
    """
    for cause in causes(error):
        if isinstance(cause, asyncpg.QueryCanceledError):
            return False  # a statement timeout: the connection itself is fine
        if isinstance(
            cause,
            asyncpg.PostgresConnectionError
            | asyncpg.OperatorInterventionError
            | asyncpg.InternalClientError
            | asyncpg.InterfaceError
            | OSError,
        ):
            return True
    return False


def unavailable_reason(error: BaseException) -> str | None:
    """Words safe to show a client when `error` means the database cannot serve now, else None."""
    for cause in causes(error):
        if isinstance(cause, sqlalchemy.exc.TimeoutError):
            return "every database connection is busy"
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
            return "the database connection was lost"
        if isinstance(cause, asyncpg.QueryCanceledError):
            return "the query took longer than the statement timeout"
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError):
            return "the database refused the login"
        if isinstance(cause, asyncpg.PostgresConnectionError | asyncpg.OperatorInterventionError):
            return "the database connection was lost"
        if isinstance(cause, asyncpg.TooManyConnectionsError):
            return "the database has no free connection slots"
        if isinstance(cause, asyncpg.InterfaceError) and "connection" in str(cause):
            return "the database connection was lost"
        if isinstance(cause, TimeoutError):
            return "connecting timed out"
        if isinstance(cause, OSError):
            return "the database server could not be reached"
    return None


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    reason = unavailable_reason(exc)
    if reason is None:
        raise exc  # not an availability problem: a bug, answered with a 500 and logged as such
    logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, reason)
    return response_for(request, DatabaseUnavailable(reason))


def install_database_handlers(app: FastAPI) -> None:
    for kind in (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        app.add_exception_handler(kind, _on_database_error)
    app.add_exception_handler(OSError, _on_database_error)
