"""The pool honours the settings, hands connections over fairly, keeps no spare ones, and waits for
one of its own, or for a free slot, when PostgreSQL has none."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from app.core.db import pool as pool_module
from app.core.db.database import Database
from app.core.db.failures import DatabaseUnavailable
from app.core.db.pool import Pool, PoolClosed, PoolTimeout
from app.core.settings import Settings
from tests.helpers import fetchval, libpq_url


async def test_connections_carry_the_statement_timeout_and_the_service_name(database_url: str) -> None:
    database = Database(Settings(database_url=database_url, db_statement_timeout_ms=1234))
    try:
        async with database.connection() as connection:
            assert await connection.fetchval("SHOW statement_timeout") == "1234ms"
            assert await connection.fetchval("SHOW application_name") == "projects-api"
            assert await connection.fetchval("SHOW idle_session_timeout") == "1min"
    finally:
        await database.dispose()


async def test_a_statement_over_the_timeout_is_cancelled_by_the_server(database_url: str) -> None:
    database = Database(Settings(database_url=database_url, db_statement_timeout_ms=100))
    try:
        async with database.connection() as connection:
            with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
                await connection.execute("SELECT pg_sleep(2)")
            assert await connection.fetchval("SELECT 1") == 1  # the connection itself is fine
    finally:
        await database.dispose()


async def test_the_pool_is_made_once_and_only_when_first_used(database_url: str) -> None:
    database = Database(Settings(database_url=database_url))
    assert database.pool.result() is None
    pools = await asyncio.gather(*(database.pool() for _ in range(10)))
    assert all(pool is pools[0] for pool in pools)
    await database.dispose()
    assert database.pool.result() is None


async def test_a_disposed_database_reconnects_on_next_use(database_url: str) -> None:
    database = Database(Settings(database_url=database_url))
    async with database.connection() as connection:
        assert await connection.fetchval("SELECT 1") == 1
    await database.dispose()
    async with database.transaction() as connection:  # a new pool, not the disposed one
        assert await connection.fetchval("SELECT 2") == 2
    await database.dispose()


@pytest.fixture
async def connect(database_url: str) -> AsyncIterator[Callable[[], asyncpg.Connection]]:
    """A counting connect function for pools under test, with the connections' name to find them."""
    name = f"pool-{uuid.uuid4().hex[:8]}"
    opened: list[asyncpg.Connection] = []

    async def open_one() -> asyncpg.Connection:
        connection = await asyncpg.connect(libpq_url(database_url), server_settings={"application_name": name})
        opened.append(connection)
        return connection

    open_one.opened = opened  # type: ignore[attr-defined]
    yield open_one  # type: ignore[misc]
    for connection in opened:
        connection.terminate()


def _pool(connect: Callable[[], asyncpg.Connection], **overrides: float) -> Pool:
    settings: dict[str, float] = {
        "max_size": 3,
        "min_idle": 1,
        "idle_s": 60,
        "timeout_s": 2,
        "recycle_s": 1800,
        "ping_after_s": 60,
    } | overrides
    return Pool(connect, **settings)  # type: ignore[arg-type]


async def test_a_busy_pool_reuses_its_connections_instead_of_opening_new_ones(connect: Callable) -> None:  # type: ignore[type-arg]
    pool = _pool(connect)

    async def use() -> None:
        connection = await pool.acquire()
        await connection.fetchval("SELECT pg_sleep(0.001)")
        pool.release(connection)

    for _ in range(20):  # bursts of 10 concurrent requests on at most 3 connections
        await asyncio.gather(*(use() for _ in range(10)))
    assert len(connect.opened) == 3  # type: ignore[attr-defined]
    await pool.close()


