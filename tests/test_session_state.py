"""The suite's check for session state left on pooled connections catches every kind, and lets
through what ends with its transaction (what the README tells a handler to use instead)."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request

from app.api import create_app
from app.core.db.database import database_of
from app.core.settings import Settings
from tests.helpers import asgi_client
from tests.session_state import assert_no_session_state

_DIRTY = {  # kind: (what a handler runs, what the check reports)
    "SET": ("SET work_mem = '8MB'", "SET work_mem"),
    "session advisory lock": ("SELECT pg_advisory_lock(42)", "session advisory lock 42"),
    "LISTEN": ("LISTEN reports", "LISTEN reports"),
    "temporary table": ("CREATE TEMP TABLE scratch (id int)", "temporary table scratch"),
    "PREPARE": ("PREPARE counted AS SELECT count(*) FROM projects", "PREPARE counted"),
    "cursor WITH HOLD": ("DECLARE walk CURSOR WITH HOLD FOR SELECT 1", "cursor WITH HOLD walk"),
}
# The same needs, met within the request's transaction: nothing survives its end.
_CLEAN = [
    "SET LOCAL work_mem = '8MB'",
    "SELECT pg_advisory_xact_lock(42)",
    "CREATE TEMP TABLE scratch (id int) ON COMMIT DROP",
    "SELECT set_config('app.tenant', 'a', true)",
]


@pytest.fixture
async def scratch(database_url: str) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app of one pooled connection, with a route that runs the SQL it is given."""
    app = create_app(Settings(database_url=database_url, db_pool_size=1, db_max_overflow=0))

    @app.post("/__test__/sql")
    async def run(request: Request, transaction: bool = False) -> None:
        sql = (await request.body()).decode()
        database = database_of(request)
        async with database.transaction() if transaction else database.connection() as connection:
            await connection.execute(sql)

    async with asgi_client(app) as client:
        yield app, client
    await app.state.database.dispose()


@pytest.mark.parametrize("kind", list(_DIRTY))
@pytest.mark.parametrize("transaction", [False, True])
async def test_a_route_that_leaves_session_state_fails_the_suite(
    scratch: tuple[FastAPI, httpx.AsyncClient], kind: str, transaction: bool
) -> None:
    app, client = scratch
    sql, finding = _DIRTY[kind]
    response = await client.post("/__test__/sql", params={"transaction": transaction}, content=sql)
    assert response.status_code == 200, response.text
    with pytest.raises(pytest.fail.Exception, match=f"inherit: {finding}\\."):
        await assert_no_session_state(app)
    # and the pool is gone with the dirty connection, so the next request gets a clean one
    assert app.state.database.pool.result() is None
    await client.get("/readyz")
    await assert_no_session_state(app)


async def test_what_ends_with_the_transaction_passes(scratch: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = scratch
    for sql in _CLEAN:
        response = await client.post("/__test__/sql", params={"transaction": True}, content=sql)
        assert response.status_code == 200, response.text
    await assert_no_session_state(app)
    assert len(app.state.database.pool.result().idle_connections()) == 1  # it did look at one
