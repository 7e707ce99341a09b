"""Cloud Functions entry point: `functions-framework --target=api` serves the FastAPI app.

This module is imported once in the server's master process, before workers fork: importing
here is the cold-start preload. It opens no connection, starts no thread and makes no loop.
"""

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.api import create_app

app = create_app()  # validates the settings now, so a bad value stops start-up

# Keys the framework's own router put in the scope; FastAPI must route (and build URLs) afresh.
_FRAMEWORK_ROUTING_KEYS = frozenset({"router", "endpoint", "route", "path_params", "app"})


class _ServeWithApp(Response):
    """A 'response' that hands the raw ASGI call to FastAPI: no body copy, no WSGI bridge."""

    def __init__(self) -> None:  # nothing to render: the app writes the response itself
        pass

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        own_scope = {key: value for key, value in scope.items() if key not in _FRAMEWORK_ROUTING_KEYS}
        try:
            await app(own_scope, receive, send_tracked)
        except Exception:
            # FastAPI has already logged the error and sent its 500 problem, then re-raised;
            # the framework would answer a second time. Re-raise only if nothing was sent.
            if not started:
                raise


@functions_framework.aio.http
async def api(request: Request) -> Response:
    return _ServeWithApp()
