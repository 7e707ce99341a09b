"""Alembic, async, on the app's own settings and Database (so Cloud SQL with IAM works the same way)."""

import asyncio
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

import app.api  # noqa: F401  (imports every resource, which registers its tables on SQLModel.metadata)
from app.core.database import Database
from app.core.settings import get_settings

if context.config.config_file_name is not None and context.config.attributes.get("configure_logging", True):
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def _render_item(kind: str, item: Any, autogen_context: Any) -> str | Literal[False]:
    """Write SQLModel's AutoString as plain sa.String, so migrations need no sqlmodel import."""
    if kind == "type" and isinstance(item, AutoString):
        return f"sa.String(length={item.length})" if item.length else "sa.String()"
    return False


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection, target_metadata=target_metadata, compare_type=True, render_item=_render_item
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    database = Database(get_settings())  # the app's own path: plain URL or Cloud SQL + IAM
    try:
        engine = await database.engine()
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
    finally:
        await database.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")
asyncio.run(_run_online())
