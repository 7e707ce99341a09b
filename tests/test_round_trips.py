"""Every common write is one statement on a warm connection (statement cache on), so one round
trip holds its connection: counted with asyncpg's query logger, not timed. Transaction-pooling mode
(DB_TRANSACTION_POOLING: no statement cache) is exempt: there asyncpg prepares every statement anew."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from tests.helpers import unique


@pytest.fixture
def statements(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every statement the app's requests send from now on."""
    sent: list[str] = []
    database = app.state.database
    connection = database.connection

    def log(query: Any) -> None:
        sent.append(query.query)

    @asynccontextmanager
    async def logged() -> AsyncIterator[asyncpg.Connection]:
        async with connection() as opened:
            opened.add_query_logger(log)
            try:
                yield opened
            finally:
                opened.remove_query_logger(log)

    monkeypatch.setattr(database, "connection", logged)
    return sent


async def _count(statements: list[str], write: Callable[[], Awaitable[httpx.Response]], status: int) -> list[str]:
    """The statements of `write`, sent a second time: the first warms the connection's cache."""
    assert (await write()).status_code == status
    statements.clear()
    assert (await write()).status_code == status
    return list(statements)


async def test_every_common_write_sends_one_statement(
    client: httpx.AsyncClient, project: dict[str, Any], statements: list[str]
) -> None:
    tasks = f"/v1/projects/{project['id']}/tasks"
    created = (await client.post(tasks, json={"title": "counted"})).json()
    task = f"/v1/tasks/{created['id']}"

    async def tag() -> str:
        return (await client.get(task)).headers["etag"]

    writes: dict[str, tuple[Callable[[], Awaitable[httpx.Response]], int]] = {
        "POST task": (lambda: client.post(tasks, json={"title": unique()}), 201),
        "POST task with a key": (
            lambda: client.post(tasks, json={"title": unique()}, headers={"Idempotency-Key": unique("k")}),
            201,
        ),
        "POST project with a key": (
            lambda: client.post("/v1/projects", json={"name": unique()}, headers={"Idempotency-Key": unique("k")}),
            201,
        ),
        "PATCH task": (lambda: client.patch(task, json={"priority": 2}), 200),
    }
    for name, (write, status) in writes.items():
        sent = await _count(statements, write, status)
        assert len(sent) == 1, (name, sent)

    async def patch_if_match() -> httpx.Response:
        return await client.patch(task, json={"priority": 3}, headers={"If-Match": await tag()})

    await patch_if_match()
    current = await tag()
    statements.clear()
    assert (await client.patch(task, json={"priority": 1}, headers={"If-Match": current})).status_code == 200
    assert len(statements) == 1, statements

    for _ in range(2):  # the second DELETE runs on a warm connection
        doomed = (await client.post(tasks, json={"title": unique()})).json()
        headers = {"If-Match": (await client.get(f"/v1/tasks/{doomed['id']}")).headers["etag"]}
        statements.clear()
        assert (await client.delete(f"/v1/tasks/{doomed['id']}", headers=headers)).status_code == 204
    assert len(statements) == 1, statements
