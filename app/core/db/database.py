"""The process's connections to PostgreSQL (made lazily, in the serving loop), one per request.

They reach PostgreSQL either at DATABASE_URL or, with INSTANCE_CONNECTION_NAME, through the Cloud
SQL Python Connector with IAM database authentication (`app/core/db/cloud_sql.py`). Before the first
connection is handed out, one proves the identity works; if it does not, requests get a 503
problem and the next request tries again.

Requests run SQL on asyncpg connections from `app/core/db/pool.py`, with statements compiled once
from the SQLModel tables (`app/core/db/statements.py`): per request there is no ORM session, no statement
compilation and no result wrapping. Migrations use a SQLAlchemy engine over the same kind of
connections (`migration_engine`, refused inside a request).
"""

import asyncio
import importlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import Request
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from app.core.db.failures import (
    TRANSIENT_CONNECT_ERRORS,
    DatabaseUnavailable,
    breaks_the_connection,
    database_cause,
    describe,
    failure_of,
)
from app.core.db.pool import Pool
from app.core.observability.audit import audited_transaction
from app.core.observability.logs import current_request
from app.core.once import Once
from app.core.settings import Settings

logger = logging.getLogger(__name__)

CONNECT_ATTEMPTS = 3  # a restart or failover drops connections for a moment: try again, briefly
CONNECT_BACKOFF_S = 0.1  # full jitter: sleep uniform(0, 0.1 * 2**attempt) between attempts
IDLE_PING_AFTER_S = 10.0  # a pooled connection unused this long is pinged before it is handed out
RECYCLE_S = 1800.0  # reopen connections older than 30 min (proxies and failovers drop them)
# PostgreSQL itself ends a session idle this long (at least twice DB_POOL_IDLE_S): an instance that
# gets no requests gets no CPU on Cloud Functions, so it cannot close its spare connections, and
# would hold them from busy instances until Cloud Run stops it. The idle ping finds them closed.
IDLE_SESSION_TIMEOUT_S = 60.0
STATEMENT_CACHE_SIZE = 100  # prepared statements asyncpg keeps per connection (its default)


