"""The OpenAPI document: every error response is documented as an `application/problem+json` body."""

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.models import OpenAPI
from fastapi.openapi.utils import get_openapi

from app.core.errors import PROBLEM_JSON, ProblemDocument

NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified: the `If-None-Match` copy is current"}
}


BEARER_DESCRIPTION = "A Google-signed or OIDC ID token"


_PROBLEM_SCHEMA = {"$ref": "#/components/schemas/ProblemDocument"}  # filled in by install_openapi


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem documents a route can answer with. The body is a reference
    to ProblemDocument's schema, added once when the document is built: a `model` here would have
    FastAPI build a ProblemDocument validator per route and status at import (about 50, a fifth of
    the app's start-up) that nothing but this document uses."""
    return {
        status: {"description": HTTPStatus(status).phrase, "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}}}
        for status in statuses
    }


def _with_problem_schemas(schema: dict[str, Any]) -> dict[str, Any]:
    """ProblemDocument and the models it uses, under components/schemas, as FastAPI files a model's
    (sorted by name, encoded through its OpenAPI model as get_openapi does: no null defaults)."""
    document = ProblemDocument.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(document.pop("$defs", {}), ProblemDocument=document)
    schema["components"]["schemas"] = dict(sorted(schemas.items()))
    encoded: dict[str, Any] = jsonable_encoder(OpenAPI(**schema), by_alias=True, exclude_none=True)
    return encoded


def install_openapi(app: FastAPI, *, bearer: bool) -> None:
    """FastAPI files a response `model` under application/json; problems travel as problem+json.
    With authentication on, every /v1 operation names the bearer scheme (`/docs` gets an Authorize
    button); the middleware enforces it, so no per-request dependency has to."""

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
            schema = _with_problem_schemas(schema)
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
