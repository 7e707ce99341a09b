"""Session state a request left on a pooled connection, where the next request would inherit it.

Connections are not reset on release (a reset would cost every request a round trip), so a request
must leave nothing behind: `SET LOCAL`, not `SET`; `pg_advisory_xact_lock`, not `pg_advisory_lock`;
temporary tables `ON COMMIT DROP`, inside `database.transaction()`; no `LISTEN`, `PREPARE` or
`DECLARE ... WITH HOLD`. conftest.py checks the suite's app after every test that used it.
"""

import pytest
from fastapi import FastAPI

# One round trip per idle connection. A transaction-scoped lock, setting or table is gone once its
# transaction ends, so whatever of these an idle connection holds is the session's. A setting put
# back to its start-up value counts as reset: asyncpg turns `jit` off while it looks up a type, and
# back with set_config(..., false).
_LEFT_BEHIND = """
SELECT ARRAY(
    SELECT 'SET ' || name FROM pg_settings WHERE source = 'session' AND setting IS DISTINCT FROM reset_val
    UNION ALL
    SELECT 'session advisory lock ' || objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
    UNION ALL
    SELECT 'LISTEN ' || channel FROM pg_listening_channels() AS channel
    UNION ALL
    SELECT 'temporary table ' || relname FROM pg_class
    WHERE relnamespace = pg_my_temp_schema() AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
    UNION ALL
    SELECT 'PREPARE ' || name FROM pg_prepared_statements WHERE from_sql
    UNION ALL
    SELECT 'cursor WITH HOLD ' || name FROM pg_cursors WHERE is_holdable
)
"""


async def session_state_left(app: FastAPI) -> list[str]:
    """What the app's idle pooled connections carry beyond their start-up settings."""
    pool = app.state.database.pool.result()
    if pool is None:
        return []
    left: list[str] = []
    for connection in pool.idle_connections():
        left += await connection.fetchval(_LEFT_BEHIND)
    return left


async def assert_no_session_state(app: FastAPI) -> None:
    """Fail when a request left session state; the pool is then closed, so the next test starts clean."""
    left = await session_state_left(app)
    if left:
        await app.state.database.dispose()
        pytest.fail(
            f"a request left session state on a pooled connection, for the next request to inherit: "
            f"{', '.join(sorted(set(left)))}. Use SET LOCAL, pg_advisory_xact_lock and temporary tables "
            f"ON COMMIT DROP, inside database.transaction() (README, 'How the pool behaves').",
            pytrace=False,
        )
