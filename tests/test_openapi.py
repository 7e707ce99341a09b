"""The served OpenAPI document as a contract for generated clients, checked against what the server does.

The document is fetched from the app as a client fetches it, validated by openapi-spec-validator,
then taken at its word: every property it lets be null is sent as null and accepted; every bound in
the models is a JSON Schema keyword, and a value on each side of it is accepted and refused; each
declared header is the one sent. Nothing here is a copy of the document: a resource a user adds is
checked by the same loops. (That every status the suite sees is declared is checked at the end of
the session, in tests/conftest.py.)
"""

import dataclasses
import gc
import re
import secrets
import typing
import uuid
from typing import Any

import annotated_types
import httpx
import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate
from pydantic import BaseModel

from app.api import RESOURCE_ROUTERS, create_app
from app.core.settings import Settings

PYDANTIC_ONLY = {"ge", "gt", "le", "lt", "min_length", "max_length", "multiple_of"}  # no generator reads them
BOUND_KEYWORDS = {
    annotated_types.Ge: "minimum",
    annotated_types.Gt: "exclusiveMinimum",
    annotated_types.Le: "maximum",
    annotated_types.Lt: "exclusiveMaximum",
    annotated_types.MinLen: "minLength",
    annotated_types.MaxLen: "maxLength",
}


@pytest.fixture(scope="module")
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    served: dict[str, Any] = response.json()
    validate(served)  # raises on any violation of the OpenAPI 3.1 schema
    return served


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "put", "post", "patch", "delete", "head", "options", "trace"}
    ]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema and len(schema) == 1:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _walk(node: Any) -> typing.Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# --- names -------------------------------------------------------------------------------------------------


def test_operation_ids_are_the_endpoint_functions_names(document: dict[str, Any], app: FastAPI) -> None:
    by_path = {(method, path): operation["operationId"] for method, path, operation in _operations(document)}
    for router in RESOURCE_ROUTERS:
        for route in router.routes:
            for method in route.methods:  # type: ignore[attr-defined]
                assert by_path[(method, route.path)] == route.name  # type: ignore[attr-defined]
    assert by_path[("GET", "/healthz")] == "healthz"


def test_every_schema_has_a_name_a_person_would_choose(document: dict[str, Any]) -> None:
    """FastAPI names a model it makes up after the operation (`HealthzHealthzGetResponseHealthzHealthzGet`)."""
    operation_ids = {operation["operationId"] for _, _, operation in _operations(document)}
    for name in document["components"]["schemas"]:
        squashed = name.lower().replace("_", "")
        assert not any(identifier.replace("_", "") in squashed for identifier in operation_ids), name
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*(_[A-Z][A-Za-z0-9]*_)?", name), name  # Page_TaskPublic_ is a generic


def test_two_operations_with_one_id_stop_the_app_from_starting(database_url: str) -> None:
    from fastapi import APIRouter

    twin = APIRouter()

    @twin.get("/v1/elsewhere/{task_id}")
    async def read_task(task_id: uuid.UUID) -> None:  # the same name as tasks' read_task
        raise AssertionError

    RESOURCE_ROUTERS.append(twin)
    try:
        with pytest.raises(RuntimeError, match=r"read_task.*GET /v1/tasks/\{task_id\}.*GET /v1/elsewhere/\{task_id\}"):
            create_app(Settings(database_url=database_url))
    finally:
        RESOURCE_ROUTERS.remove(twin)


def test_two_error_classes_giving_one_problem_type_different_statuses_stop_the_start(database_url: str) -> None:
    from app.core.errors import NotFound

    class Gone(NotFound):
        status = 410

    try:
        with pytest.raises(RuntimeError, match=r"urn:problem-type:not-found has two statuses or titles: .*Gone"):
            create_app(Settings(database_url=database_url))
    finally:
        del Gone
        gc.collect()  # __subclasses__ holds classes weakly: the class is gone for the next app


