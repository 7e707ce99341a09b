"""The OpenAPI document: every error response is documented as an `application/problem+json` body."""

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from app.core.errors import PROBLEM_JSON, ProblemDocument

NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified: the `If-None-Match` copy is current"}
}


BEARER_DESCRIPTION = "A Google-signed or OIDC ID token"


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem documents a route can answer with."""
    return {status: {"description": HTTPStatus(status).phrase, "model": ProblemDocument} for status in statuses}


def operation_id(route: APIRoute) -> str:
    """The endpoint function's name (`create_project`, `read_task`): generated clients name their
    methods and modules after operation ids, so they are the names a person chose, not FastAPI's
    `create_project_v1_projects_post`. Set as the app's `generate_unique_id_function`."""
    return route.name


def check_operation_ids(routes: list[BaseRoute]) -> None:
    """Two operations with one id would make one client method shadow the other (FastAPI only warns,
    and a client generator fails or silently drops one): refuse to start instead."""
    seen: dict[str, str] = {}
    for route in iter_route_contexts(routes):  # included routers' routes too, as get_openapi sees them
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        identifier = route.operation_id or route.unique_id  # what the document will say, per method
        for method in sorted(route.methods or ()):
            where = f"{method} {route.path_format}"
            if identifier in seen:
                raise RuntimeError(
                    f"operation id {identifier!r} is given to both {seen[identifier]} and {where}: "
                    "rename one of the endpoint functions (its name is the operation id)"
                )
            seen[identifier] = where


def install_openapi(app: FastAPI, *, bearer: bool) -> None:
    """FastAPI files a response `model` under application/json; problems travel as problem+json.
    With authentication on, every /v1 operation names the bearer scheme (`/docs` gets an Authorize
    button); the middleware enforces it, so no per-request dependency has to."""

    check_operation_ids(app.routes)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            check_operation_ids(app.routes)  # again: routes can be added after the app is built
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
                servers=app.servers,
            )
            if bearer:
                schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
                schemes["HTTPBearer"] = {"type": "http", "scheme": "bearer", "description": BEARER_DESCRIPTION}
            for route, path in schema.get("paths", {}).items():
                for operation in path.values():
                    if bearer and (route == "/v1" or route.startswith("/v1/")):
                        operation["security"] = [{"HTTPBearer": []}]
                    for status, response in operation.get("responses", {}).items():
                        content = response.get("content", {})
                        if status.isdigit() and int(status) >= 400 and "application/json" in content:
                            response["content"] = {PROBLEM_JSON: content.pop("application/json")}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
