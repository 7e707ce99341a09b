"""The service through a transaction pooler: the suite's HTTP tests of projects, tasks, pagination
and idempotency, run again here with the app's DATABASE_URL pointing at a local PgBouncer in
transaction mode (DB_TRANSACTION_POOLING=true), on the suite's database.

PgBouncer is the Debian package `pgbouncer` (CI runs on a machine that has it); where it is not
installed the module is skipped, with a message saying so. Its server pool is 2 connections:
any state asyncpg kept between transactions (a prepared statement) would meet a server session
that does not have it. Without the setting the service cannot even log in through it.
"""

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from app.api import create_app
from app.core.settings import Settings
from tests import test_idempotency, test_pagination, test_projects, test_tasks
from tests.function_server import free_port
from tests.helpers import asgi_client, assert_problem, unique

PGBOUNCER = shutil.which("pgbouncer")
if PGBOUNCER is None:
    pytest.skip(
        "pgbouncer is not installed (Debian: apt-get install pgbouncer): the transaction-pooling tests did not run",
        allow_module_level=True,
    )

SERVER_POOL_SIZE = 2  # server connections PgBouncer keeps per database and user

# The key HTTP tests, collected again in this module, where `client` is served through PgBouncer
# (the tests that make an app of their own, not through the pooler, are left out).
OWN_APP = {
    "test_keys_are_scoped_per_principal",
    "test_a_table_sql_must_quote_stores_only_its_public_columns_and_replays_them",
    "test_a_key_reused_on_an_endpoint_of_another_table_is_422",
}
for module in (test_projects, test_tasks, test_pagination, test_idempotency):
    globals().update(
        {name: test for name, test in vars(module).items() if name.startswith("test_") and name not in OWN_APP}
    )


def _pgbouncer_config(folder: Path, database_url: str, port: int) -> Path:
    url = make_url(database_url)
    socket_dir = url.query.get("host")
    host = socket_dir if isinstance(socket_dir, str) else (url.host or "127.0.0.1")
    user = url.username or "postgres"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    config = folder / "pgbouncer.ini"
    config.write_text(
        f"[databases]\n* = host={host} port={url.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {SERVER_POOL_SIZE}\nmax_client_conn = 200\n"
    )
    return config


@pytest.fixture(scope="module")
def pooler_url(database_url: str) -> Iterator[str]:
    """The suite's database, through a PgBouncer in transaction mode on a free loopback port."""
    assert PGBOUNCER is not None
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pytest-pgbouncer-") as folder:
        config = _pgbouncer_config(Path(folder), database_url, port)
        command = [PGBOUNCER, str(config)]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root: run it as the server's own user
            owner = _server_user(database_url)
            command[1:1] = ["-u", owner.pw_name]
            for path in (Path(folder), *Path(folder).iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for_port(port, process)
            url = make_url(database_url).set(host="127.0.0.1", port=port, query={})
            yield url.render_as_string(hide_password=False)
        finally:
            process.terminate()
            process.wait(timeout=10)


def _server_user(database_url: str) -> pwd.struct_passwd:
    """Who may open the server's Unix socket (the owner of its folder), or nobody for TCP."""
    socket_dir = make_url(database_url).query.get("host")
    if isinstance(socket_dir, str) and socket_dir.startswith("/"):
        return pwd.getpwuid(os.stat(socket_dir).st_uid)
    return pwd.getpwnam("nobody")


def _wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {process.stdout.read() if process.stdout else ''}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError("pgbouncer did not start listening")


@pytest.fixture(scope="module")
async def pooled_app(pooler_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(Settings(database_url=pooler_url, db_transaction_pooling=True))
    yield application
    await application.state.database.dispose()


@pytest.fixture(scope="module")
async def client(pooled_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Overrides the suite's client for every test collected in this module."""
    async with asgi_client(pooled_app) as http:
        yield http


async def test_concurrent_transactions_share_two_server_connections(client: httpx.AsyncClient) -> None:
    """40 requests at once on the app's pool, interleaved by PgBouncer over 2 server connections."""
    project = (await client.post("/v1/projects", json={"name": unique("pooled")})).json()
    path = f"/v1/projects/{project['id']}/tasks"
    writes = await asyncio.gather(*(client.post(path, json={"title": f"t{n}"}) for n in range(20)))
    reads = await asyncio.gather(*(client.get(path, params={"limit": 5}) for _ in range(20)))
    assert [response.status_code for response in writes] == [201] * 20
    assert [response.status_code for response in reads] == [200] * 20
    listed = await client.get(path, params={"limit": 100})
    assert len(listed.json()["items"]) == 20


async def test_without_the_setting_the_pooler_refuses_the_session_settings(pooler_url: str) -> None:
    application = create_app(Settings(database_url=pooler_url))
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/v1/projects")
    await application.state.database.dispose()
    assert_problem(response, 503)  # "unsupported startup parameter: statement_timeout"
