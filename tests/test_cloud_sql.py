"""Cloud SQL through the REAL connector library, against the offline fake in cloud_sql_fake.py.

The runtime and migrator identities reach the app through Application Default Credentials
(service-account key files whose token endpoint is the fake), as on Google Cloud.
"""

import asyncio
import datetime
import logging
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from app.api import create_app
from app.core.settings import Settings
from tests.cloud_sql_fake import PROXY_PORT, CertificateAuthority, FakeCloudSQL
from tests.helpers import ROOT, assert_problem, fetch, libpq_url, unique, with_database

RUNTIME = "projects-api@fake-project.iam.gserviceaccount.com"
MIGRATOR = "migrator@fake-project.iam.gserviceaccount.com"
RUNTIME_DB_USER, MIGRATOR_DB_USER = (
    RUNTIME.removesuffix(".gserviceaccount.com"),
    MIGRATOR.removesuffix(".gserviceaccount.com"),
)


def _upstream(server_url: str) -> tuple[str, ...]:
    url = make_url(server_url)
    port = url.port or 5432
    socket_dir = url.query.get("host")
    if isinstance(socket_dir, str) and socket_dir.startswith("/"):
        return ("unix", f"{socket_dir}/.s.PGSQL.{port}")
    return ("tcp", url.host or "127.0.0.1", str(port))


