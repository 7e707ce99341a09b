"""The served OpenAPI document as a contract for generated clients, checked against what the server does.

The document is fetched from the app as a client fetches it, validated by openapi-spec-validator,
then taken at its word: every property it lets be null is sent as null and accepted; every bound in
the models is a JSON Schema keyword, and a value on each side of it is accepted and refused; each
declared header is the one sent. Nothing here is a copy of the document: a resource a user adds is
checked by the same loops. (That every status the suite sees is declared is checked at the end of
the session, in tests/conftest.py.)
"""

import dataclasses
import re
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
