"""What a failure means, decided where the database is called: unavailable (503), the client's
constraint (409, named), or a bug (500, logged) — and an error of other code is never the database's."""

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request

from app.api import create_app
from app.core.db.database import database_of
from app.core.db.failures import causes
from app.core.settings import Settings
from tests.helpers import asgi_client, assert_problem

# Temporary tables dropped at commit (or with the rollback of the failed statement): nothing of
# them outlives the request on the pooled connection.
_TABLES = """
CREATE TEMP TABLE parent (id int PRIMARY KEY) ON COMMIT DROP;
CREATE TEMP TABLE child (
    id int CONSTRAINT child_id_unique UNIQUE,
    amount int CONSTRAINT child_amount_positive CHECK (amount > 0),
    label text NOT NULL DEFAULT 'x',
    during int4range,
    parent_id int CONSTRAINT child_parent_fk REFERENCES parent (id),
    CONSTRAINT child_during_apart EXCLUDE USING gist (during WITH &&)
) ON COMMIT DROP;
INSERT INTO parent VALUES (1);
INSERT INTO child (id, amount, during, parent_id) VALUES (1, 1, '[1,5)', 1);
"""
_BREAKING = {
    "unique": "INSERT INTO child (id, amount) VALUES (1, 2)",
    "check": "INSERT INTO child (id, amount) VALUES (2, -1)",
    "exclusion": "INSERT INTO child (id, amount, during) VALUES (3, 1, '[2,3)')",
    "not-null": "INSERT INTO child (id, amount, label) VALUES (4, 1, NULL)",
    "foreign-key": "INSERT INTO child (id, amount, parent_id) VALUES (5, 1, 99)",
}
_BACKENDS: list[int] = []  # the server process of each connection a failing route held


@pytest.fixture(scope="module")
async def failing(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An app with routes that fail in the ways a user's handler can."""
    app: FastAPI = create_app(Settings(database_url=database_url, instance_connection_name=None))

    @app.get("/__test__/breaks/{kind}", include_in_schema=False)
    async def breaks(request: Request, kind: str) -> None:
        async with database_of(request).transaction() as connection:
            await connection.execute(_TABLES)
            await connection.execute(_BREAKING[kind])

    @app.get("/__test__/socket-error-beside-the-database")
    async def socket_error(request: Request) -> None:
        async with database_of(request).connection() as connection:
            await connection.fetchval("SELECT 1")
            raise ConnectionRefusedError("an HTTP call of the handler's own was refused")

    @app.get("/__test__/timeout-beside-the-database")
    async def timeout(request: Request) -> None:
        async with database_of(request).transaction() as connection:
            _BACKENDS.append(await connection.fetchval("SELECT pg_backend_pid()"))
            raise TimeoutError("an HTTP call of the handler's own timed out")

    @app.get("/__test__/backend")
    async def backend(request: Request) -> int:
        async with database_of(request).connection() as connection:
            pid: int = await connection.fetchval("SELECT pg_backend_pid()")
            return pid

    @app.get("/__test__/socket-error-without-the-database")
    async def socket_error_alone() -> None:
        raise OSError("a socket of the handler's own")

    @app.get("/__test__/database-error-handled")
    async def handled(request: Request) -> None:
        async with database_of(request).transaction() as connection:
            try:
                await connection.execute("SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)")
            except Exception:
                raise RuntimeError("the handler's own failure, its cause deliberately hidden") from None

    @app.get("/__test__/query-over-its-timeout", include_in_schema=False)
    async def slow(request: Request) -> None:
        async with database_of(request).connection() as connection:
            await connection.fetchval("SELECT pg_sleep(1)", timeout=0.05)

    async with asgi_client(app) as client:
        yield client
    await app.state.database.dispose()


@pytest.mark.parametrize(
    "path",
    [
        "/__test__/socket-error-beside-the-database",
        "/__test__/timeout-beside-the-database",
        "/__test__/socket-error-without-the-database",
    ],
)
async def test_a_socket_error_or_timeout_outside_the_database_is_a_500(failing: httpx.AsyncClient, path: str) -> None:
    body = assert_problem(await failing.get(path), 500)
    assert "database" not in body["detail"]
    assert (await failing.get("/readyz")).status_code == 200  # the connection it held went back unharmed


async def test_a_timeout_of_other_code_keeps_the_connection_it_held(failing: httpx.AsyncClient) -> None:
    """Discarding it would cost a new connection (through the Cloud SQL connector: a TLS handshake
    and an IAM login) for an error that was never the database's."""
    assert_problem(await failing.get("/__test__/timeout-beside-the-database"), 500)
    assert (await failing.get("/__test__/backend")).json() == _BACKENDS[-1]  # the same session, reused


async def test_a_database_error_hidden_with_from_none_is_not_the_database_s(failing: httpx.AsyncClient) -> None:
    assert_problem(await failing.get("/__test__/database-error-handled"), 500)


async def test_a_query_over_its_own_timeout_is_a_503(failing: httpx.AsyncClient) -> None:
    response = await failing.get("/__test__/query-over-its-timeout")
    assert "did not answer in time" in assert_problem(response, 503)["detail"]
    assert response.headers["retry-after"] == "5"


@pytest.mark.parametrize(
    ("kind", "constraint"),
    [("unique", "child_id_unique"), ("check", "child_amount_positive"), ("exclusion", "child_during_apart")],
)
async def test_a_unique_check_or_exclusion_violation_is_a_409_naming_the_constraint(
    failing: httpx.AsyncClient, kind: str, constraint: str
) -> None:
    body = assert_problem(await failing.get(f"/__test__/breaks/{kind}"), 409)
    assert body["type"] == "urn:problem-type:conflict"
    assert constraint in body["detail"]
    assert "(1)" not in body["detail"]  # PostgreSQL's detail, with the values, stays in the server


@pytest.mark.parametrize(("kind", "named"), [("not-null", "label"), ("foreign-key", "child_parent_fk")])
async def test_an_unexpected_not_null_or_foreign_key_violation_is_a_logged_500(
    failing: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, kind: str, named: str
) -> None:
    with caplog.at_level(logging.ERROR, logger="app.core.errors"):
        body = assert_problem(await failing.get(f"/__test__/breaks/{kind}"), 500)
    assert named not in body["detail"]
    logged = [record for record in caplog.records if record.name == "app.core.errors"]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert named in str(logged[0].exc_info[1])


def test_causes_honour_a_suppressed_context() -> None:
    def replace() -> None:
        try:
            raise OSError("the original")
        except OSError:
            raise RuntimeError("the replacement") from None

    with pytest.raises(RuntimeError) as raised:
        replace()
    assert list(causes(raised.value)) == [raised.value]
    assert isinstance(raised.value.__context__, OSError)  # still there, only suppressed
