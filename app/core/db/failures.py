"""What a database error means: a constraint a client broke (4xx), 'unavailable right now' (503
with Retry-After), or a bug (500)."""

import logging
from collections.abc import Iterator
from types import ModuleType

import asyncpg
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.core.db.pool import PoolClosed, PoolTimeout
from app.core.errors import Conflict, ServiceUnavailable, response_for
from app.core.models import Audited
from app.core.observability.logs import URL_LIMIT, clip

logger = logging.getLogger(__name__)

# Worth another connection attempt at once: the server is restarting or not reachable yet. A full
# server ("too many connections") is not retried here: the pool backs off for a second instead.
TRANSIENT_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is an OSError)
    asyncpg.CannotConnectNowError,  # "the database system is starting up / shutting down"
)


class DatabaseUnavailable(ServiceUnavailable):
    def __init__(self, reason: str) -> None:
        super().__init__(f"the database is not available: {reason}")


def violated_constraint(error: asyncpg.IntegrityConstraintViolationError) -> str | None:
    """The name of the constraint or unique index PostgreSQL reports as violated."""
    return getattr(error, "constraint_name", None)


def missing_parent(
    error: asyncpg.IntegrityConstraintViolationError, model: type[Audited], parent: type[Audited]
) -> bool:
    """Whether `error` is `model`'s foreign key to `parent` finding no such row."""
    table, parent_table = model.__table__, parent.__table__  # type: ignore[attr-defined]
    keys = {key.name for key in table.foreign_key_constraints if key.referred_table is parent_table}
    return isinstance(error, asyncpg.ForeignKeyViolationError) and violated_constraint(error) in keys


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


# What each failure means for the client (words safe to show) and whether it breaks the connection,
# so that it is never handed to the next request. The first match along `causes` decides.
_LOST = "the database connection was lost"
_UNAVAILABLE: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str | None, bool]] = [
    (asyncpg.DataError, None, False),  # a value asyncpg cannot send: a bug (500), the connection is fine
    (PoolTimeout, "every database connection is busy", False),
    (PoolClosed, "its connections are being closed (the instance is shutting down)", False),
    (asyncpg.QueryCanceledError, "the query took longer than the statement timeout", False),
    (
        (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError),
        "the database refused the login",
        False,
    ),
    (asyncpg.TooManyConnectionsError, "the database has no free connection slots", False),
    # A restart or failover: AdminShutdown, a closed socket, or asyncpg stuck mid-operation
    # because a shutdown's FATAL arrived between two statements (InternalClientError).
    ((asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError, asyncpg.InternalClientError), _LOST, True),
    (asyncpg.InterfaceError, _LOST, True),
    (TimeoutError, "connecting timed out", True),
    (OSError, "the database server could not be reached", True),
]


def _classify(error: BaseException) -> tuple[str | None, bool] | None:
    for cause in causes(error):
        for kinds, reason, breaks in _UNAVAILABLE:
            if isinstance(cause, kinds):
                return reason, breaks
    return None


def breaks_the_connection(error: BaseException) -> bool:
    """Whether a connection that raised `error` must be discarded rather than pooled again."""
    classified = _classify(error)
    return classified is not None and classified[1]


def unavailable_reason(error: BaseException) -> str | None:
    """Words safe to show a client when `error` means the database cannot serve now, else None."""
    classified = _classify(error)
    return classified[0] if classified else None


def describe(error: BaseException, cloud_sql: ModuleType | None) -> str:
    """Why connecting failed, in words that are safe to show a client."""
    if cloud_sql is not None:
        for cause in causes(error):
            if reason := cloud_sql.describe_failure(cause):
                return str(reason)
    return unavailable_reason(error) or f"connecting failed ({type(error).__name__})"


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    reason = unavailable_reason(exc)
    if reason is None:
        raise exc  # not an availability problem: a bug, answered with a 500 and logged as such
    logger.warning("database unavailable on %s %s: %s", request.method, clip(request.url.path, URL_LIMIT), reason)
    return response_for(request, DatabaseUnavailable(reason))


async def _on_integrity(request: Request, exc: Exception) -> JSONResponse:
    """A constraint the services did not translate: still the client's conflict, never a 500."""
    logger.warning("unmapped integrity error: %s", type(exc).__name__)
    return response_for(request, Conflict("the change conflicts with existing data"))


def install_database_handlers(app: FastAPI) -> None:
    database_errors = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    for kind in (sqlalchemy.exc.DBAPIError, *database_errors):
        app.add_exception_handler(kind, _on_database_error)
    app.add_exception_handler(OSError, _on_database_error)
    app.add_exception_handler(asyncpg.IntegrityConstraintViolationError, _on_integrity)
