"""The service as `bench/run.py` serves it under load: `main.py` unchanged, plus one bench-only path.

`GET /_bench/connections` answers the seconds the worker's database connections have been checked
out so far (`Database.held_s`); the benchmark reads it around each measured run and divides the
difference by the requests served: connection-seconds per request. The path exists only here, never
in a deployed service; cold starts are measured on `main.py` itself.
"""

import sys
from pathlib import Path

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # main.py, beside bench/

import main


@functions_framework.aio.http
async def api(request: Request) -> Response:
    if request.url.path == "/_bench/connections":
        return JSONResponse({"held_s": main.app.state.database.held_s})
    return await main.api(request)