async def _admin(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(libpq_url(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def _roles_sql(database: str) -> str:
    """migrations/roles.sql with its psql variables filled in."""
    values = {"database": database, "migrator": MIGRATOR_DB_USER, "runtime": RUNTIME_DB_USER}
    sql = (ROOT / "migrations" / "roles.sql").read_text()
    return re.sub(r':"(\w+)"', lambda match: '"' + values[match.group(1)] + '"', sql)


@pytest.fixture(scope="module")
def fake(server_url: str) -> Iterator[FakeCloudSQL]:
    running = FakeCloudSQL(upstream=_upstream(server_url)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def iam_database(server_url: str, create_database: Callable[[], str], fake: FakeCloudSQL) -> str:
    """A database set up as on Cloud SQL: two IAM users, roles.sql, and migrations run by the migrator."""
    url = create_database()
    name = make_url(url).database
    assert name is not None
    for role in (MIGRATOR_DB_USER, RUNTIME_DB_USER):
        asyncio.run(
            _admin(
                server_url, f'DO $$ BEGIN CREATE ROLE "{role}" LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$'
            )
        )
    asyncio.run(_admin(url, _roles_sql(name)))
    _alembic_through_the_connector(fake, name, "upgrade", "head")
    return name


def _alembic_through_the_connector(fake: FakeCloudSQL, database: str, *args: str) -> str:
    environment = {
        "DATABASE_URL": "",
        "INSTANCE_CONNECTION_NAME": fake.connection_name,
        "DB_IAM_USER": MIGRATOR,
        "DB_NAME": database,
        "CLOUD_SQL_ADMIN_ENDPOINT": fake.url,
        "GOOGLE_APPLICATION_CREDENTIALS": str(fake.key_file(MIGRATOR)),
    }
    return run_alembic_env(environment, *args)


def run_alembic_env(environment: dict[str, str], *args: str) -> str:
    env = os.environ | environment
    env.pop("DATABASE_URL")
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@pytest.fixture
async def app_client(
    fake: FakeCloudSQL, iam_database: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """A fresh app (so a fresh connector) configured for Cloud SQL, as the runtime identity."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(fake.key_file(RUNTIME)))
    settings = Settings(
        database_url=None,
        instance_connection_name=fake.connection_name,
        db_iam_user=RUNTIME,
        db_name=iam_database,
        cloud_sql_admin_endpoint=fake.url,
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client, app
    await app.state.database.dispose()
    fake.admin_status, fake.token_error, fake.refuse_login = 200, False, False
    fake.cert_lifetime = datetime.timedelta(hours=1)


async def _backend_users(server_url: str, database: str) -> set[str]:
    query = "SELECT usename FROM pg_stat_activity WHERE datname = $1 AND application_name = 'projects-api'"
    return {row["usename"] for row in await fetch(server_url, query, database)}


async def test_crud_runs_as_the_iam_user_with_no_password(
    app_client: tuple[httpx.AsyncClient, Any], fake: FakeCloudSQL, server_url: str, iam_database: str
) -> None:
    client, _ = app_client
    before = len(fake.connections)
    created = await client.post("/v1/projects", json={"name": unique("iam")})
    assert created.status_code == 201
    url = created.headers["location"]
    task = await client.post(f"{url}/tasks", json={"title": "via the connector"})
    assert task.status_code == 201
    patched = await client.patch(url, json={"description": "x"}, headers={"If-Match": created.headers["etag"]})
    assert patched.status_code == 200
    assert (await client.get(task.headers["location"])).status_code == 200
    assert (await client.delete(url)).status_code == 204
    assert await _backend_users(server_url, iam_database) == {RUNTIME_DB_USER}  # what PostgreSQL saw
    mine = fake.connections[before:]
    assert mine, "the app did not connect through the proxy"
    assert {(c.user, c.principal, c.database) for c in mine} == {(RUNTIME_DB_USER, RUNTIME, iam_database)}
    assert not any(connection.password_sent for connection in mine)


async def test_readyz_checks_the_instance(app_client: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = app_client
    assert (await client.get("/readyz")).status_code == 200


async def test_concurrent_first_requests_share_one_certificate(
    app_client: tuple[httpx.AsyncClient, Any], fake: FakeCloudSQL
) -> None:
    client, _ = app_client
    certificates, connections = len(fake.certificates), len(fake.connections)
    project = (await client.post("/v1/projects", json={"name": unique("share")})).json()
    responses = await asyncio.gather(*(client.get(f"/v1/projects/{project['id']}/tasks") for _ in range(12)))
    assert {response.status_code for response in responses} == {200}
    assert len(fake.certificates) - certificates == 1
    used = {connection.certificate_serial for connection in fake.connections[connections:]}
    assert len(fake.connections) - connections > 1, "expected several pooled connections"
    assert used == {fake.certificates[-1].serial_number}


async def test_an_expired_certificate_is_refreshed(
    app_client: tuple[httpx.AsyncClient, Any], fake: FakeCloudSQL
) -> None:
    client, app = app_client
    fake.cert_lifetime = datetime.timedelta(seconds=2)
    assert (await client.get("/v1/projects")).status_code == 200
    first = fake.certificates[-1]
    await asyncio.sleep(2.5)  # the certificate has expired; the proxy would refuse it now
    async with app.state.database.connection():  # holds the pooled connection: the request opens a new one
        assert (await client.get("/v1/projects")).status_code == 200
    second = fake.certificates[-1]
    assert second.serial_number != first.serial_number
    assert fake.connections[-1].certificate_serial == second.serial_number
    assert second.not_valid_after_utc > first.not_valid_after_utc + datetime.timedelta(seconds=1)  # issued later


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ("admin_outage", "Cloud SQL Admin API answered 503"),
        ("admin_forbidden", "Cloud SQL Admin API answered 403"),
        ("token_error", "could not obtain Google credentials"),
        ("refuse_login", "the database refused the login"),
    ],
)
async def test_a_connection_failure_is_a_503_then_the_next_request_recovers(
    app_client: tuple[httpx.AsyncClient, Any],
    fake: FakeCloudSQL,
    caplog: pytest.LogCaptureFixture,
    failure: str,
    reason: str,
) -> None:
    client, _ = app_client
    if failure == "admin_outage":
        fake.admin_status = 503
    elif failure == "admin_forbidden":
        fake.admin_status = 403
    else:
        setattr(fake, failure, True)
    with caplog.at_level(logging.ERROR, logger="app.core.database"):
        response = await client.get("/v1/projects")
    body = assert_problem(response, 503)
    assert reason in body["detail"]
    assert response.headers["retry-after"] == "5"
    assert "ya29" not in response.text and "BEGIN" not in response.text  # no token, no key material
    logged = [record.getMessage() for record in caplog.records if record.name == "app.core.database"]
    assert len(logged) == 1
    assert fake.connection_name in logged[0] and RUNTIME in logged[0] and reason in logged[0]
    fake.admin_status, fake.token_error, fake.refuse_login = 200, False, False
    assert (await client.get("/v1/projects")).status_code == 200  # no stale failure cached


def test_the_proxy_refuses_a_certificate_it_did_not_issue(fake: FakeCloudSQL) -> None:
    stranger = CertificateAuthority()  # a self-made CA: its certificate is valid, but not ours
    folder = Path(fake._folder.name)
    (folder / "stranger.pem").write_bytes(stranger.certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "stranger.key").write_bytes(
        stranger.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(folder / "stranger.pem", folder / "stranger.key")
    before = len(fake.connections)
    try:
        with socket.create_connection((fake.address, PROXY_PORT), timeout=5) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(b"\x00\x00\x00\x08\x00\x03\x00\x00")  # a startup message
            answer = tls.recv(1)
    except (ssl.SSLError, ConnectionError):  # TLS 1.3: the refusal arrives as an alert after the handshake
        answer = b""
    assert answer == b"", "the proxy answered a stranger"
    assert len(fake.connections) == before, "a stranger reached the login step"


def test_alembic_ran_through_the_connector_as_the_migrator(
    fake: FakeCloudSQL, iam_database: str, server_url: str
) -> None:
    output = _alembic_through_the_connector(fake, iam_database, "check")
    assert "No new upgrade operations detected" in output
    owners = asyncio.run(_table_owners(with_database(server_url, iam_database)))
    assert owners == dict.fromkeys(["alembic_version", *SQLModel.metadata.tables], MIGRATOR_DB_USER)


async def _table_owners(url: str) -> dict[str, str]:
    rows = await fetch(url, "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")
    return {row["tablename"]: row["tableowner"] for row in rows}


async def test_the_runtime_user_can_write_rows_but_not_change_the_schema(iam_database: str, server_url: str) -> None:
    url = make_url(with_database(server_url, iam_database)).set(username=RUNTIME_DB_USER)
    connection = await asyncpg.connect(libpq_url(url.render_as_string(False)))
    try:
        await connection.execute("INSERT INTO projects (name) VALUES ($1)", unique("runtime"))
        for ddl in ["CREATE TABLE intruder (id int)", "DROP TABLE tasks", "ALTER TABLE projects ADD COLUMN x int"]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(ddl)
    finally:
        await connection.close()
