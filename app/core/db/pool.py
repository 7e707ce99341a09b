"""The connection pool of one instance: asyncpg connections, fair, bounded and sized for Cloud SQL.

Why not SQLAlchemy's QueuePool or asyncpg's Pool, each measured as this service's pool
(docs/benchmarks.md):
- QueuePool closes an overflow connection as soon as it comes back while `pool_size` others are
  idle, and opens another on the next burst: under load, many new connections a second (each one
  a TLS handshake and an IAM login through the Cloud SQL connector), and it never closes idle
  connections below `pool_size`, however many instances hold theirs.
- asyncpg's Pool, swapped in for an A/B (`BENCH_POOL=asyncpg`, bench/asyncpg_pool.py), costs about
  the same CPU per request, but lets newcomers overtake waiters: on a quiet machine its p99 under
  load was about twice this pool's. And it fails a request whenever the server refuses a new
  connection for lack of slots (SQLSTATE 53300): at twice the connection budget (`make scale`)
  about half the requests were 503 and the instances holding no connection served none, where
  this pool answered them all.

This pool opens at most `max_size` connections, on demand; hands a released one to the longest
waiter; reuses the most recently released first, so spare ones sit idle and are closed after
`idle_s` (down to `min_idle`); and when the server is full, waits for one of its own instead, or,
holding none, tries the server again after a backoff until the pool timeout.
"""

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable

import asyncpg

REFUSED_BACKOFF_S = 1.0  # after a "too many connections", open no new one for about this long
PING_TIMEOUT_S = 2.0  # a ping unanswered this long means a dead socket (a failover leaves some)


class PoolTimeout(Exception):
    """No connection became free within the pool timeout."""


class PoolClosed(Exception):
    """The pool is closed: it hands out no connection, to those waiting either."""


