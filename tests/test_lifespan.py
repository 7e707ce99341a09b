"""LazyLifespan: entered once on first use, retried after a failed start, exited with the loop."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI

from app.core.web.function import LazyLifespan


def _app_recording(events: list[str], *, failures: int = 0) -> FastAPI:
    attempts = 0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)  # give concurrent first requests a chance to race
        if attempts <= failures:
            raise ConnectionError("database not ready")
        events.append("enter")
        try:
            yield
        finally:
            events.append("exit")

    return FastAPI(lifespan=lifespan)


def test_concurrent_first_requests_enter_the_lifespan_once() -> None:
    events: list[str] = []
    lifespan = LazyLifespan(_app_recording(events))

    async def first_requests() -> None:
        await asyncio.gather(*(lifespan.wait_started() for _ in range(20)))
        await lifespan.wait_started()

    with asyncio.Runner() as runner:
        runner.run(first_requests())
        assert events == ["enter"]
    assert events == ["enter", "exit"]  # the loop's shutdown cancelled the holder: the lifespan ran out


def test_a_failed_start_is_retried_by_the_next_request() -> None:
    events: list[str] = []
    lifespan = LazyLifespan(_app_recording(events, failures=1))

    async def requests() -> None:
        with pytest.raises(ConnectionError):
            await lifespan.wait_started()
        await lifespan.wait_started()

    with asyncio.Runner() as runner:
        runner.run(requests())
    assert events == ["enter", "exit"]
