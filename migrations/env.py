"""Alembic, async, on the app's own settings and connections (so Cloud SQL with IAM works the same way).

Each migration connection, once open:
- drops the service's statement timeout (an index build or a table rewrite may take minutes);
- sets a lock timeout, so a migration never waits long behind a running transaction while holding
  up the live traffic queued behind its own lock request; a migration that times out is rolled
  back and retried a few times (each revision runs in its own transaction), then fails;
- becomes the schema's owner role (`SET ROLE`, `<SERVICE_NAME>-owner`, made by migrations/roles.sql)
  where roles.sql has set this database up, so every table has the same owner in every
  environment. Elsewhere (locally, in the tests) migrations run as the connecting user.
"""

import asyncio
import logging
import random
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

import app.api  # noqa: F401  (imports every resource, which registers its tables on SQLModel.metadata)
from app.core.db.database import migration_engine
from app.core.db.failures import causes
from app.core.settings import get_settings

if context.config.config_file_name is not None and context.config.attributes.get("configure_logging", True):
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

logger = logging.getLogger("alembic.env")
target_metadata = SQLModel.metadata

# A DDL statement waits at most this long for its lock. While it waits, every query on that table
# queues behind it; the service's own statements give up after DB_STATEMENT_TIMEOUT_MS (5 s), so
# the wait must stay well under that.
LOCK_TIMEOUT = "2s"
ATTEMPTS = 5  # a revision whose lock wait timed out is retried after 1-2, 2-4, 4-8 and 8-16 s
BACKOFF_S = 2.0
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout

# Default privileges (migrations/roles.sql) give the runtime user rows of every new table; Alembic's
# own table is not the runtime's business. Revoke whatever anyone but the owner holds on it.
KEEP_VERSION_TABLE_PRIVATE = """
DO $$
DECLARE grantee text;
BEGIN
    IF to_regclass('alembic_version') IS NULL THEN
        RETURN;
    END IF;
    FOR grantee IN
        SELECT DISTINCT CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(acl.grantee)) END
        FROM pg_class AS c, aclexplode(c.relacl) AS acl
        WHERE c.oid = 'alembic_version'::regclass AND acl.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE ALL ON alembic_version FROM %s', grantee);
    END LOOP;
END $$
"""


def _render_item(kind: str, item: Any, autogen_context: Any) -> str | Literal[False]:
    """Write SQLModel's AutoString as plain sa.String, so migrations need no sqlmodel import."""
    if kind == "type" and isinstance(item, AutoString):
        return f"sa.String(length={item.length})" if item.length else "sa.String()"
    return False


def _prepare_session(connection: Connection, owner: str) -> bool:
    """Session settings for migrating; True when the session now acts as the owner role."""
    connection.execute(text("SET statement_timeout = 0"))
    connection.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
    # The owner role is instance-wide: it owns this database's schema only where roles.sql ran here.
    owns_schema = connection.execute(
        text("SELECT has_schema_privilege(oid, 'public', 'CREATE') FROM pg_roles WHERE rolname = :owner"),
        {"owner": owner},
    ).scalar()
    if owns_schema:
        user = connection.execute(text("SELECT current_user")).scalar()
        try:
            connection.execute(text("SELECT set_config('role', :owner, false)"), {"owner": owner})
        except DBAPIError as error:
            raise SystemExit(
                f"the database user {user} may not act as {owner}, which owns the schema: "
                f"run migrations/roles.sql with -v migrator={user} (see README, Deploy)"
            ) from error
        logger.info("migrating as %s (logged in as %s)", owner, user)
    connection.commit()  # session settings outlive this transaction; SET inside a rollback would not
    return bool(owns_schema)


def _migrate(connection: Connection, owner: str) -> None:
    as_owner = _prepare_session(connection, owner)
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        transaction_per_migration=True,  # a lock timeout undoes one revision, which the retry resumes
    )
    with context.begin_transaction():
        context.run_migrations()
    if as_owner:
        connection.execute(text(KEEP_VERSION_TABLE_PRIVATE))
        connection.commit()


def _lock_timed_out(error: BaseException) -> bool:
    return any(getattr(cause, "sqlstate", None) == LOCK_NOT_AVAILABLE for cause in causes(error))


async def _run_online() -> None:
    settings = get_settings()
    owner = f"{settings.service_name}-owner"
    async with migration_engine(settings) as engine:  # the app's own path: plain URL or Cloud SQL + IAM
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with engine.connect() as connection:
                    await connection.run_sync(_migrate, owner)
                return
            except DBAPIError as error:
                if attempt == ATTEMPTS or not _lock_timed_out(error):
                    raise
                delay = BACKOFF_S * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter)
                logger.warning(
                    "a lock was not granted within %s (attempt %d of %d): retrying in %.1f s",
                    LOCK_TIMEOUT,
                    attempt,
                    ATTEMPTS,
                    delay,
                )
                await asyncio.sleep(delay)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")
asyncio.run(_run_online())