def test_a_document_without_any_route_s_problem_still_defines_the_problem_schema() -> None:
    from fastapi import FastAPI

    from app.core.web.openapi import install_openapi

    bare = FastAPI()

    @bare.get("/x")
    async def x() -> dict[str, str]:
        return {}

    install_openapi(bare, bearer=False)
    schema = bare.openapi()
    validate(schema)
    assert schema["components"]["schemas"]["ProblemDocument"]["properties"]["errors"]["items"]["$ref"] == (
        "#/components/schemas/FieldError"
    )


# --- bounds and nulls --------------------------------------------------------------------------------------


def test_no_pydantic_keyword_leaks_into_the_document(document: dict[str, Any]) -> None:
    for node in _walk(document["components"]["schemas"]):
        if "type" in node or "anyOf" in node or "$ref" in node:
            assert not (PYDANTIC_ONLY & set(node)), node


def _input_models(app: FastAPI) -> list[type[BaseModel]]:
    from app.core.models import InputSchema

    found, pending = [], list(InputSchema.__subclasses__())
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        found.append(model)
    return found


def _bounds(annotation: Any, metadata: list[Any]) -> list[annotated_types.BaseMetadata]:
    """The annotated-types bounds of a field: its own metadata and that of the types it is made of."""
    found: list[annotated_types.BaseMetadata] = []
    pending = list(metadata) + list(typing.get_args(annotation)) + list(getattr(annotation, "__metadata__", ()))
    while pending:
        item = pending.pop()
        if isinstance(item, annotated_types.GroupedMetadata):  # StringConstraints, Field(...) as metadata
            pending.extend(item)
        elif type(item) in BOUND_KEYWORDS:
            found.append(item)
        elif typing.get_origin(item) is typing.Annotated or typing.get_args(item):
            pending.extend(typing.get_args(item))
            pending.extend(getattr(item, "__metadata__", ()))
    return found


def _value(bound: annotated_types.BaseMetadata) -> Any:
    return getattr(bound, dataclasses.fields(bound)[0].name)  # type: ignore[arg-type]


def test_every_bound_in_the_models_is_json_schema(document: dict[str, Any], app: FastAPI) -> None:
    schemas = document["components"]["schemas"]
    checked = 0
    for model in _input_models(app):
        if model.__name__ not in schemas:
            continue
        properties = schemas[model.__name__]["properties"]
        for name, field in model.model_fields.items():
            options = [_resolve(document, option) for option in properties[name].get("anyOf", [properties[name]])]
            for bound in _bounds(field.annotation, field.metadata):
                keyword = BOUND_KEYWORDS[type(bound)]
                assert any(option.get(keyword) == _value(bound) for option in options), (model.__name__, name, keyword)
                checked += 1
    assert checked >= 10  # the templates' own: names, titles, descriptions and priorities


# --- the document taken at its word: created resources, then each input property --------------------------

Fill = dict[str, str]  # path parameter -> the id of a resource of the session's


def _media(operation: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ((media_type, content),) = operation["requestBody"]["content"].items()
    return media_type, content["schema"]


def _template_of(document: dict[str, Any], path: str) -> str:
    for template in document["paths"]:
        if re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)), path):
            return template
    raise AssertionError(f"no path of the document matches {path}")


