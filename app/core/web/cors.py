"""CORS, for browser code on other origins: off unless CORS_ALLOWED_ORIGINS names some.

Browsers send a preflight (OPTIONS) without credentials, so it must be answered before
authentication; Google's front end refuses it on a private function (`--no-allow-unauthenticated`),
so CORS serves a public function that identifies callers in the app (AUTH_MODE). See README.
"""

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import ProblemError, response_for

ALLOWED_METHODS = ("GET", "HEAD", "POST", "PATCH", "DELETE")
ALLOWED_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "If-Match", "If-None-Match", "X-Request-ID")
EXPOSED_HEADERS = ("ETag", "Location", "Retry-After", "X-Request-ID", "Idempotent-Replayed")
PREFLIGHT_MAX_AGE_S = 600  # browsers cache a preflight this long (Chrome caps it at 7200)


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, with a refused preflight answered as a problem document."""

    def __init__(self, app: ASGIApp, *, origins: tuple[str, ...]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=PREFLIGHT_MAX_AGE_S,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        return response if response.status_code == 200 else _RefusedPreflight(response)


class _RefusedPreflight(Response):
    """Starlette's 400 ("Disallowed CORS origin, ..."), with its headers, as a problem document."""

    def __init__(self, refused: Response) -> None:  # nothing to render until the request is known
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {name: value for name, value in self.refused.headers.items() if name.startswith(("access-", "vary"))}
        problem = ProblemError(bytes(self.refused.body).decode(), headers=headers)
        problem.status, problem.title = 400, "Bad Request"
        await response_for(Request(scope), problem)(scope, receive, send)