class Pool:
    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        max_size: int,
        min_idle: int,
        idle_s: float,
        timeout_s: float,
        recycle_s: float,
        ping_after_s: float,
    ) -> None:
        self._connect = connect
        self._max_size, self._min_idle, self._idle_s = max_size, min_idle, idle_s
        self._timeout_s, self._recycle_s, self._ping_after_s = timeout_s, recycle_s, ping_after_s
        self._idle: list[tuple[asyncpg.Connection, float]] = []  # (connection, idle since): a stack
        self._born: dict[asyncpg.Connection, float] = {}
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._opening = 0
        self._refused_until = 0.0
        self._refusal: asyncpg.TooManyConnectionsError | None = None  # the server's last "too many"
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._closed_event = asyncio.Event()  # set by close(): wakes those sleeping out a refusal

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return len(self._born) + self._opening

    def idle_connections(self) -> list[asyncpg.Connection]:
        """The connections waiting in the pool now (the suite checks that no request left session
        state on them)."""
        return [connection for connection, _ in self._idle]

    async def acquire(self) -> asyncpg.Connection:
        deadline = time.monotonic() + self._timeout_s
        while True:
            if self._closed:
                raise PoolClosed("the connection pool is closed")
            self._close_expired()
            if self._idle:
                connection, idle_since = self._idle.pop()
                if time.monotonic() - idle_since < self._ping_after_s or await self._alive(connection):
                    return connection
                continue
            if self.size < self._max_size and time.monotonic() >= self._refused_until:
                opened = await self._open()
                if opened is not None and self._closed:  # closed while this one was being opened
                    self.release(opened, discard=True)
                    continue
                if opened is not None:
                    return opened
            if self.size:  # one of ours will come back, or is being opened
                handed = await self._wait(deadline)
                if handed is not None:
                    return handed
            else:  # refused, holding none: ask the server again once the backoff is over
                await self._sleep_until_retry(deadline)

    def release(self, connection: asyncpg.Connection, *, discard: bool = False) -> None:
        """Give a connection back: to the longest waiter, else to the idle stack; `discard` closes it.

        A spare one (beyond `min_idle`) that nobody waits for is closed once it has been open for
        `idle_s`: it is lent, not kept, so a slot the load here can spare goes back to the server
        for another instance, at a cost of at most one new connection per spare per `idle_s`."""
        age = time.monotonic() - self._born.get(connection, 0)
        spare = len(self._born) > self._min_idle and age > self._idle_s and not self._waiting()
        unusable = self._closed or connection.is_closed() or connection.is_in_transaction()
        if spare and len(self._born) > 1:  # keeping others: open no new one for a moment, so that
            # an instance the server refused may take the slot
            self._refused_until = max(self._refused_until, time.monotonic() + REFUSED_BACKOFF_S)
        if discard or spare or age > self._recycle_s or unusable:
            self._close(connection)
            self._hand_over(None)  # a waiter may open a new one in its place
        elif not self._hand_over(connection):
            self._idle.append((connection, time.monotonic()))

    async def close(self) -> None:
        """Close the idle connections now, and the others as they come back; those waiting for one
        are told at once (PoolClosed) rather than left to their timeout."""
        self._closed = True
        self._closed_event.set()
        while self._hand_over(None):
            pass
        while self._idle:
            self._close(self._idle.pop()[0])
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _open(self) -> asyncpg.Connection | None:
        """A new connection; None when the server is full but this pool holds others to wait for."""
        self._opening += 1
        try:
            connection = await self._connect()
        except asyncpg.TooManyConnectionsError as refusal:
            self._refused_until = time.monotonic() + REFUSED_BACKOFF_S * random.uniform(0.5, 1.5)  # noqa: S311
            self._refusal = refusal
            self._wake_all_unless_holding()
            return None
        except BaseException:  # unreachable, or cancelled: those waiting behind this attempt try
            self._wake_all_unless_holding()  # themselves (and fail as fast) rather than time out
            raise
        finally:
            self._opening -= 1
        self._born[connection] = time.monotonic()
        return connection

    async def _sleep_until_retry(self, deadline: float) -> None:
        """Sleep out the refusal backoff; at the deadline, the server's refusal is the answer."""
        with contextlib.suppress(TimeoutError):  # close() ends the sleep early
            async with asyncio.timeout(max(0.0, min(self._refused_until, deadline) - time.monotonic())):
                await self._closed_event.wait()
        if time.monotonic() >= deadline and not self._closed:
            raise self._refusal or PoolTimeout(f"no database connection in {self._timeout_s:g} s")

    async def _wait(self, deadline: float) -> asyncpg.Connection | None:
        """The next released connection, or None when a slot frees up; PoolTimeout at the deadline.

        The deadline is a timer that fails the waiter itself, unless a connection reached it first:
        lighter than `asyncio.timeout` (a context, a cancellation of the task and its undoing), and
        under load nearly every request waits here."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[asyncpg.Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), self._expire, waiter)
        try:
            return await waiter
        except BaseException:  # the deadline, or a cancellation: pass on what arrived as we gave up
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is not None:
                    self.release(handed)
                else:
                    self._hand_over(None)
            raise
        finally:  # a waiter handed a connection was already taken off; `in` first: remove's miss would repr() it
            timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _expire(self, waiter: "asyncio.Future[asyncpg.Connection | None]") -> None:
        if not waiter.done():
            waiter.set_exception(PoolTimeout(f"no database connection became free in {self._timeout_s:g} s"))

    def _wake_all_unless_holding(self) -> None:
        """Waiters wait for a connection of ours to come back: holding none, they are told at once."""
        if not self._born:
            while self._hand_over(None):
                pass

    def _waiting(self) -> bool:
        return any(not waiter.done() for waiter in self._waiters)

    def _hand_over(self, connection: asyncpg.Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    async def _alive(self, connection: asyncpg.Connection) -> bool:
        """Ping a connection that sat idle: sockets die between requests (throttled CPU, failovers)."""
        try:
            await connection.execute("SELECT 1", timeout=PING_TIMEOUT_S)
        except Exception:
            self.release(connection, discard=True)
            return False
        except BaseException:  # cancelled mid-ping: the connection's state is unknown, so it goes
            self.release(connection, discard=True)
            raise
        return True

    def _close_expired(self) -> None:
        now = time.monotonic()
        while len(self._idle) > self._min_idle and now - self._idle[0][1] > self._idle_s:
            self._close(self._idle.pop(0)[0])  # the bottom of the stack has been idle the longest

    def _close(self, connection: asyncpg.Connection) -> None:
        self._born.pop(connection, None)
        task = asyncio.ensure_future(_close_quietly(connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def _close_quietly(connection: asyncpg.Connection) -> None:
    try:
        await connection.close(timeout=2)
    except Exception:
        connection.terminate()
