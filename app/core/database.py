"""The process's connection pool (made lazily, in the serving loop) and a connection per request.

The pool reaches PostgreSQL either at DATABASE_URL or, with INSTANCE_CONNECTION_NAME, through the
Cloud SQL Python Connector with IAM database authentication (`app/core/cloud_sql.py`). Before the
first connection is handed out, one proves the identity works; if it does not, requests get a 503
problem and the next request tries again.

Requests run SQL on the asyncpg connection itself, checked out of SQLAlchemy's pool: statements are
compiled once from the SQLModel tables (`app/core/sql.py`), so per request there is no ORM session,
no statement compilation and no result wrapping, only asyncpg.
"""

import asyncio
import importlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import event, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from app.core.db_errors import TRANSIENT_CONNECT_ERRORS, DatabaseUnavailable, breaks_the_connection, describe
from app.core.logs import audited_transaction
from app.core.once import Once
from app.core.settings import Settings

logger = logging.getLogger(__name__)

CONNECT_ATTEMPTS = 3  # a restart or failover drops connections for a moment: try again, briefly
CONNECT_BACKOFF_S = 0.1  # full jitter: sleep uniform(0, 0.1 * 2**attempt) between attempts
IDLE_PING_AFTER_S = 10.0  # a pooled connection unused this long is pinged before it is handed out


class Database:
    """Owns the process's engine (and connector): made on first use, inside the serving loop."""

    def __init__(self, settings: Settings, *, pooled: bool = True) -> None:
        self._settings = settings
        self._pooled = pooled
        # The connector costs about half a second of imports: load it only when it is used. This
        # runs in create_app(), so on Cloud Functions it happens in the preload, before the fork.
        self._cloud_sql = importlib.import_module("app.core.cloud_sql") if settings.instance_connection_name else None
        self._connector: Any = None
        self._engine: AsyncEngine | None = None
        self.engine = Once(self._connect_and_verify)  # `await database.engine()`: made and proven once
        instance, user = settings.instance_connection_name, settings.db_iam_user
        self.target = f"Cloud SQL instance {instance} as {user}" if instance else "the DATABASE_URL server"  # for logs

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection in autocommit: each statement is its own transaction (reads)."""
        engine = await self.engine()
        try:
            pooled: PoolProxiedConnection = await greenlet_spawn(engine.sync_engine.raw_connection)
        except Exception as error:  # the pool is exhausted, or a new connection failed
            reason = describe(error, self._cloud_sql)
            logger.warning("no database connection: %s", reason)
            raise DatabaseUnavailable(reason) from error
        try:
            yield cast(asyncpg.Connection, pooled.driver_connection)
        except BaseException as error:
            # Never hand a broken connection to the next request, nor one whose statement was
            # cancelled midway (a timeout or shutdown cancels the task, not the statement).
            if not isinstance(error, Exception) or breaks_the_connection(error):
                await greenlet_spawn(pooled.invalidate, error if isinstance(error, Exception) else None)
            raise
        finally:
            await greenlet_spawn(pooled.close)  # back to the pool (a no-op rollback: no transaction is open)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside one transaction, committed when the block ends without error;
        the audit entries of its writes are written after the commit."""
        async with self.connection() as connection:
            with audited_transaction():
                async with connection.transaction():
                    yield connection

    async def _connect_and_verify(self) -> AsyncEngine:
        try:
            engine = self._engine or await self._create_engine()
            self._engine = engine
            async with engine.connect() as connection:
                user = (await connection.exec_driver_sql("SELECT current_user")).scalar()
        except Exception as error:
            reason = describe(error, self._cloud_sql)
            logger.error("cannot connect to %s: %s", self.target, reason)
            raise DatabaseUnavailable(reason) from error
        logger.info("connected to %s (database user %s)", self.target, user)
        return engine

    async def _create_engine(self) -> AsyncEngine:
        settings = self._settings
        server_settings = {
            "statement_timeout": str(settings.db_statement_timeout_ms),  # no runaway query holds a connection
            "application_name": settings.service_name,  # names our sessions in pg_stat_activity
        }
        connect: Callable[[], Awaitable[asyncpg.Connection]]
        if self._cloud_sql is not None:
            self._connector = self._connector or await self._cloud_sql.open_connector(settings)
            connect = self._cloud_sql.connection_factory(self._connector, settings, server_settings)
        else:
            assert settings.database_url is not None  # guaranteed by Settings validation
            dsn = make_url(settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
            connect_timeout = min(settings.db_pool_timeout_s, 10)

            async def connect() -> asyncpg.Connection:
                return await asyncpg.connect(dsn, server_settings=server_settings, timeout=connect_timeout)

        options: dict[str, Any] = {"async_creator": _with_retries(connect)}
        url = "postgresql+asyncpg://"  # every connection comes from the creator
        if not self._pooled:  # migrations and one-off scripts: open, use, close
            return create_async_engine(url, poolclass=NullPool, **options)
        engine = create_async_engine(
            url,
            pool_size=settings.db_pool_size,  # connections kept open per instance
            max_overflow=settings.db_max_overflow,  # extra connections allowed under bursts
            pool_timeout=settings.db_pool_timeout_s,  # wait this long for a free connection, then fail
            pool_recycle=1800,  # reopen connections older than 30 min (proxies and failovers drop them)
            # Pre-ping, but only connections that sat idle (see _ping_if_idle): pinging every
            # checkout costs a round trip per request under load, where sockets are fresh.
            pool_pre_ping=False,
            **options,
        )
        event.listen(engine.sync_engine.pool, "checkin", _note_idle_since)
        event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
        return engine

    async def dispose(self) -> None:
        """Close the pool, then the connector (which the pool's connections came through)."""
        self.engine.reset()  # the next request starts over, with a new engine
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        if self._connector is not None:
            await self._connector.close_async()
            self._connector = None


def _note_idle_since(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
    """pool_pre_ping for connections idle over IDLE_PING_AFTER_S: a function instance that sat
    between requests (CPU throttled, sockets dropped by a proxy or a failover) gets a live one."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_AFTER_S:
        return
    try:
        dbapi_connection.ping()
    except Exception as error:
        raise DisconnectionError("a pooled connection died while idle") from error  # the pool reconnects


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


async def get_database(request: Request) -> Database:  # async: a sync dependency costs a thread hop
    database: Database = request.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]
