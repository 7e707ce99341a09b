"""One fresh database per test run, built by the real migrations; the app driven over HTTP.

TEST_DATABASE_URL (any database on an existing server) selects that server; otherwise an
embedded PostgreSQL is started in a temporary folder and deleted afterwards. Either way the
suite creates its own database, runs `alembic upgrade head` on it, and drops it at the end.
Tests stay independent by using unique names, never by relying on order.
"""

import asyncio
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI

from app.api import create_app
from app.core.settings import Settings
from tests.function_server import FunctionServer, serve_function
from tests.helpers import ROOT, admin, asgi_client, run_alembic, unique, with_database
from tests.session_state import assert_no_session_state

if TYPE_CHECKING:
    from tests.identity_fakes import Issuer

sys.path.insert(0, str(ROOT / "scripts"))

# Every status an in-process app answers is declared in its OpenAPI document (checked at the session's end).
pytest_plugins = ["tests.observed_statuses"]


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A URL of the server's maintenance database: TEST_DATABASE_URL's server, or an embedded one."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield with_database(url, "postgres")
        return
    import embedded_db

    with tempfile.TemporaryDirectory(prefix="pytest-pg-") as folder:
        server = embedded_db.start(Path(folder) / "data", delete_on_exit=True)
        try:
            yield embedded_db.url(server, "postgres")
        finally:
            server.cleanup()


@pytest.fixture(scope="session")
def create_database(server_url: str) -> Iterator[Callable[[], str]]:
    """A factory of empty databases on the test server, all dropped at the end of the run."""
    created: list[str] = []

    def create() -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        asyncio.run(admin(server_url, f'CREATE DATABASE "{name}"'))
        created.append(name)
        return with_database(server_url, name)

    yield create
    for name in created:
        asyncio.run(admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def served(create_database: Callable[[], str]) -> Iterator[FunctionServer]:
    """main.py served by functions-framework, as on Google Cloud, on a freshly migrated database."""
    url = create_database()
    run_alembic(url, "upgrade", "head")
    with serve_function(url, source="main.py", LOG_LEVEL="WARNING") as server:
        yield server


@pytest.fixture(scope="session")
def database_url(create_database: Callable[[], str]) -> str:
    url = create_database()
    run_alembic(url, "upgrade", "head")
    return url


@pytest.fixture(scope="session")
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(Settings(database_url=database_url, instance_connection_name=None))

    @application.get("/__test__/boom", include_in_schema=False)
    async def boom() -> None:
        raise RuntimeError("password=hunter2 SELECT * FROM secrets")  # must never reach a client

    yield application
    await application.state.database.dispose()


@pytest.fixture(autouse=True)
async def _no_session_state_left(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fails the test after which the app's idle pooled connections carry session state (a SET, a
    session advisory lock, LISTEN, a temporary table, ...): nothing resets them on release."""
    yield
    if "app" in request.fixturenames:
        await assert_no_session_state(request.getfixturevalue("app"))


@pytest.fixture(scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as http:
        yield http


@pytest.fixture
async def project(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/v1/projects", json={"name": unique("project")})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
async def task(client: httpx.AsyncClient, project: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"/v1/projects/{project['id']}/tasks", json={"title": unique("task")})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="session")
def issuer() -> Iterator["Issuer"]:
    """A token issuer with its key set served on loopback (tests/identity_fakes.py)."""
    from tests.identity_fakes import Issuer

    running = Issuer().start()
    yield running
    running.stop()


@pytest.fixture
async def authed(database_url: str, issuer: "Issuer") -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with AUTH_MODE=google whose key set is `issuer`'s (no allow-list)."""
    from tests.identity_fakes import AUDIENCE

    settings = Settings(
        database_url=database_url, auth_mode="google", auth_audience=AUDIENCE, oidc_jwks_url=issuer.jwks_url
    )
    application = create_app(settings)
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
    await application.state.database.dispose()


@pytest.fixture(scope="session")
def served_hardened(create_database: Callable[[], str]) -> Iterator[FunctionServer]:
    """The real function (`main.api`, from tests/served_slow_clients.py: a 1 s body read timeout)
    with CORS on for https://app.example: for the hostile-client tests."""
    url = create_database()
    run_alembic(url, "upgrade", "head")
    entry = "tests/served_slow_clients.py"
    with serve_function(url, source=entry, CORS_ALLOWED_ORIGINS="https://app.example") as server:
        yield server
