"""The migrations build exactly the models' schema, and really reverse.

A plain (sync) test: it drives the real alembic CLI and checks the catalog between steps."""

import asyncio
from collections.abc import Callable

from sqlmodel import SQLModel

import app.api  # noqa: F401  (imports every resource, which registers its tables)
from tests.helpers import public_tables, run_alembic


def test_upgrade_check_downgrade_upgrade_round_trip(create_database: Callable[[], str]) -> None:
    url = create_database()
    run_alembic(url, "upgrade", "head")
    assert asyncio.run(public_tables(url)) == {"alembic_version", *SQLModel.metadata.tables}  # every model, no other
    assert "No new upgrade operations detected" in run_alembic(url, "check").stdout
    run_alembic(url, "downgrade", "base")
    assert asyncio.run(public_tables(url)) == {"alembic_version"}
    run_alembic(url, "upgrade", "head")
    assert "No new upgrade operations detected" in run_alembic(url, "check").stdout
