"""The async engine (one per process, made lazily in the serving loop) and per-request sessions.

The engine reaches PostgreSQL either at DATABASE_URL or, with INSTANCE_CONNECTION_NAME, through
the Cloud SQL Python Connector with IAM database authentication (`app/cloud_sql.py`). Before the
first session is handed out, one connection proves the identity works; if it does not, requests
get a 503 problem and the next request tries again.
"""

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db_errors import (
    TRANSIENT_CONNECT_ERRORS,
    DatabaseUnavailable,
    breaks_the_connection,
    causes,
    unavailable_reason,
)
from app.once import Once
from app.settings import Settings

logger = logging.getLogger(__name__)

CONNECT_ATTEMPTS = 3  # a restart or failover drops connections for a moment: try again, briefly
CONNECT_BACKOFF_S = 0.1  # full jitter: sleep uniform(0, 0.1 * 2**attempt) between attempts
IDLE_PING_AFTER_S = 10.0  # a pooled connection unused this long is pinged before it is handed out


def _load_cloud_sql(settings: Settings) -> ModuleType | None:
    """The connector costs about half a second of imports: load it only when it is used. This
    runs in create_app(), so on Cloud Functions it happens in the preload, before the fork."""
    if not settings.instance_connection_name:
        return None
    from app import cloud_sql

    return cloud_sql


class Database:
    """Owns the process's engine (and connector): made on first use, inside the serving loop."""

    def __init__(self, settings: Settings, *, pooled: bool = True) -> None:
        self._settings = settings
        self._pooled = pooled
        self._cloud_sql = _load_cloud_sql(settings)
        self._connector: Any = None
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._reads: async_sessionmaker[AsyncSession] | None = None
        self.ready = Once(self._connect_and_verify)  # `await database.ready()` -> the engine

    @property
    def target(self) -> str:
        """Where and as whom we connect, for logs (never a password: there is none)."""
        settings = self._settings
        if settings.instance_connection_name:
            return f"Cloud SQL instance {settings.instance_connection_name} as {settings.db_iam_user}"
        return "the DATABASE_URL server"

    async def _connect_and_verify(self) -> AsyncEngine:
        try:
            engine = self._engine or await self._create_engine()
            self._engine = engine
            async with engine.connect() as connection:
                user = (await connection.execute(text("SELECT current_user"))).scalar()
        except Exception as error:
            reason = self._describe(error)
            logger.error("cannot connect to %s: %s", self.target, reason)
            raise DatabaseUnavailable(reason) from error
        logger.info("connected to %s (database user %s)", self.target, user)
        self._sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        # A read is one SELECT: in autocommit it needs no BEGIN and no ROLLBACK round trip.
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._reads = async_sessionmaker(autocommit, class_=AsyncSession, expire_on_commit=False)
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
            # checkout costs three round trips per request under load, where sockets are fresh.
            pool_pre_ping=False,
            **options,
        )
        event.listen(engine.sync_engine, "handle_error", _invalidate_broken_connections)
        event.listen(engine.sync_engine.pool, "checkin", _note_idle_since)
        event.listen(engine.sync_engine.pool, "checkout", _ping_if_idle)
        return engine

    def _describe(self, error: BaseException) -> str:
        """Why connecting failed, in words that are safe to show a client."""
        if self._cloud_sql is not None:
            for cause in causes(error):
                if reason := self._cloud_sql.describe_failure(cause):
                    return str(reason)
        return unavailable_reason(error) or f"connecting failed ({type(error).__name__})"

    async def session(self, *, read_only: bool = False) -> AsyncSession:
        if self._sessions is None or self._reads is None:  # first use in this process
            await self.ready()
            assert self._sessions is not None and self._reads is not None
        return self._reads() if read_only else self._sessions()

    async def dispose(self) -> None:
        """Close the pool, then the connector (which the pool's connections came through)."""
        self.ready.reset()
        self._sessions = self._reads = None  # the next session starts over, with a new engine
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


def _invalidate_broken_connections(context: ExceptionContext) -> None:
    if breaks_the_connection(context.original_exception):
        context.is_disconnect = True  # discard this connection, and the pool's others (a restart?)


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


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for a write: one transaction, committed by the service."""
    async with await request.app.state.database.session() as session:
        yield session


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for a read-only request: autocommit, no transaction to open or roll back."""
    async with await request.app.state.database.session(read_only=True) as session:
        yield session


# scope="function": the session closes when the route function returns, not after the response
# is sent, so its pooled connection is free again while the response is serialized and written.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]
