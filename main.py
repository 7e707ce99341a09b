"""Cloud Functions entry point: `functions-framework --target=api` serves the FastAPI app.

This module is imported once in the server's master process, before workers fork: importing
here is the cold-start preload. It opens no connection, starts no thread and makes no loop.

The garbage collector is off while it runs: imports, models and routes make objects that live as
long as the process, and the full collections they set off were a large part of the import
(docs/benchmarks.md). Those
objects are then frozen (never scanned again), which also keeps later collections, and so the
slowest requests, short, and leaves their memory pages shared with the forked worker.

A request frees nearly all it allocates by reference counting, yet the collector's count (objects
allocated and not yet freed) reached the default threshold of 700 every 7 to 14 requests under load,
and its collections took about 5 % of a request's instructions. At 10,000 it runs about once per
1,000 requests, and a request takes 5 % (a create) to 7 % (a read) fewer instructions
(docs/benchmarks.md); what it collects is collected all the same, later.
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
gc.set_threshold(10_000, 10, 10)  # the youngest generation's: see above; the older ones as default
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
