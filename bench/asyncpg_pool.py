"""This service on asyncpg's own pool: the B of the pool's A/B (`BENCH_POOL=asyncpg make bench`, or
`make scale`). Served in place of `main.py` (`--source=bench/asyncpg_pool.py`), it puts
`asyncpg.create_pool(connect=..., reset=...)` behind the interface of `app/core/db/pool.py` and
then serves `main.py`'s `api`, so everything but the pool is the service as deployed.

It connects through the service's own `connect` (same settings, retries, Cloud SQL path) and its
`reset` does nothing: this service sends no reset on release either (nothing may be left on a
connection, see the README), so neither side pays a round trip the other does not. Production
code has no switch for it: the pool is chosen by what the numbers in docs/benchmarks.md say.
"""

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.core.db import database
from app.core.db.pool import PoolClosed, PoolTimeout


async def _no_reset(connection: asyncpg.Connection) -> None:
    """asyncpg's default reset is a round trip per release (RESET ALL, UNLISTEN *, ...)."""


class AsyncpgPool:
    """`asyncpg.Pool` with `app/core/db/pool.Pool`'s interface, sized from the same settings."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        max_size: int,
        min_idle: int,
        idle_s: float,
        timeout_s: float,
        **_: float,  # recycle_s, ping_after_s: asyncpg's pool has neither an age limit nor an idle ping
    ) -> None:
        async def connect_one(*_: Any, **__: Any) -> asyncpg.Connection:
            return await connect()

        self._pool = asyncpg.create_pool(
            connect=connect_one,
            reset=_no_reset,
            min_size=min_idle,
            max_size=max_size,
            max_inactive_connection_lifetime=idle_s,
        )
        self._timeout_s = timeout_s
        self._started = False
        self._closed = False
        self._releasing: set[asyncio.Task[None]] = set()

    @property
    def size(self) -> int:
        return self._pool.get_size()

    def idle_connections(self) -> list[asyncpg.Connection]:
        return []  # asyncpg keeps them to itself

    async def acquire(self) -> asyncpg.Connection:
        if self._closed:
            raise PoolClosed("the connection pool is closed")
        if not self._started:  # the first acquire is the service's login check, alone
            await self._pool
            self._started = True
        try:
            connection: asyncpg.Connection = await self._pool.acquire(timeout=self._timeout_s)
        except TimeoutError:
            raise PoolTimeout(f"no database connection became free in {self._timeout_s:g} s") from None
        return connection

    def release(self, connection: asyncpg.Connection, *, discard: bool = False) -> None:
        """The service releases without awaiting: asyncpg's release is a coroutine, so it runs as a task."""
        if discard:
            connection.terminate()
        task = asyncio.ensure_future(self._pool.release(connection))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def close(self) -> None:
        self._closed = True
        await asyncio.gather(*self._releasing, return_exceptions=True)
        if self._started:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=5)
            except TimeoutError:
                self._pool.terminate()


database.Pool = AsyncpgPool  # type: ignore[misc,assignment]

from main import api  # noqa: E402, F401
