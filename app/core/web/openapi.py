"""The OpenAPI document: every error response is documented as an `application/problem+json` body."""

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import iter_route_contexts

from app.core.errors import PROBLEM_JSON, ProblemDocument
from app.core.identity.auth import is_public

NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified: the `If-None-Match` copy is current"}
}


BEARER_DESCRIPTION = "A Google-signed or OIDC ID token"


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem documents a route can answer with."""
    return {status: {"description": HTTPStatus(status).phrase, "model": ProblemDocument} for status in statuses}


def install_openapi(app: FastAPI, *, bearer: bool) -> None:
    """FastAPI files a response `model` under application/json; problems travel as problem+json.
    With authentication on, every operation but the public ones names the bearer scheme (`/docs` gets
    an Authorize button); the middleware enforces it, so no per-request dependency has to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
                servers=app.servers,
            )
            public: set[tuple[str, str]] = set()
            if bearer:
                schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
                schemes["HTTPBearer"] = {"type": "http", "scheme": "bearer", "description": BEARER_DESCRIPTION}
                for context in iter_route_contexts(app.routes):
                    if is_public(context):
                        public |= {(str(context.path_format), method.lower()) for method in context.methods or ()}
            for route, path in schema.get("paths", {}).items():
                for method, operation in path.items():
                    if bearer and (route, method) not in public:
                        operation["security"] = [{"HTTPBearer": []}]
                    for status, response in operation.get("responses", {}).items():
                        content = response.get("content", {})
                        if status.isdigit() and int(status) >= 400 and "application/json" in content:
                            response["content"] = {PROBLEM_JSON: content.pop("application/json")}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
