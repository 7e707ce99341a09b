"""Who is calling: AUTH_MODE=none (no checks), `google` (Google-signed ID tokens) or `oidc`.

Every /v1 request is authenticated before routing, so a rejected call reads no body and writes
nothing: 401 with `WWW-Authenticate: Bearer` for a missing or invalid token, 403 for a verified
caller outside AUTH_ALLOWED_PRINCIPALS. /healthz, /readyz and the docs stay open.
"""

from typing import Any

from fastapi import Request
from starlette.datastructures import Headers
from starlette.requests import Request as StarletteRequest
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import Forbidden, ProblemError, Unauthenticated, response_for
from app.core.settings import Settings

PROTECTED_PREFIX = "/v1"


def _is_protected(scope: Scope) -> bool:
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):  # a proxy may or may not strip ROOT_PATH
        path = path[len(root_path) :]
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


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
    """Verify the bearer token of every /v1 request; put the principal in `request.state`."""

    def __init__(self, app: ASGIApp, *, verifier: Any, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.verifier = verifier
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_protected(scope):
            try:
                scope.setdefault("state", {})["principal"] = await self._principal(Headers(scope=scope))
            except ProblemError as problem:
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
    principal: str | None = getattr(request.state, "principal", None)
    return principal