class Database:
    """Owns the process's pool (and connector): made on first use, inside the serving loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # The connector costs about half a second of imports: load it only when it is used. This
        # runs in create_app(), so on Cloud Functions it happens in the preload, before the fork.
        self._cloud_sql = (
            importlib.import_module("app.core.db.cloud_sql") if settings.instance_connection_name else None
        )
        self._connector: Any = None
        self.pool = Once(self._open_pool)  # `await database.pool()`: made, and the login proven, once
        # Seconds connections were checked out, summed: what a request costs the fleet's connection
        # budget (`make bench` reports it per write). Two float operations per request.
        self.held_s = 0.0
        instance, user = settings.instance_connection_name, settings.db_iam_user
        self.target = f"Cloud SQL instance {instance} as {user}" if instance else "the DATABASE_URL server"  # for logs

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection in autocommit: each statement is its own transaction (reads).

        What the database raises in the block is mapped here (`failures.failure_of`): 503 when it
        cannot serve, 409 for a unique, check or exclusion violation, a logged 500 for a not-null
        or foreign-key one; an error of other code in the block goes up as it is.

        The connection goes back as the block left it (no reset, no extra round trip): keep session
        state in a transaction (`SET LOCAL`, `pg_advisory_xact_lock`, `ON COMMIT DROP`)."""
        pool = await self._pool()
        try:
            connection = await pool.acquire()
        except Exception as error:  # every connection is busy, or a new one failed
            reason = describe(error, self._cloud_sql)
            logger.warning("no database connection: %s", reason)
            raise DatabaseUnavailable(reason) from error
        checked_out = time.perf_counter()
        try:
            yield connection
        except BaseException as error:
            # Never hand a broken connection to the next request, nor one whose statement was
            # cancelled midway (a timeout or shutdown cancels the task, not the statement). An error
            # of other code (an HTTP call that timed out) leaves the connection as good as it was.
            # A query's own cancellation (asyncpg's `timeout=`) asks the server to cancel it; that
            # the request gets through the Cloud SQL connector was not tested here.
            cause = database_cause(error, connection) if isinstance(error, Exception) else None
            broken = not isinstance(error, Exception) or (cause is not None and breaks_the_connection(cause))
            pool.release(connection, discard=broken)
            if cause is not None and (failure := failure_of(cause)) is not None:
                if isinstance(failure, DatabaseUnavailable):
                    logger.warning("database unavailable: %s", failure.detail)
                raise failure from error
            raise
        else:
            pool.release(connection)
        finally:
            self.held_s += time.perf_counter() - checked_out

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside one transaction, committed when the block ends without error;
        the audit entries of its writes are written after the commit."""
        async with self.connection() as connection:
            with audited_transaction():
                async with connection.transaction():
                    yield connection

    async def _pool(self) -> Pool:
        try:
            return await self.pool()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this request itself is cancelled
            # dispose() cancelled the open this request waited for
            raise DatabaseUnavailable("the connection pool was closed while it opened") from None

    async def _open_pool(self) -> Pool:
        settings = self._settings
        pool: Pool | None = None
        try:  # everything here fails as a 503 that says why: credentials, refusals, timeouts
            pool = Pool(
                await self._connector_of(),
                max_size=settings.db_pool_size + settings.db_max_overflow,  # at most this many per instance
                min_idle=settings.db_pool_size,  # kept open while idle; the overflow closes after idle_s
                idle_s=settings.db_pool_idle_s,
                timeout_s=settings.db_pool_timeout_s,  # wait this long for a free connection, then 503
                recycle_s=RECYCLE_S,
                ping_after_s=IDLE_PING_AFTER_S,
            )
            async with asyncio.timeout(settings.db_pool_timeout_s + 10):
                connection = await pool.acquire()
                try:
                    user = await connection.fetchval("SELECT current_user")
                except BaseException:
                    pool.release(connection, discard=True)
                    raise
            pool.release(connection)
        except BaseException as error:  # also cancelled, by dispose(): the pool goes with what it opened
            if pool is not None:
                await pool.close()
            if not isinstance(error, Exception):
                raise
            reason = describe(error, self._cloud_sql)
            logger.error("cannot connect to %s: %s", self.target, reason)
            raise DatabaseUnavailable(reason) from error
        logger.info("connected to %s (database user %s)", self.target, user)
        return pool

    async def _connector_of(self) -> Callable[[], Awaitable[asyncpg.Connection]]:
        """How to open one connection: through the Cloud SQL connector, or to DATABASE_URL."""
        settings = self._settings
        server_settings = {"application_name": settings.service_name}  # names our sessions in pg_stat_activity
        if not settings.db_transaction_pooling:  # a pooler refuses other startup parameters
            server_settings |= {
                "statement_timeout": str(settings.db_statement_timeout_ms),  # no runaway query holds a connection
                "idle_session_timeout": str(int(1000 * max(IDLE_SESSION_TIMEOUT_S, 2 * settings.db_pool_idle_s))),
            }
        connect: Callable[[], Awaitable[asyncpg.Connection]]
        if self._cloud_sql is not None:
            self._connector = self._connector or await self._cloud_sql.open_connector(settings)
            connect = self._cloud_sql.connection_factory(self._connector, settings, server_settings)
        else:
            assert settings.database_url is not None  # guaranteed by Settings validation
            dsn = make_url(settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
            connect_timeout = min(settings.db_pool_timeout_s, 10)

            # Through a transaction pooler, one transaction and the next may run on different server
            # connections: asyncpg must keep no prepared statement between them (0 = no cache).
            cache_size = 0 if settings.db_transaction_pooling else STATEMENT_CACHE_SIZE

            async def connect() -> asyncpg.Connection:
                return await asyncpg.connect(
                    dsn, server_settings=server_settings, timeout=connect_timeout, statement_cache_size=cache_size
                )

        return _with_retries(connect)

    async def dispose(self) -> None:
        """Close the pool, then the connector (which the pool's connections came through). A pool
        still being opened is cancelled, and closes what it opened."""
        attempt = self.pool.forget()  # the next request starts over, with a new pool
        if attempt is not None:
            attempt.cancel()  # no effect on a finished open
            await asyncio.wait([attempt])
            if not attempt.cancelled() and attempt.exception() is None:
                await attempt.result().close()
        if self._connector is not None:
            await self._connector.close_async()
            self._connector = None


def _with_retries(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
) -> Callable[[], Awaitable[asyncpg.Connection]]:
    """Retry transient connection failures a few times, with jittered backoff, then give up."""

    async def connect_with_retries() -> asyncpg.Connection:
        for attempt in range(CONNECT_ATTEMPTS - 1):
            try:
                return await connect()
            except TRANSIENT_CONNECT_ERRORS as error:
                logger.info("connection attempt %d failed (%s); retrying", attempt + 1, type(error).__name__)
                await asyncio.sleep(random.uniform(0, CONNECT_BACKOFF_S * 2**attempt))  # noqa: S311 (jitter)
        return await connect()

    return connect_with_retries


@asynccontextmanager
async def migration_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """For Alembic (migrations/env.py) only: a SQLAlchemy engine that opens a connection per use,
    the way the service connects (Cloud SQL with IAM, or DATABASE_URL), outside the pool.

    Refused while a request is served: a route that made one would open a connection per request
    outside the pool and its connection budget. Routes run SQL on `database_of(request)`.
    """
    if current_request.get() is not None:
        raise RuntimeError(
            "migration_engine() serves Alembic only: in a request, take a pooled connection with "
            "`async with database_of(request).connection() as connection:` and run a Statement on it "
            "(docs/adding-a-resource.md, Queries)"
        )
    database = Database(settings)
    try:
        yield create_async_engine(
            "postgresql+asyncpg://", poolclass=NullPool, async_creator=await database._connector_of()
        )
    finally:
        await database.dispose()


def database_of(request: Request) -> Database:
    """The app's Database. Read from the request rather than injected: FastAPI resolving a
    dependency costs more per request than this lookup (docs/benchmarks.md)."""
    database: Database = request.app.state.database
    return database