async def test_waiters_are_served_first_come_first_served(connect: Callable) -> None:  # type: ignore[type-arg]
    pool = _pool(connect, max_size=1)
    held = await pool.acquire()
    served: list[int] = []

    async def waiter(number: int) -> None:
        connection = await pool.acquire()
        served.append(number)
        await asyncio.sleep(0)
        pool.release(connection)

    waiting = [asyncio.create_task(waiter(number)) for number in range(5)]
    await asyncio.sleep(0.01)  # all five are queued
    pool.release(held)
    late = asyncio.create_task(waiter(99))  # arrives as the connection is handed over: queues behind
    await asyncio.gather(*waiting, late)
    assert served == [0, 1, 2, 3, 4, 99]
    await pool.close()


async def test_a_connection_handed_over_as_the_deadline_passes_is_used_not_lost(connect: Callable) -> None:  # type: ignore[type-arg]
    """The release and the waiter's deadline fall due in one pass of the loop, the release first:
    the waiter is served the connection, and the deadline, finding it served, does nothing."""
    loop = asyncio.get_running_loop()
    failures: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: failures.append(context))
    try:
        pool = _pool(connect, max_size=1, timeout_s=0.2)
        held = await pool.acquire()
        waiting = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0)  # queued, its deadline set
        loop.call_later(0.1, pool.release, held)  # due before the deadline
        time.sleep(0.3)  # noqa: ASYNC251 - blocks the loop on purpose: the release, then the deadline, both due
        assert await waiting is held
        assert failures == []
        pool.release(held)
        await pool.close()
    finally:
        loop.set_exception_handler(None)


async def test_a_waiter_cancelled_after_a_connection_reached_it_gives_it_back(connect: Callable) -> None:  # type: ignore[type-arg]
    pool = _pool(connect, max_size=1)
    held = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.01)
    pool.release(held)  # handed over; the waiter has not run yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pool.idle_connections() == [held]  # back in the pool, not leaked
    assert await asyncio.wait_for(pool.acquire(), 1) is held
    pool.release(held)
    await pool.close()


async def test_a_full_pool_answers_pool_timeout_within_its_timeout(connect: Callable) -> None:  # type: ignore[type-arg]
    pool = _pool(connect, max_size=1, timeout_s=0.3)
    held = await pool.acquire()
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        await pool.acquire()
    assert 0.25 < time.monotonic() - started < 1.0
    pool.release(held)
    assert await pool.acquire() is held  # the timed-out waiter took nothing with it
    await pool.close()


async def test_spare_connections_are_closed_once_idle_down_to_min_idle(connect: Callable) -> None:  # type: ignore[type-arg]
    pool = _pool(connect, max_size=3, min_idle=1, idle_s=0.2)
    held = [await pool.acquire() for _ in range(3)]
    for connection in held:
        pool.release(connection)
    assert pool.size == 3
    await asyncio.sleep(0.3)
    connection = await pool.acquire()  # the pool tidies up as it is used
    assert pool.size == 1
    pool.release(connection)
    await pool.close()


async def test_a_broken_connection_is_discarded_and_its_slot_reused(connect: Callable) -> None:  # type: ignore[type-arg]
    pool = _pool(connect, max_size=1)
    first = await pool.acquire()
    pool.release(first, discard=True)
    second = await pool.acquire()
    assert second is not first and pool.size == 1
    pool.release(second)
    await pool.close()


async def test_a_connection_left_in_a_transaction_is_not_reused(connect: Callable) -> None:  # type: ignore[type-arg]
    pool = _pool(connect, max_size=1)
    first = await pool.acquire()
    await first.execute("BEGIN")
    pool.release(first)
    second = await pool.acquire()
    assert second is not first and not second.is_in_transaction()
    pool.release(second)
    await pool.close()


