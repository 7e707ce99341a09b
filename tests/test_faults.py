"""Database faults: nothing hangs, nothing is a 500, nothing acknowledged is lost, service resumes.

The restart tests use a PostgreSQL of their own (embedded, in a temporary folder) so that
stopping it disturbs no other test.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.api import create_app
from app.core.settings import Settings
from tests.helpers import asgi_client, assert_problem, fetch, fetchval, libpq_url, run_alembic, unique
from tests.private_postgres import PrivatePostgres, private_postgres


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[tuple[PrivatePostgres, str]]:
    with private_postgres("pytest-faults-pg-") as postgres:
        url = postgres.database("faults")
        run_alembic(url, "upgrade", "head")
        yield postgres, url


async def _client(app: FastAPI) -> httpx.AsyncClient:
    return asgi_client(app, timeout=30)


@pytest.fixture
async def fault_app(own_postgres: tuple[PrivatePostgres, str]) -> AsyncIterator[FastAPI]:
    app = create_app(Settings(database_url=own_postgres[1], db_pool_timeout_s=2))
    yield app
    await app.state.database.dispose()


async def test_an_unreachable_database_is_a_503_without_waiting() -> None:
    app = create_app(Settings(database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none", db_pool_timeout_s=2))
    async with await _client(app) as client:
        started = time.monotonic()
        response = await client.get("/v1/projects")
    assert time.monotonic() - started < 2
    assert "could not be reached" in assert_problem(response, 503)["detail"]
    assert response.headers["retry-after"] == "5"
    await app.state.database.dispose()


async def test_an_exhausted_pool_answers_503_within_the_pool_timeout(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout_s=1))
    async with await _client(app) as client:
        assert (await client.get("/v1/projects")).status_code == 200
        async with app.state.database.connection():  # holds the only connection
            started = time.monotonic()
            response = await client.get("/v1/projects")
            waited = time.monotonic() - started
    assert "busy" in assert_problem(response, 503)["detail"]
    assert 0.9 < waited < 2
    await app.state.database.dispose()


async def test_a_statement_over_the_timeout_is_a_503_problem(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, db_statement_timeout_ms=300))
    async with await _client(app) as client:
        project = (await client.post("/v1/projects", json={"name": unique("slow")})).json()
        blocker = await asyncpg.connect(libpq_url(database_url))
        try:
            async with blocker.transaction():  # a long transaction holds the row: the PATCH must wait
                await blocker.execute("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", project["id"])
                response = await client.patch(f"/v1/projects/{project['id']}", json={"description": "x"})
        finally:
            await blocker.close()
    assert "statement timeout" in assert_problem(response, 503)["detail"]
    assert await fetchval(database_url, "SELECT version FROM projects WHERE id = $1", project["id"]) == 1
    await app.state.database.dispose()


async def test_readyz_follows_the_database_down_and_back_without_a_restart(
    fault_app: FastAPI, own_postgres: tuple[PrivatePostgres, str]
) -> None:
    postgres, _ = own_postgres
    async with await _client(fault_app) as client:
        assert (await client.get("/readyz")).status_code == 200
        await asyncio.to_thread(postgres.stop)
        try:
            down = await client.get("/readyz")
            assert_problem(down, 503)
            assert down.headers["retry-after"] == "5"
        finally:
            await asyncio.to_thread(postgres.start)
        assert (await client.get("/readyz")).status_code == 200


async def test_writes_under_load_survive_a_restart_with_no_500_and_no_lost_201(
    fault_app: FastAPI, own_postgres: tuple[PrivatePostgres, str]
) -> None:
    postgres, url = own_postgres
    results: list[tuple[float, int, str | None]] = []  # (when, status, created id)
    stop = asyncio.Event()
    async with await _client(fault_app) as client:
        project = (await client.post("/v1/projects", json={"name": unique("restart")})).json()

        async def writer() -> None:
            while not stop.is_set():
                response = await client.post(f"/v1/projects/{project['id']}/tasks", json={"title": unique()})
                created = response.json()["id"] if response.status_code == 201 else None
                if response.status_code == 503:
                    assert response.headers["retry-after"] == "5"
                results.append((time.monotonic(), response.status_code, created))
                await asyncio.sleep(0.005)

        writers = [asyncio.create_task(writer()) for _ in range(8)]
        await asyncio.sleep(1.5)
        await asyncio.to_thread(postgres.stop)
        await asyncio.sleep(1.0)  # down: requests must fail fast, not hang
        await asyncio.to_thread(postgres.start)
        back_at = time.monotonic()
        await asyncio.sleep(3.0)
        stop.set()
        await asyncio.gather(*writers)

    statuses = {status for _, status, _ in results}
    assert statuses <= {201, 503}, f"unexpected statuses: {statuses}"
    assert 503 in statuses, "the restart was not felt: the test proved nothing"
    acknowledged = {created for _, status, created in results if status == 201}
    stored = await _task_ids(url, project["id"])
    assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged writes are missing"
    first_success_after = min(when for when, status, _ in results if status == 201 and when > back_at)
    assert first_success_after - back_at < 5


async def _task_ids(url: str, project_id: str) -> set[str]:
    rows = await fetch(url, "SELECT id::text FROM tasks WHERE project_id = $1", project_id)
    return {row["id"] for row in rows}


async def _terminate_app_sessions(url: str) -> int:
    count: int = await fetchval(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'projects-api' AND pid <> pg_backend_pid()",
    )
    return count


@pytest.mark.parametrize("idle_ping_after_s", [0.0, 3600.0])
async def test_a_connection_killed_while_idle_is_replaced(
    own_postgres: tuple[PrivatePostgres, str], monkeypatch: pytest.MonkeyPatch, idle_ping_after_s: float
) -> None:
    """Idle connections are pinged before use: one the server dropped is replaced, unseen by the client.

    With the ping threshold out of reach, the same drop costs one 503, and the next request works.
    """
    from app.core.db import database

    monkeypatch.setattr(database, "IDLE_PING_AFTER_S", idle_ping_after_s)
    url = own_postgres[1]
    app = create_app(Settings(database_url=url, db_pool_size=1, db_max_overflow=0))
    async with await _client(app) as client:
        assert (await client.get("/v1/projects")).status_code == 200
        assert await _terminate_app_sessions(url) == 1  # a failover, an idle timeout, a proxy restart
        first = await client.get("/v1/projects")
        second = await client.get("/v1/projects")
    await app.state.database.dispose()
    if idle_ping_after_s == 0:
        assert (first.status_code, second.status_code) == (200, 200)
    else:
        assert_problem(first, 503)
        assert second.status_code == 200
