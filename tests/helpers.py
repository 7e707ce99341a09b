"""Assertions and database look-ups shared by the test modules."""

import os
import shutil
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.conftest import ROOT, _libpq_url


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


def uv() -> str:
    """The uv that made .venv: the Makefile exports it as UV; else the one on PATH or fetched into .uv/."""
    found = os.environ.get("UV") or shutil.which("uv") or str(ROOT / ".uv" / "bin" / "uv")
    assert Path(found).is_file(), f"no uv at {found}: run the tests with `make test`, which installs it"
    return found