def _example(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema's example, with its free text made unique (a name may have to be)."""
    resolved = _resolve(document, schema)
    example = dict(resolved["examples"][0])
    for name, value in example.items():
        options = resolved["properties"][name].get("anyOf", [resolved["properties"][name]])
        if isinstance(value, str) and any(
            option.get("type") == "string" and "format" not in option for option in options
        ):
            limit = min(option.get("maxLength", 10**6) for option in options if option.get("type") == "string")
            example[name] = f"{value} {uuid.uuid4().hex}"[-limit:]
    return example


def _shortest(length: int) -> str:
    """Text of `length` characters, unlikely to be another test's (a CJK ideograph each)."""
    return "".join(chr(0x4E00 + secrets.randbelow(0x5000)) for _ in range(length))


async def _create_all(client: httpx.AsyncClient, document: dict[str, Any]) -> Fill:
    """One resource of each kind, through each POST with its schema's example: parents first."""
    ids: Fill = {}
    posts = sorted((path for method, path, _ in _operations(document) if method == "POST"), key=len)
    for path in posts:
        operation = document["paths"][path]["post"]
        media_type, schema = _media(operation)
        example = _example(document, schema)
        response = await client.post(path.format(**ids), json=example, headers={"Content-Type": media_type})
        assert response.status_code == 201, response.text
        template = _template_of(document, response.headers["location"])
        (parameter,) = re.findall(r"\{([^}]+)\}", template.removeprefix(path))
        ids[parameter] = response.json()["id"]
    return ids


def _bodies(document: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(method, path, media type, resolved schema) of every operation that takes a JSON body."""
    found = []
    for method, path, operation in _operations(document):
        if "requestBody" in operation:
            media_type, schema = _media(operation)
            found.append((method, path, media_type, _resolve(document, schema)))
    return found


async def _send(
    client: httpx.AsyncClient, document: dict[str, Any], method: str, path: str, media_type: str, body: Any
) -> httpx.Response:
    ids = await _create_all(client, document)  # fresh: a PATCH must not trip on the last one's values
    example = {} if method == "PATCH" else _example(document, _media(document["paths"][path][method.lower()])[1])
    return await client.request(method, path.format(**ids), json=example | body, headers={"Content-Type": media_type})


def _allows_null(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or any(option.get("type") == "null" for option in schema.get("anyOf", []))


async def test_every_property_that_allows_null_takes_null_and_no_other_does(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    checked = set()
    for method, path, media_type, schema in _bodies(document):
        for name, property_schema in schema["properties"].items():
            response = await _send(client, document, method, path, media_type, {name: None})
            if _allows_null(property_schema):
                assert response.status_code < 300, (method, path, name, response.text)
            elif name not in schema.get("required", []) or method == "PATCH":
                assert response.status_code == 422, (method, path, name, response.text)
                assert ["body", name] in [error["loc"] for error in response.json()["errors"]]
            checked.add((method, name, _allows_null(property_schema)))
    assert ("PATCH", "description", True) in checked and ("PATCH", "title", False) in checked


def _edges(schema: dict[str, Any]) -> typing.Iterator[tuple[str, Any, Any]]:
    """(keyword, a value on the bound, one just past it) for each bound of a property's schema."""
    for option in schema.get("anyOf", [schema]):
        if "minimum" in option:
            yield "minimum", option["minimum"], option["minimum"] - 1
        if "maximum" in option:
            yield "maximum", option["maximum"], option["maximum"] + 1
        if "minLength" in option:
            yield "minLength", "x" * option["minLength"], "x" * (option["minLength"] - 1)
        if "maxLength" in option:
            text = (uuid.uuid4().hex * (option["maxLength"] // 32 + 2))[: option["maxLength"]]
            yield "maxLength", text, text + "x"


async def test_every_bound_holds_where_the_document_puts_it(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    checked = set()
    for method, path, media_type, schema in _bodies(document):
        for name, property_schema in schema["properties"].items():
            for keyword, inside, outside in _edges(_resolve(document, property_schema)):
                if keyword == "minLength":  # names are unique: make the shortest one too
                    inside = _shortest(len(inside))
                accepted = await _send(client, document, method, path, media_type, {name: inside})
                assert accepted.status_code < 300, (method, path, name, keyword, accepted.text)
                refused = await _send(client, document, method, path, media_type, {name: outside})
                assert refused.status_code == 422, (method, path, name, keyword, refused.text)
                assert [["body", name]] == [error["loc"] for error in refused.json()["errors"]]
                checked.add((method, name, keyword))
    assert {
        ("POST", "priority", "maximum"),
        ("PATCH", "priority", "minimum"),
        ("PATCH", "name", "maxLength"),
    } <= checked


# --- headers ------------------------------------------------------------------------------------------------


def _declared_headers(document: dict[str, Any], method: str, path: str, status: int) -> dict[str, bool]:
    """Header name (lower case) -> required, as the document declares them for this answer."""
    item = document["paths"][_template_of(document, path)]
    operation = item.get("get" if method == "HEAD" else method.lower()) or next(iter(item.values()))
    response = operation["responses"][str(status)]
    found = {}
    for name, header in response.get("headers", {}).items():
        resolved = document["components"]["headers"][header["$ref"].rsplit("/", 1)[1]] if "$ref" in header else header
        found[name.lower()] = bool(resolved.get("required"))
    return found


async def test_the_declared_headers_are_the_ones_sent(client: httpx.AsyncClient, document: dict[str, Any]) -> None:
    ids = await _create_all(client, document)
    project = f"/v1/projects/{ids['project_id']}"
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = _example(document, {"$ref": "#/components/schemas/ProjectCreate"})
    tag = (await client.get(project)).headers["etag"]
    responses = [
        await client.post("/v1/projects", json=body, headers=key),
        await client.post("/v1/projects", json=body, headers=key),  # replayed
        await client.get(project),
        await client.head(project),
        await client.get(project, headers={"If-None-Match": tag}),
        await client.get("/v1/projects"),
        await client.patch(project, json={}, headers={"Content-Type": "application/merge-patch+json"}),
        await client.patch(project, json={}, headers={"If-Match": '"0.1"'}),
        await client.put(project),
        await client.get(f"/v1/projects/{uuid.uuid4()}"),
        await client.get("/v1/projects", params={"limit": 0}),
        await client.get("/v1/projects", params={"q": "x" * 9000}),
        await client.get("/v1/projects", headers={"X-Padding": "x" * 17_000}),
        await client.post("/v1/projects", content=b"{}", headers={"Content-Type": "text/plain"}),
        await client.delete(f"/v1/tasks/{ids['task_id']}"),
        await client.get("/healthz"),
    ]
    known = {name.lower() for name in document["components"]["headers"]}
    statuses = set()
    for response in responses:
        request = response.request
        declared = _declared_headers(document, request.method, request.url.path, response.status_code)
        where = f"{request.method} {request.url.path} {response.status_code}"
        sent = {name.lower() for name in response.headers} & known
        assert sent <= set(declared), f"{where} sends {sorted(sent - set(declared))}, undeclared"
        required = {name for name, needed in declared.items() if needed}
        assert required <= sent, f"{where} declares {sorted(required - sent)} but does not send them"
        statuses.add(response.status_code)
    assert {200, 201, 204, 304, 404, 405, 412, 414, 415, 422, 431} <= statuses
    assert responses[1].headers["idempotent-replayed"] == "true"


# --- AUTH_MODE ----------------------------------------------------------------------------------------------


async def test_the_document_tells_how_to_authenticate_only_when_authentication_is_on(
    client: httpx.AsyncClient, authed: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    secured = (await authed.get("/openapi.json")).json()
    validate(secured)
    assert "securitySchemes" not in document.get("components", {})
    for method, path, operation in _operations(document):
        assert "security" not in operation and not {"401", "403"} & set(operation["responses"]), (method, path)
    assert secured["components"]["securitySchemes"]
    guarded = 0
    for method, path, operation in _operations(secured):
        if "security" in operation:
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
            guarded += 1
            answered = await authed.request(method, path.replace("{", "").replace("}", ""))  # no token
            assert answered.status_code == 401, (method, path)
            assert "www-authenticate" in _declared_headers(secured, method, path, 401)
        else:  # the public ones answer without a token
            assert (await authed.request(method, path)).status_code != 401, (method, path)
    assert guarded >= 10
