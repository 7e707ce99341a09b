"""Cloud Functions entry point: `functions-framework --target=api` serves the FastAPI app.

This module is imported once in the server's master process, before workers fork: importing
here is the cold-start preload. It opens no connection, starts no thread and makes no loop.

The garbage collector is off while it runs: imports, models and routes make objects that live as
long as the process, and the full collections they set off were a large part of the import
(docs/benchmarks.md). Those
objects are then frozen (never scanned again), which also keeps later collections, and so the
slowest requests, short, and leaves their memory pages shared with the forked worker.

A request frees nearly all it allocates by reference counting, yet at the collector's default
threshold (700 objects allocated and not yet freed) it collected every few requests under load, and
every thousand requests or so scanned every object made since `gc.freeze()`: about 5 % of a read's CPU
and 2.5 % of a create's (docs/benchmarks.md). At 2,000 that fell to 0.2 % with the same memory;
10,000 bought nothing more. What it collects is collected all the same, a little later.
"""

import gc

gc.disable()

import functions_framework.aio  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.types import Receive, Scope, Send  # noqa: E402

from app.api import create_app  # noqa: E402
from app.core.web.function import LazyLifespan, forward  # noqa: E402

app = create_app()  # validates the settings now, so a bad value stops start-up
lifespan = LazyLifespan(app)
gc.freeze()
gc.set_threshold(2_000, *gc.get_threshold()[1:])  # the youngest generation's (see above); the others as they are
gc.enable()


class _ServedByApp(Response):
    """Returned to the framework, which calls it with the raw ASGI scope, receive and send."""

    def __init__(self) -> None:  # nothing to render: the app writes the response itself
        pass

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await forward(app, lifespan, scope, receive, send)


@functions_framework.aio.http
async def api(request: Request) -> Response:
    return _ServedByApp()
