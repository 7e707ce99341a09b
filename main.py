"""Cloud Functions entry point: `functions-framework --target=api` serves the FastAPI app.

This module is imported once in the server's master process, before workers fork: importing
here is the cold-start preload. It opens no connection, starts no thread and makes no loop.
"""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api import create_app
from app.core.function import LazyLifespan, forward

app = create_app()  # validates the settings now, so a bad value stops start-up
lifespan = LazyLifespan(app)


class _ServedByApp(Response):
    """Returned to the framework, which calls it with the raw ASGI scope, receive and send."""

    def __init__(self) -> None:  # nothing to render: the app writes the response itself
        pass

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await forward(app, lifespan, scope, receive, send)


@functions_framework.aio.http
async def api(request: Request) -> Response:
    return _ServedByApp()
