"""The async engine (one per process, made lazily in the running loop) and per-request sessions."""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

from app.settings import Settings


def create_engine(settings: Settings, *, pooled: bool = True) -> AsyncEngine:
    """Build the engine for these settings; the only place that knows how to reach the database.

    Must be called inside the event loop that will use it (asyncpg connections belong to a loop).
    """
    if settings.instance_connection_name:
        # Seam for the Cloud SQL Python Connector (IAM auth): it will hand SQLAlchemy an
        # `async_creator` here. Until then, refuse clearly rather than connect somewhere wrong.
        raise NotImplementedError("INSTANCE_CONNECTION_NAME: the Cloud SQL connector is not built yet")
    assert settings.database_url is not None  # guaranteed by Settings validation
    connect_args: dict[str, Any] = {
        # Server-side cap on every statement, so a runaway query cannot hold a connection.
        "server_settings": {
            "statement_timeout": str(settings.db_statement_timeout_ms),
            "application_name": "fastapi-cloud-function",
        },
    }
    if not pooled:  # migrations and one-off scripts: open, use, close
        return create_async_engine(settings.database_url, poolclass=NullPool, connect_args=connect_args)
    return create_async_engine(
        settings.database_url,
        connect_args=connect_args,
        pool_size=settings.db_pool_size,  # connections kept open per instance
        max_overflow=settings.db_max_overflow,  # extra connections allowed under bursts
        pool_timeout=settings.db_pool_timeout_s,  # wait this long for a free connection, then fail
        pool_recycle=1800,  # reopen connections older than 30 min (idle proxies and failovers drop them)
        pool_pre_ping=True,  # test a connection before use; instances that slept lose their sockets
    )


class Database:
    """Owns the process's engine; creates it on first use, inside the loop that serves requests."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(self._settings)
        return self._engine

    def session(self) -> AsyncSession:
        if self._sessions is None:
            self._sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        return self._sessions()

    async def dispose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
            self._sessions = None


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_session(database: Annotated[Database, Depends(get_database)]) -> AsyncIterator[AsyncSession]:
    async with database.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