@pytest.fixture
async def capped(database_url: str, server_url: str) -> AsyncIterator[Callable]:  # type: ignore[type-arg]
    """A factory of counting connect functions, each logging in as a new role with a CONNECTION
    LIMIT: PostgreSQL refuses it past the limit with 'too many connections' (53300), as a full
    server refuses anyone."""
    roles: list[str] = []

    async def make(limit: int) -> Callable[[], Awaitable[asyncpg.Connection]]:
        role = f"capped_{uuid.uuid4().hex[:8]}"
        await fetchval(server_url, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT {limit}")
        roles.append(role)

        async def connect() -> asyncpg.Connection:
            connect.attempts += 1  # type: ignore[attr-defined]
            return await asyncpg.connect(libpq_url(database_url), user=role)

        connect.attempts = 0  # type: ignore[attr-defined]
        return connect

    yield make
    for role in roles:
        await fetchval(server_url, f"DROP ROLE IF EXISTS {role}")


async def test_when_the_server_refuses_a_connection_requests_wait_for_one_of_ours(
    capped: Callable,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A role's CONNECTION LIMIT of 2 against a pool allowed 4: the pool keeps serving on its 2,
    queues the rest, and does not retry the refused connect on every request."""
    connect = await capped(2)
    monkeypatch.setattr(pool_module, "REFUSED_BACKOFF_S", 10.0)
    pool = _pool(connect, max_size=4, min_idle=0, timeout_s=5)
    try:

        async def use() -> int:
            connection = await pool.acquire()
            try:
                return int(await connection.fetchval("SELECT 1 FROM pg_sleep(0.01)"))
            finally:
                pool.release(connection)

        results = await asyncio.gather(*(use() for _ in range(40)))
        assert results == [1] * 40
        assert pool.size == 2
        assert connect.attempts == 4  # four at once (two refused); then none until the backoff ends
    finally:
        await pool.close()


async def test_a_refused_first_connection_is_retried_after_a_backoff_then_is_the_error(
    capped: Callable,  # type: ignore[type-arg]
) -> None:
    """Holding no connection of its own, the pool asks the server again about once a second (not
    in a tight loop), and answers with the server's refusal when the pool timeout ends."""
    connect = await capped(0)
    pool = _pool(connect, max_size=2, min_idle=0, timeout_s=2.5)
    try:
        started = time.monotonic()
        with pytest.raises(asyncpg.TooManyConnectionsError):
            await asyncio.gather(*(pool.acquire() for _ in range(5)))
        assert 2.4 < time.monotonic() - started < 4
        # retried, but at most max_size at a time, each 0.5-1.5 s after the last refusal: not 5 x a loop
        assert 3 <= connect.attempts <= 2 * (1 + 2.5 / 0.5), connect.attempts
    finally:
        await pool.close()


async def test_a_refused_pool_takes_a_slot_as_soon_as_one_frees_up(capped: Callable) -> None:  # type: ignore[type-arg]
    """Another instance holds the only slot; once it lets go, the waiting request gets it."""
    connect = await capped(1)
    other_instance = await connect()
    pool = _pool(connect, max_size=2, min_idle=0, timeout_s=5)
    try:
        waiting = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await other_instance.close()
        connection = await asyncio.wait_for(waiting, 3)
        assert await connection.fetchval("SELECT 1") == 1
        pool.release(connection)
    finally:
        await pool.close()


async def test_a_spare_connection_is_lent_not_kept(connect: Callable) -> None:  # type: ignore[type-arg]
    """Beyond min_idle, a connection open longer than idle_s goes back to the server when it comes
    back with nobody waiting (another instance may need the slot); min_idle ones stay."""
    pool = _pool(connect, max_size=3, min_idle=1, idle_s=0.3)
    held = [await pool.acquire() for _ in range(3)]
    await asyncio.sleep(0.4)
    for connection in held:
        pool.release(connection)
    assert pool.size == 1
    pool.release(await pool.acquire())  # the one kept is reused: nothing new opened
    assert len(connect.opened) == 3  # type: ignore[attr-defined]
    await pool.close()


async def test_lending_the_last_connection_does_not_delay_the_next_request(connect: Callable) -> None:  # type: ignore[type-arg]
    pool = _pool(connect, max_size=2, min_idle=0, idle_s=0.1)
    connection = await pool.acquire()
    await asyncio.sleep(0.2)
    pool.release(connection)  # lent back: the pool holds none
    assert pool.size == 0
    started = time.monotonic()
    pool.release(await pool.acquire())
    assert time.monotonic() - started < 0.5
    await pool.close()


async def test_a_ping_cancelled_midway_gives_its_slot_back(connect: Callable) -> None:  # type: ignore[type-arg]
    """A request cancelled while its idle connection is pinged (a client gone, a /readyz timeout)
    must not keep the slot: after max_size such cancellations the pool would serve nobody."""
    pool = _pool(connect, max_size=1, ping_after_s=0)  # every idle connection is pinged
    pool.release(await pool.acquire())
    for _ in range(3):
        pinging = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)  # into the ping's round trip
        pinging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pinging
        assert pool.size == 0
        pool.release(await pool.acquire())  # the slot is free again: a new connection
    await pool.close()


async def test_waiters_behind_a_failed_open_fail_at_once() -> None:
    """When the server cannot be reached, those queued behind the attempt try themselves and get
    the error at once, instead of waiting out the pool's timeout for a connection that never comes."""
    attempts = 0

    async def unreachable() -> asyncpg.Connection:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.05)
        raise OSError("connection refused")

    pool = _pool(unreachable, max_size=1, timeout_s=10)  # type: ignore[arg-type]
    started = time.monotonic()
    results = await asyncio.gather(*(pool.acquire() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(result, OSError) for result in results) and attempts == 3
    assert time.monotonic() - started < 1
    await pool.close()


async def test_a_closed_pool_refuses_acquire(connect: Callable) -> None:  # type: ignore[type-arg]
    pool = _pool(connect)
    pool.release(await pool.acquire())
    await pool.close()
    with pytest.raises(PoolClosed):
        await pool.acquire()
    assert pool.size == 0 and len(connect.opened) == 1  # type: ignore[attr-defined]


async def test_closing_a_pool_wakes_its_waiters_at_once(connect: Callable) -> None:  # type: ignore[type-arg]
    pool = _pool(connect, max_size=1, timeout_s=10)
    held = await pool.acquire()
    waiting = [asyncio.ensure_future(pool.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)  # all three are queued behind the held connection
    await pool.close()
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), timeout=1)
    assert all(isinstance(result, PoolClosed) for result in results)
    pool.release(held)  # comes back to a closed pool: closed, not kept
    assert pool.size == 0


