"""What the test modules share: names, database look-ups, the alembic CLI and problem assertions."""

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
MISSING_ID = "0b7e6f0e-0000-4000-8000-000000000000"  # a well-formed id that no row has


def unique(label: str = "item") -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def unused_name(root: Path = ROOT) -> str:
    """A service name that appears nowhere in the checkout, so nothing of a rename to it can be mistaken."""
    import rename  # scripts/ is not a package; conftest.py puts it on sys.path

    text = "\n".join(path.read_text(errors="replace") for path in rename.text_files(root))
    while (name := f"zeta-{uuid.uuid4().hex[:8]}") in text:
        pass
    return name


def libpq_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


def with_database(sqlalchemy_url: str, database: str) -> str:
    return make_url(sqlalchemy_url).set(drivername="postgresql+asyncpg", database=database).render_as_string(False)


def run_alembic(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as CI and Cloud Build run it."""
    env = os.environ | {"DATABASE_URL": database_url}
    env.pop("INSTANCE_CONNECTION_NAME", None)
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )


async def admin(server_url: str, statement: str) -> None:
    """One statement on a connection of the test's own (CREATE DATABASE, roles: what must not be in a transaction)."""
    connection = await asyncpg.connect(libpq_url(server_url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def fetch(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    """Rows of one query, on a connection of the test's own, beside the app's pool."""
    connection = await asyncpg.connect(libpq_url(url))
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def fetchval(url: str, query: str, *args: object) -> Any:
    rows = await fetch(url, query, *args)
    return rows[0][0] if rows else None


async def public_tables(url: str) -> set[str]:
    return {row["tablename"] for row in await fetch(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Every error is an RFC 9457 document whose `status` is the HTTP status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    assert body["instance"] == response.request.url.path
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def error_locations(body: dict[str, Any]) -> list[list[Any]]:
    return [error["loc"] for error in body["errors"]]


def migrations_with_revision(folder: Path, upgrade: str) -> Path:
    """A copy of alembic.ini and migrations/ with one more revision after head; its alembic.ini.

    `upgrade` is the body of the new revision's upgrade() (with `op` and `sa` imported).
    """
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()
    shutil.copy(ROOT / "alembic.ini", folder / "alembic.ini")
    shutil.copytree(ROOT / "migrations", folder / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    body = textwrap.indent(textwrap.dedent(upgrade).strip(), "    ")
    (folder / "migrations" / "versions" / "99990101_9999_later.py").write_text(
        f'"""a later revision"""\n\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f'revision = "9999"\ndown_revision = "{head}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        f"def upgrade() -> None:\n{body}\n\n\ndef downgrade() -> None:\n    pass\n"
    )
    return folder / "alembic.ini"


def uv() -> str:
    """The uv that made .venv: the Makefile exports it as UV; else the one on PATH or fetched into .uv/."""
    found = os.environ.get("UV") or shutil.which("uv") or str(ROOT / ".uv" / "bin" / "uv")
    assert Path(found).is_file(), f"no uv at {found}: run the tests with `make test`, which installs it"
    return found


def asgi_client(app: Any, *, timeout: float = 5) -> httpx.AsyncClient:
    """An HTTP client that calls the app in-process; an app's exception is its 500, as served."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=timeout)
