"""Cloud SQL through the REAL connector library, against the offline fake in cloud_sql_fake.py.

The runtime and migrator identities reach the app through Application Default Credentials
(service-account key files whose token endpoint is the fake), as on Google Cloud.
"""

import asyncio
import datetime
import logging
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from sqlmodel import SQLModel

from app.api import create_app
from app.core.settings import Settings
from tests import cloud_sql_roles
from tests.cloud_sql_fake import PROXY_PORT, CertificateAuthority, FakeCloudSQL
from tests.cloud_sql_roles import CloudSqlShape
from tests.helpers import ROOT, asgi_client, assert_problem, fetch, unique


@pytest.fixture(scope="module")
def shape(server_url: str) -> Iterator[CloudSqlShape]:
    """Cloud SQL's roles (tests/cloud_sql_roles.py): the IAM users, the admin, the owner role."""
    with cloud_sql_roles.built(server_url) as built:
        yield built


@pytest.fixture(scope="module")
def fake(server_url: str) -> Iterator[FakeCloudSQL]:
    kind, _, address = cloud_sql_roles.upstream(server_url).partition(":")
    upstream = ("unix", address) if kind == "unix" else ("tcp", *address.rsplit(":", 1))
    running = FakeCloudSQL(upstream=upstream).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def iam_database(shape: CloudSqlShape, fake: FakeCloudSQL, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database set up as on Cloud SQL: roles.sql as the admin, migrations by the migrator."""
    granting = cloud_sql_roles.grant_roles(shape, tmp_path_factory.mktemp("grant"))
    assert granting.returncode == 0, granting.stdout + granting.stderr
    _alembic_through_the_connector(fake, shape, "upgrade", "head")
    return shape.database


def _alembic_through_the_connector(fake: FakeCloudSQL, shape: CloudSqlShape, *args: str) -> str:
    environment = {
        "DATABASE_URL": "",
        "INSTANCE_CONNECTION_NAME": fake.connection_name,
        "DB_IAM_USER": shape.migrator_sa,
        "DB_NAME": shape.database,
        "CLOUD_SQL_ADMIN_ENDPOINT": fake.url,
        "GOOGLE_APPLICATION_CREDENTIALS": str(fake.key_file(shape.migrator_sa)),
        "SERVICE_NAME": shape.service,
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


def _cloud_sql_app(fake: FakeCloudSQL, shape: CloudSqlShape, database: str) -> FastAPI:
    """A fresh app (so a fresh connector) configured for the fake instance, as the runtime identity."""
    settings = Settings(
        database_url=None,
        instance_connection_name=fake.connection_name,
        db_iam_user=shape.runtime_sa,
        db_name=database,
        cloud_sql_admin_endpoint=fake.url,
    )
    return create_app(settings)


@pytest.fixture
async def app_client(
    fake: FakeCloudSQL, shape: CloudSqlShape, iam_database: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """A fresh app (so a fresh connector) configured for Cloud SQL, as the runtime identity."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(fake.key_file(shape.runtime_sa)))
    app = _cloud_sql_app(fake, shape, iam_database)
    async with asgi_client(app) as client:
        yield client, app
    await app.state.database.dispose()
    fake.admin_status, fake.token_error, fake.refuse_login = 200, False, False
    fake.cert_lifetime = datetime.timedelta(hours=1)


async def _backend_users(server_url: str, database: str) -> set[str]:
    query = "SELECT usename FROM pg_stat_activity WHERE datname = $1 AND application_name = 'projects-api'"
    return {row["usename"] for row in await fetch(server_url, query, database)}


async def test_crud_runs_as_the_iam_user_with_no_password(
    app_client: tuple[httpx.AsyncClient, Any], fake: FakeCloudSQL, server_url: str, shape: CloudSqlShape
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
    assert await _backend_users(server_url, shape.database) == {shape.runtime}  # what PostgreSQL saw
    mine = fake.connections[before:]
    assert mine, "the app did not connect through the proxy"
    assert {(c.user, c.principal, c.database) for c in mine} == {(shape.runtime, shape.runtime_sa, shape.database)}
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
    shape: CloudSqlShape,
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
    with caplog.at_level(logging.ERROR, logger="app.core.db.database"):
        response = await client.get("/v1/projects")
    body = assert_problem(response, 503)
    assert reason in body["detail"]
    assert response.headers["retry-after"] == "5"
    assert "ya29" not in response.text and "BEGIN" not in response.text  # no token, no key material
    logged = [record.getMessage() for record in caplog.records if record.name == "app.core.db.database"]
    assert len(logged) == 1
    assert fake.connection_name in logged[0] and shape.runtime_sa in logged[0] and reason in logged[0]
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
    fake: FakeCloudSQL, shape: CloudSqlShape, iam_database: str
) -> None:
    output = _alembic_through_the_connector(fake, shape, "check")
    assert "No new upgrade operations detected" in output
    rows = asyncio.run(
        fetch(shape.url(shape.admin), "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")
    )
    owners = {row["tablename"]: row["tableowner"] for row in rows}
    assert owners == dict.fromkeys(["alembic_version", *SQLModel.metadata.tables], shape.owner)


async def test_no_credentials_at_all_is_a_503_that_says_so(
    fake: FakeCloudSQL, shape: CloudSqlShape, iam_database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without Application Default Credentials the connector cannot even be made: still the 503."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    app = _cloud_sql_app(fake, shape, iam_database)
    async with asgi_client(app) as client:
        body = assert_problem(await client.get("/v1/projects"), 503)
        assert "could not obtain Google credentials" in body["detail"]
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(fake.key_file(shape.runtime_sa)))
        assert (await client.get("/v1/projects")).status_code == 200  # no stale failure cached
    await app.state.database.dispose()