async def test_closing_a_refused_pool_wakes_those_sleeping_out_the_backoff(capped: Callable) -> None:  # type: ignore[type-arg]
    pool = _pool(await capped(0), timeout_s=10)  # the server refuses every connection
    asking = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.2)  # refused once; now in the backoff of about a second
    started = time.monotonic()
    await pool.close()
    with pytest.raises(PoolClosed):
        await asking
    assert time.monotonic() - started < 0.2


async def test_disposing_during_the_first_open_leaks_no_connection(database_url: str) -> None:
    """The first request is still opening the pool when the app shuts down: the pool being opened
    must not survive, with its connections, nor the request wait for it."""
    name = f"dispose-{uuid.uuid4().hex[:8]}"
    database = Database(Settings(database_url=database_url, service_name=name))

    async def first_request() -> None:
        async with database.connection():
            pass

    opening = asyncio.ensure_future(first_request())
    for _ in range(3):  # the open has started: it is connecting
        await asyncio.sleep(0)
    await database.dispose()
    with pytest.raises(DatabaseUnavailable):  # a 503, at once
        await asyncio.wait_for(opening, timeout=1)
    await asyncio.sleep(0.2)  # the server notices a closed connection at once; give it a moment
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    assert await fetchval(database_url, query, name) == 0
    async with database.connection() as connection:  # and the next use opens a new pool
        assert await connection.fetchval("SELECT 1") == 1
    await database.dispose()
