"""The OpenAPI document: every error response is documented as an `application/problem+json` body."""

import copy
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.models import OpenAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from app.core.errors import PROBLEM_JSON, ProblemDocument, ProblemError
from app.core.identity.auth import is_public
from app.core.web.idempotency import KEY_HEADER, KEY_PARAMETER, get_idempotency
from app.core.web.resources import require_json_or_merge_patch

NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not Modified: the `If-None-Match` copy is current"}
}


BEARER_DESCRIPTION = "A Google-signed or OIDC ID token"


PROBLEM_SCHEMA = "#/components/schemas/ProblemDocument"  # filled in by install_openapi


def _problem(status: str) -> dict[str, Any]:
    phrase = HTTPStatus(int(status)).phrase if status.isdigit() else "Any other problem"
    return {"description": phrase, "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA}}}}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem documents a route can answer with. The body is a reference
    to ProblemDocument's schema, added once when the document is built: a `model` here would have
    FastAPI build a ProblemDocument validator per route and status at import, a large part of the
    app's start-up (docs/benchmarks.md), that nothing but this document uses."""
    return {status: _problem(str(status)) for status in statuses}


def _with_problem_schemas(schema: dict[str, Any]) -> dict[str, Any]:
    """ProblemDocument and the models it uses, under components/schemas, as FastAPI files a model's
    (sorted by name, encoded through its OpenAPI model as get_openapi does: no null defaults)."""
    document = ProblemDocument.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(document.pop("$defs", {}), ProblemDocument=document)
    schema["components"]["schemas"] = dict(sorted(schemas.items()))
    encoded: dict[str, Any] = jsonable_encoder(OpenAPI(**schema), by_alias=True, exclude_none=True)
    return encoded


def operation_id(route: APIRoute) -> str:
    """The endpoint function's name (`create_project`, `read_task`): generated clients name their
    methods and modules after operation ids, so they are the names a person chose, not FastAPI's
    `create_project_v1_projects_post`. Set as the app's `generate_unique_id_function`, and as each
    router's, so that the app serves their routes as built (app/core/web/routing.py)."""
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
    With authentication on, every operation but the public ones names the bearer scheme (`/docs` gets
    an Authorize button); the middleware enforces it, so no per-request dependency has to."""

    check_operation_ids(app.routes)
    types = problem_types()  # at start-up: the routers, and the error classes they define, are imported

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
            declare_idempotency_key(schema, _operations_calling(app.routes, get_idempotency, nested=True))
            schema = _with_problem_schemas(schema)  # the key's parameter validated with the rest
            public: set[tuple[str, str]] = set()
            if bearer:
                schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
                schemes["HTTPBearer"] = {"type": "http", "scheme": "bearer", "description": BEARER_DESCRIPTION}
                for context in iter_route_contexts(app.routes):
                    if is_public(context):
                        public |= {(str(context.path_format), method.lower()) for method in context.methods or ()}
            for route, path in schema.get("paths", {}).items():
                for method, operation in path.items():
                    if bearer and (route, method) not in public:  # every route a user adds, too
                        operation["security"] = [{"HTTPBearer": []}]
                        for status in ("401", "403"):
                            operation.setdefault("responses", {}).setdefault(status, _problem(status))
                    for status, response in operation.get("responses", {}).items():
                        content = response.get("content", {})
                        if status.isdigit() and int(status) >= 400 and "application/json" in content:
                            response["content"] = {PROBLEM_JSON: content.pop("application/json")}
            declare_http_layer(schema, merge_patch=merge_patch_operations(app.routes))
            declare_problem_types(schema, types)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- what the HTTP layer adds to every operation: statuses, headers, the merge-patch media type ----------

MERGE_PATCH_JSON = "application/merge-patch+json"
# Answered before any route is chosen, so by every operation: a body whose Content-Length is over the
# limit (413), an oversized head (414, 431), a method the path does not take (405, with `Allow`), a bug.
EVERY_OPERATION = (405, 413, 414, 431, 500)
WITH_A_BODY = (408, 413)  # the body is read, and may come too slowly or grow too large as it streams

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The client's own request id if it sent a sane one, else one the server made.",
        "required": True,
        "schema": {"type": "string", "maxLength": 128},
    },
    "ETag": {
        "description": "The resource's strong entity tag: send it as `If-Match` or `If-None-Match`.",
        "required": True,
        "schema": {"type": "string", "pattern": '^"[0-9a-f]{32}\\.[0-9]+"$'},
    },
    "Location": {
        "description": "The created resource's path (below ROOT_PATH when mounted under a prefix).",
        "required": True,
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the first answer to the same `Idempotency-Key`, replayed.",
        "required": False,
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "Allow": {
        "description": "Every method the path takes.",
        "required": True,
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {
        "description": "`Bearer`, with the reason when a token was refused (RFC 6750).",
        "required": True,
        "schema": {"type": "string"},
    },
}
_BY_STATUS = {"304": ["ETag"], "401": ["WWW-Authenticate"], "405": ["Allow"], "503": ["Retry-After"]}


def merge_patch_operations(routes: list[BaseRoute]) -> set[tuple[str, str]]:
    """(path, method) of the operations that take their body as a JSON merge patch."""
    return _operations_calling(routes, require_json_or_merge_patch, nested=False)


def _operations_calling(routes: list[BaseRoute], call: Any, *, nested: bool) -> set[tuple[str, str]]:
    """(path, method) of the operations with `call` among their dependencies (`nested`: at any depth)."""
    found = set()
    for route in iter_route_contexts(routes):
        if isinstance(route.original_route, APIRoute) and _calls(route.dependant, call, nested=nested):
            found |= {(str(route.path_format), method.lower()) for method in route.methods or ()}
    return found


def _calls(dependant: Dependant, call: Any, *, nested: bool) -> bool:
    return any(
        dependency.call is call or (nested and _calls(dependency, call, nested=True))
        for dependency in dependant.dependencies
    )


def declare_idempotency_key(schema: dict[str, Any], operations: set[tuple[str, str]]) -> None:
    """The Idempotency-Key header on the operations that read it: get_idempotency reads it from the
    request itself, so FastAPI does not list it. It goes after the path, query and header parameters
    FastAPI lists (as the last header; FastAPI orders headers by dependency), before the cookies;
    and the 422 it can answer is declared where nothing else declared one."""
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            parameters = operation.get("parameters", [])
            names = {parameter.get("name", "").lower() for parameter in parameters}
            if (path, method) not in operations or KEY_HEADER in names:
                continue
            at = next((i for i, parameter in enumerate(parameters) if parameter.get("in") == "cookie"), len(parameters))
            operation["parameters"] = [*parameters[:at], copy.deepcopy(KEY_PARAMETER), *parameters[at:]]
            operation.setdefault("responses", {}).setdefault("422", _problem("422"))


def _is_resource(schema: dict[str, Any], response: dict[str, Any]) -> bool:
    """A single resource (an `id` and a `version`) is what carries an ETag."""
    ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
    properties = schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
    return {"id", "version"} <= set(properties)


def declare_http_layer(schema: dict[str, Any], *, merge_patch: set[tuple[str, str]]) -> None:
    """Statuses and headers every route gets from the middleware and the resources' helpers, so a
    route a user adds is described as truly as the template's, without listing them itself."""
    components = schema.setdefault("components", {})
    components.setdefault("headers", {}).update(HEADERS)
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            body = operation.get("requestBody", {})
            for status in (*EVERY_OPERATION, *(WITH_A_BODY if body else ())):
                responses.setdefault(str(status), _problem(str(status)))
            responses.setdefault("default", _problem("default"))
            if (path, method) in merge_patch and "application/json" in body.get("content", {}):
                # One media type, not two: for a body with several, client generators make it optional
                # (openapi-python-client 0.29 types it `A | A | Unset`). application/json is still taken.
                body["content"] = {MERGE_PATCH_JSON: body["content"]["application/json"]}
                body["description"] = "A JSON merge patch (RFC 7396); sent as `application/json` it is read the same."
            accepts_key = any(
                parameter.get("name", "").lower() == KEY_HEADER for parameter in operation.get("parameters", [])
            )
            for status, response in responses.items():
                names = ["X-Request-ID", *_BY_STATUS.get(status, [])]
                if status in ("200", "201") and _is_resource(schema, response):
                    names.append("ETag")
                if status == "201":
                    names += ["Location", *(["Idempotent-Replayed"] if accepts_key else [])]
                response.setdefault("headers", {}).update(
                    {name: {"$ref": f"#/components/headers/{name}"} for name in names}
                )


def problem_types() -> list[str]:
    """Every problem `type` the service can answer: ProblemError's and its subclasses', wherever they
    are defined. One type means one status and title; two classes that disagree stop the start."""
    kinds: dict[str, tuple[int, str]] = {}
    pending: list[type[ProblemError]] = [ProblemError]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        if kind.type == "about:blank":  # the HTTP layer's own answers: any status, its phrase as title
            kinds.setdefault(kind.type, (0, ""))
        elif kinds.setdefault(kind.type, (kind.status, kind.title)) != (kind.status, kind.title):
            raise RuntimeError(f"problem type {kind.type} has two statuses or titles: {kind.__qualname__} differs")
    return sorted(kinds)


def declare_problem_types(schema: dict[str, Any], types: list[str]) -> None:
    """`type` as an enum, so a typed client can branch on it (every type has a row in docs/api.md)."""
    problem = schema["components"]["schemas"]["ProblemDocument"]
    problem["properties"]["type"] = {**problem["properties"]["type"], "enum": types}
