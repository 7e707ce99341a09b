"""The migrations build exactly the models' schema, and really reverse; and how they meet live traffic.

They drive the real alembic CLI and check the catalog between steps."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg
from sqlmodel import SQLModel

import app.api  # noqa: F401  (imports every resource, which registers its tables)
from tests.helpers import ROOT, fetch, libpq_url, migrations_with_revision, public_tables, run_alembic


def test_upgrade_check_downgrade_upgrade_round_trip(create_database: Callable[[], str]) -> None:
    url = create_database()
    run_alembic(url, "upgrade", "head")
    assert asyncio.run(public_tables(url)) == {"alembic_version", *SQLModel.metadata.tables}  # every model, no other
    assert "No new upgrade operations detected" in run_alembic(url, "check").stdout
    run_alembic(url, "downgrade", "base")
    assert asyncio.run(public_tables(url)) == {"alembic_version"}
    run_alembic(url, "upgrade", "head")
    assert "No new upgrade operations detected" in run_alembic(url, "check").stdout


def _alembic(config: Path, url: str, **env: str) -> subprocess.Popen[str]:
    environment = os.environ | {"DATABASE_URL": url, "PYTHONPATH": str(ROOT)} | env
    environment.pop("INSTANCE_CONNECTION_NAME", None)
    command = [sys.executable, "-m", "alembic", "-c", str(config), "upgrade", "head"]
    return subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_migrations_run_without_the_services_statement_timeout(
    create_database: Callable[[], str], tmp_path: Path
) -> None:
    url = create_database()
    config = migrations_with_revision(tmp_path, 'op.execute("SELECT pg_sleep(0.5)")  # an index build, say')
    migration = _alembic(config, url, DB_STATEMENT_TIMEOUT_MS="100")
    _, errors = migration.communicate(timeout=60)
    assert migration.returncode == 0, errors


def test_a_migration_waiting_for_a_lock_gives_way_to_traffic_then_retries(
    create_database: Callable[[], str], tmp_path: Path
) -> None:
    """A long transaction holds a lock; the migration's ALTER queues for it, and every query on the
    table queues behind the ALTER. lock_timeout ends that wait; the revision is retried later."""
    url = create_database()
    run_alembic(url, "upgrade", "head")
    config = migrations_with_revision(tmp_path, 'op.add_column("projects", sa.Column("note", sa.Text()))')
    errors = asyncio.run(_migrate_behind_a_long_transaction(url, config))
    assert "a lock was not granted within 2s (attempt 1 of 5): retrying" in errors
    columns = asyncio.run(
        fetch(url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'projects'")
    )
    assert "note" in {row["column_name"] for row in columns}


async def _migrate_behind_a_long_transaction(url: str, config: Path) -> str:
    holder = await asyncpg.connect(libpq_url(url))
    reader = await asyncpg.connect(libpq_url(url))
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE projects IN ACCESS SHARE MODE")  # a long read, say
        migration = _alembic(config, url)
        waiting = 0
        for _ in range(200):  # until the ALTER waits for its lock
            waiting = await reader.fetchval(
                "SELECT count(*) FROM pg_locks WHERE relation = 'projects'::regclass AND NOT granted"
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting, "the migration never waited for its lock"
        # Traffic queued behind the ALTER is served once the ALTER gives up, the lock still held.
        await asyncio.wait_for(reader.fetch("SELECT * FROM projects LIMIT 1"), timeout=10)
        assert migration.poll() is None, "the migration gave up instead of retrying"
        await transaction.commit()
        _, errors = await asyncio.to_thread(migration.communicate, timeout=60)
    finally:
        await holder.close()
        await reader.close()
    assert migration.returncode == 0, errors
    return errors
