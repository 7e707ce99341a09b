"""Async work done once per process, on first need, shared by concurrent callers, never cached as failed."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Once(Generic[T]):
    """`await once()` runs `factory` the first time and returns its result from then on.

    Callers that arrive while the first run is in progress wait for that same run (one Admin
    API round trip, one lifespan start), and a failure reaches all of them but is forgotten
    afterwards, so the next caller tries again.
    """

    def __init__(self, factory: Callable[[], Awaitable[T]]) -> None:
        self._factory = factory
        self._attempt: asyncio.Task[T] | None = None

    async def __call__(self) -> T:
        if self._attempt is None:  # no await before the assignment: concurrent callers share it
            self._attempt = asyncio.ensure_future(self._factory())
        attempt = self._attempt
        try:
            return await asyncio.shield(attempt)  # one caller's cancellation does not cancel the others'
        except Exception:
            if self._attempt is attempt:
                self._attempt = None
            raise

    def result(self) -> T | None:
        """The value of a run that has finished successfully, else None (nothing is started)."""
        attempt = self._attempt
        if attempt is None or not attempt.done() or attempt.cancelled() or attempt.exception() is not None:
            return None
        return attempt.result()

    def reset(self) -> None:
        self._attempt = None

    def forget(self) -> "asyncio.Task[T] | None":
        """The current run, finished or not, handed to the caller (to cancel or clean up after);
        the next caller starts a new one."""
        attempt, self._attempt = self._attempt, None
        return attempt
