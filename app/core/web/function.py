"""What functions-framework leaves to the function, done once, for any ASGI app.

- It never sends ASGI lifespan events: `LazyLifespan` enters the app's lifespan once, on the
  first request, in a task of the worker's loop. Where the server closes its loop normally, the
  loop's shutdown cancels that task, which exits the lifespan (closing the pool). The gunicorn
  uvicorn worker does not: after a graceful SIGTERM shutdown it re-raises SIGTERM with the default
  handler, so the process ends first and the operating system closes the connections.
- FastAPI re-raises after sending its 500 problem, and the framework would then answer again:
  once a response has started, `forward` drops the exception (the app has already logged it).
- The framework's router leaves its keys in the ASGI scope, which would make FastAPI build URLs
  (`url_for`, `Location`) for the wrong app: `forward` passes the scope without them.
"""

import asyncio
import logging
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from app.core.once import Once

logger = logging.getLogger(__name__)

_FRAMEWORK_ROUTING_KEYS = frozenset({"router", "endpoint", "route", "path_params", "app"})


class LazyLifespan:
    """Enter an app's lifespan once per process, on first use, inside the serving loop."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self.wait_started = Once(self._start)
        self._holder: asyncio.Task[None] | None = None  # a strong reference keeps the task alive

    async def _start(self) -> None:
        started = asyncio.get_running_loop().create_future()
        self._holder = asyncio.create_task(self._hold(started), name="app-lifespan")
        await started

    async def _hold(self, started: "asyncio.Future[None]") -> None:
        try:
            async with self._app.router.lifespan_context(self._app):
                started.set_result(None)
                await asyncio.Event().wait()  # parked until the loop shuts down and cancels it
        except Exception as error:
            if not started.done():
                started.set_exception(error)
            else:
                logger.exception("app shutdown failed")


async def forward(app: Any, lifespan: LazyLifespan, scope: Scope, receive: Receive, send: Send) -> None:
    """Hand the framework's raw ASGI call to the app: no body copy, no second response."""
    started = False

    async def send_tracked(message: Message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    await lifespan.wait_started()
    own_scope = {key: value for key, value in scope.items() if key not in _FRAMEWORK_ROUTING_KEYS}
    try:
        await app(own_scope, receive, send_tracked)
    except Exception:
        if not started:
            raise
