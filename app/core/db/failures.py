"""What a failure inside a `Database.connection()` block means: a constraint a client broke (409),
'unavailable right now' (503 with Retry-After), or a bug (500).

It is decided there, where the database is called, and only for errors that came from the
database: a socket error or timeout of other code (an HTTP call a handler makes) stays that code's
own error, a 500, rather than passing for an unreachable database.
"""

import logging
from collections.abc import Iterator
from types import ModuleType

import asyncpg

from app.core.db.pool import PoolClosed, PoolTimeout
from app.core.db.statements import table_of
from app.core.errors import Conflict, ProblemError, ServiceUnavailable
from app.core.models import Audited

logger = logging.getLogger(__name__)

# Worth another connection attempt at once: the server is restarting or not reachable yet. A full
# server ("too many connections") is not retried here: the pool backs off for a second instead.
TRANSIENT_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is an OSError)
    asyncpg.CannotConnectNowError,  # "the database system is starting up / shutting down"
)
# Raised by asyncpg or by the pool only: an error with one of these among its causes came from the database.
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, PoolTimeout, PoolClosed)


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
    table, parent_table = table_of(model), table_of(parent)
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
        # `raise ... from None` hides the context on purpose: the new error is not about it.
        context = None if current.__suppress_context__ else current.__context__
        pending += [getattr(current, "orig", None), current.__cause__, context]


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
    (TimeoutError, "the database did not answer in time", True),
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


class UnexpectedViolation(Exception):
    """A constraint the service should have made impossible (a not-null or foreign key it did not
    translate): a bug, answered with a 500 and logged with the constraint."""


# Violations that are the client's: the data it sent clashes with a rule or with other rows.
_CLIENTS_CONFLICT = {
    asyncpg.UniqueViolationError: "a row with the same value already exists",
    asyncpg.ExclusionViolationError: "the change overlaps an existing row",
    asyncpg.CheckViolationError: "the change breaks a rule of the data",
}


def _violation(error: asyncpg.IntegrityConstraintViolationError) -> Exception:
    constraint = violated_constraint(error)
    for kind, meaning in _CLIENTS_CONFLICT.items():
        if isinstance(error, kind):  # the constraint's name is the schema's, never the data's
            return Conflict(f"{meaning} (constraint {constraint})")
    where = ", ".join(
        f"{label} {value}"
        for label, value in (
            ("constraint", constraint),
            ("table", getattr(error, "table_name", None)),
            ("column", getattr(error, "column_name", None)),
        )
        if value
    )
    return UnexpectedViolation(f"{type(error).__name__} the service did not expect: {where}")


def _raised_in_asyncpg(error: BaseException) -> bool:
    """Whether the error passed through asyncpg's code on its way up (a query's own `timeout=`)."""
    frame = error.__traceback__
    while frame is not None:
        if str(frame.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg."):
            return True
        frame = frame.tb_next
    return False


def database_cause(error: Exception, connection: asyncpg.Connection) -> BaseException | None:
    """The database's own error behind `error`, which ended a block holding `connection`; None when
    the error is not the database's. Only errors that came from the database are its: an asyncpg or
    pool error among the causes, or a socket error or timeout that broke the connection or was
    raised inside asyncpg. A timeout or socket error of other code (an HTTP call) is not."""
    if isinstance(error, ProblemError):
        return None  # decided already
    cause: BaseException | None = next((cause for cause in causes(error) if isinstance(cause, DATABASE_ERRORS)), None)
    if cause is None and isinstance(error, OSError) and (connection.is_closed() or _raised_in_asyncpg(error)):
        cause = error
    return cause


def failure_of(cause: BaseException) -> Exception | None:
    """What to raise instead of the database's error `cause`: a 503 when the database cannot serve
    now, a 409 for a violation that is the client's, an `UnexpectedViolation` (a 500) for one that
    is a bug; None to let the error go up as it is (a 500 if nothing handles it)."""
    if reason := unavailable_reason(cause):
        return DatabaseUnavailable(reason)
    if isinstance(cause, asyncpg.IntegrityConstraintViolationError):
        return _violation(cause)
    return None
