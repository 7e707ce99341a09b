"""The engine honours the settings: pool sizing, pre-ping and the server-side statement timeout."""

import asyncio

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from app.core import database as database_module
from app.core.database import Database
from app.core.settings import Settings


async def test_the_engine_applies_pool_and_timeout_settings(database_url: str) -> None:
    settings = Settings(database_url=database_url, db_pool_size=3, db_max_overflow=1, db_statement_timeout_ms=1234)
    database = Database(settings)
    try:
        engine = await database.engine()
        assert (engine.pool.size(), engine.pool._max_overflow, engine.pool._timeout) == (3, 1, 10)  # type: ignore[attr-defined]
        assert not engine.pool._pre_ping  # type: ignore[attr-defined]  (only idle connections are pinged)
        assert event.contains(engine.sync_engine.pool, "checkout", database_module._ping_if_idle)
        async with engine.connect() as connection:
            assert (await connection.execute(text("SHOW statement_timeout"))).scalar() == "1234ms"
    finally:
        await database.dispose()


async def test_a_statement_over_the_timeout_is_cancelled_by_the_server(database_url: str) -> None:
    database = Database(Settings(database_url=database_url, db_statement_timeout_ms=100))
    try:
        async with (await database.engine()).connect() as connection:
            with pytest.raises(DBAPIError, match="statement timeout"):
                await connection.execute(text("SELECT pg_sleep(2)"))
    finally:
        await database.dispose()


async def test_the_engine_is_made_once_and_only_when_first_used(database_url: str) -> None:
    database = Database(Settings(database_url=database_url))
    assert database._engine is None
    engines = await asyncio.gather(*(database.engine() for _ in range(10)))
    assert all(engine is engines[0] for engine in engines)
    await database.dispose()
    assert database._engine is None


async def test_a_disposed_database_reconnects_on_next_use(database_url: str) -> None:
    database = Database(Settings(database_url=database_url))
    async with database.connection() as connection:
        assert await connection.fetchval("SELECT 1") == 1
    await database.dispose()
    async with database.transaction() as connection:  # a new engine, not the disposed one
        assert await connection.fetchval("SELECT 2") == 2
    assert database._engine is not None
    await database.dispose()
