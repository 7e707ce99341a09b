"""Assertions and database look-ups shared by the test modules."""

import shutil
import textwrap
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.conftest import _libpq_url


async def fetch(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    """Rows of one query, on a connection of the test's own, beside the app's pool."""
    connection = await asyncpg.connect(_libpq_url(url))
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

    from tests.conftest import ROOT

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
