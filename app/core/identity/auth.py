"""Who is calling: AUTH_MODE=none (no checks), `google` (Google-signed ID tokens) or `oidc`.

Deny by default: with authentication on, every request needs a verified caller unless the route it
is for is public, whatever its path or method, routed or not. The check comes before routing, so a
refused call reads no body, writes nothing and learns nothing of which paths exist: 401 with
`WWW-Authenticate: Bearer` for a missing or invalid token, 403 for a verified caller outside
AUTH_ALLOWED_PRINCIPALS. A public path answers a method it does not take with its 405, token or
not: the path is no secret. Public are FastAPI's docs (`/docs`, `/redoc`, their OAuth redirect and
`/openapi.json`) and the routes declared with `dependencies=[Public]`, on the route, its router, or
its `add_routes` or `include_router` (app/core/web/health.py declares the health checks so).
"""

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.datastructures import Headers
from starlette.requests import Request as StarletteRequest
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import Forbidden, ProblemError, Unauthenticated, response_for
from app.core.settings import Settings


async def public() -> None:
    """Does nothing: its presence among a route's dependencies is what makes the route public."""


Public = Depends(public)  # `dependencies=[Public]`: open to every caller, token or not


def is_public(route: Any) -> bool:
    """Whether a route (or FastAPI's RouteContext of one) was declared with `dependencies=[Public]`."""
    dependencies = getattr(route, "dependencies", None) or ()
    return any(getattr(dependency, "dependency", None) is public for dependency in dependencies)


def _docs_paths(app: FastAPI) -> set[str]:
    paths = {app.openapi_url, app.docs_url, app.redoc_url}
    if app.docs_url:
        paths.add(app.swagger_ui_oauth2_redirect_url)
    return {path for path in paths if path}


def routes_to_public(app: FastAPI, scope: Scope) -> bool:
    """Whether the route the app's router would pick for this request (the first that matches it fully,
    ROOT_PATH handled as routing handles it) is public. A path nothing serves is not; a method a public
    path does not take goes on to its 405 (the path is no secret), any other path's to a 401."""
    public_path = False
    for route in iter_route_contexts(app.routes):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            if isinstance(route.original_route, APIRoute):
                return is_public(route)
            return route.path in _docs_paths(app)  # FastAPI's own doc routes; any other is protected
        if match is Match.PARTIAL:
            public_path = public_path or (
                is_public(route) if isinstance(route.original_route, APIRoute) else route.path in _docs_paths(app)
            )
    return public_path


def is_allowed(principal: str, patterns: tuple[str, ...]) -> bool:
    """Exact emails or `*@domain`, case-insensitively; no patterns means any verified caller."""
    if not patterns:
        return True
    principal = principal.lower()
    domain = principal.rpartition("@")[2]
    return any(pattern == principal or pattern == f"*@{domain}" for pattern in patterns)


def build_verifier(settings: Settings) -> Any:
    """The token verifier for the settings, or None with AUTH_MODE=none (PyJWT is not even loaded)."""
    if settings.auth_mode == "none":
        return None
    from app.core.identity import tokens

    assert settings.auth_audience is not None  # Settings requires it with google and oidc
    if settings.auth_mode == "google":
        keys = tokens.KeySet(settings.oidc_jwks_url or tokens.GOOGLE_JWKS_URL)
        return tokens.TokenVerifier(keys=keys, issuers=tokens.GOOGLE_ISSUERS, audience=settings.auth_audience)
    assert settings.oidc_issuer is not None and settings.oidc_jwks_url is not None
    keys = tokens.KeySet(settings.oidc_jwks_url)
    return tokens.TokenVerifier(keys=keys, issuers=(settings.oidc_issuer,), audience=settings.auth_audience)


class AuthenticationMiddleware:
    """Verify the bearer token of every request; put the principal in `request.state`. A request
    without a verified caller goes on only to a public route: the token is checked first, so a
    verified caller costs no route lookup."""

    def __init__(self, app: ASGIApp, *, verifier: Any, allowed: tuple[str, ...], application: FastAPI) -> None:
        self.app = app
        self.verifier = verifier
        self.allowed = allowed
        self.application = application  # whose routes say which requests are public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            try:
                scope.setdefault("state", {})["principal"] = await self._principal(Headers(scope=scope))
            except ProblemError as problem:
                if not routes_to_public(self.application, scope):
                    if scope["type"] == "websocket":  # closed before it is accepted: the server answers 403
                        await send({"type": "websocket.close", "code": 1008})
                    else:
                        await response_for(StarletteRequest(scope, receive), problem)(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _principal(self, headers: Headers) -> str:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if not token.strip():
            raise Unauthenticated("send an ID token as `Authorization: Bearer <token>`")
        if scheme.lower() != "bearer":
            raise Unauthenticated("only Bearer tokens are accepted")
        principal: str = await self.verifier.principal(token.strip())  # raises 401 or 503 problems
        if not is_allowed(principal, self.allowed):
            raise Forbidden(f"{principal} is not allowed to call this API")
        return principal


def principal_of(request: Request) -> str | None:
    """Who is calling, as the middleware verified it; None with AUTH_MODE=none."""
    # request.state reads the scope's "state" dict, and raises (and getattr catches) an
    # AttributeError for a name it lacks, as with AUTH_MODE=none: read the dict.
    principal: str | None = request.scope.get("state", {}).get("principal")
    return principal
