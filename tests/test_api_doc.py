"""docs/api.md, the contract clients rely on, against the OpenAPI document the service serves and
the constants of the code.

Every operation, query parameter and status code the page's tables name is served, and every
served operation is named on the page. The limits, problem types, header lists and values the page
states are the code's. The app is built as the service builds it (with authentication on, so 401
and 403 are documented), without a database: building it does no I/O, and the few requests sent
here are answered before any handler would touch one.
"""

import asyncio
import json
import re
import typing
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from app.api import create_app
from app.core.errors import ProblemDocument, ProblemError, ServiceUnavailable, invalid_json
from app.core.web import cors, middleware
from app.core.web.resources import MAX_VERSION
from tests.conftest import ROOT
from tests.helpers import MISSING_ID, asgi_client

DOC = ROOT / "docs" / "api.md"
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
OPERATION = re.compile(r"^`([A-Z]+) (/[^`?\s]*)(?:\?([^`\s]*))?`$")
STATUS = re.compile(r"(?<![\w.-])([1-5]\d\d)(?![\w.,]\d)")


def _app(**settings: Any) -> FastAPI:
    settings_type = next(
        kind for kind in typing.get_args(typing.get_type_hints(create_app)["settings"]) if kind is not type(None)
    )
    return create_app(settings_type(database_url="postgresql+asyncpg://nobody@127.0.0.1:9/never-connected", **settings))


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    document: dict[str, Any] = _app(auth_mode="google", auth_audience="https://service.example.test").openapi()
    return document


@pytest.fixture(scope="module")
async def offline() -> AsyncIterator[httpx.AsyncClient]:
    """The app without authentication, for requests that no handler answers (nothing connects)."""
    async with asgi_client(_app()) as http:
        yield http


def _text() -> str:
    return " ".join(DOC.read_text().split())


def _section(heading: str) -> str:
    """From `heading` to the next `## ` heading."""
    text = DOC.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _numbered_rows(*header: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of the body rows of the page's tables whose header row starts with `header`."""
    rows, in_table = [], False
    for number, line in enumerate(DOC.read_text().splitlines(), start=1):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if tuple(cells[: len(header)]) == header:
            in_table = True
        elif not cells:
            in_table = False
        elif in_table and not set(cells[0]) <= set("-: "):
            rows.append((number, cells))
    assert rows, f"docs/api.md has no table headed | {' | '.join(header)} |"
    return rows


def _table(*header: str) -> list[list[str]]:
    return [cells for _, cells in _numbered_rows(*header)]


def _rows() -> list[tuple[int, list[str]]]:
    """(line number, cells) of every row of the page's `| method and path | ... |` tables."""
    return _numbered_rows("method and path")


def _statuses(text: str) -> set[str]:
    return set(STATUS.findall(text))


def named_operations() -> dict[tuple[str, str], tuple[int, set[str], set[str]]]:
    """(method, path) -> (line, query parameters, statuses) as the page names them."""
    named = {}
    for number, cells in _rows():
        found = OPERATION.match(cells[0])
        assert found, f"docs/api.md:{number}: write the first cell as `METHOD /path?query&params`, not {cells[0]!r}"
        method, path, query = found.groups()
        assert method in METHODS, f"docs/api.md:{number}: {method} is not an HTTP method"
        assert (method, path) not in named, f"docs/api.md:{number}: {method} {path} is named twice"
        named[(method, path)] = (number, set(filter(None, (query or "").split("&"))), _statuses(" ".join(cells[1:])))
    return named


def served_operations(openapi: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, operations in openapi["paths"].items()
        for method, operation in operations.items()
        if method.upper() in METHODS
    }


def test_every_operation_the_page_names_is_served_with_its_parameters_and_statuses(openapi: dict[str, Any]) -> None:
    served = served_operations(openapi)
    for (method, path), (number, query, statuses) in named_operations().items():
        where = f"docs/api.md:{number}: {method} {path}"
        assert (method, path) in served, f"{where} is not served; served: {sorted(served)}"
        operation = served[(method, path)]
        parameters = {parameter["name"] for parameter in operation.get("parameters", []) if parameter["in"] == "query"}
        assert query <= parameters, f"{where}: no query parameter {sorted(query - parameters)}"
        assert statuses, f"{where}: names no status"
        assert statuses <= set(operation["responses"]), (
            f"{where}: {sorted(statuses - set(operation['responses']))} not among {sorted(operation['responses'])}"
        )


def test_every_served_operation_is_on_the_page(openapi: dict[str, Any]) -> None:
    missing = set(served_operations(openapi)) - set(named_operations())
    assert not missing, f"served but not in docs/api.md (clients rely on that page): {sorted(missing)}"


def test_the_statuses_every_operation_may_give_are_documented_on_each(openapi: dict[str, Any]) -> None:
    text = _text()
    sentence = re.search(
        r"Every `/v1` operation may answer ([^,]+(?:, [^,]+)*?), and, with authentication on, ([^;]+);", text
    )
    assert sentence, "docs/api.md no longer says which statuses every /v1 operation may give"
    always, with_authentication = _statuses(sentence[1]), _statuses(sentence[2])
    assert always and with_authentication
    for (method, path), operation in served_operations(openapi).items():
        if path.startswith("/v1/"):
            lacking = (always | with_authentication) - set(operation["responses"])
            assert not lacking, f"{method} {path} does not document {sorted(lacking)}"


def test_the_statuses_of_the_http_layer_are_declared_on_every_operation(openapi: dict[str, Any]) -> None:
    sentence = re.search(
        r"may also answer what the HTTP layer answers before choosing a route: (.*?); those that"
        r" take a body also (\d+)\.",
        _text(),
    )
    assert sentence, "docs/api.md no longer says which statuses the HTTP layer adds to every operation"
    everywhere, with_body = _statuses(sentence[1]), _statuses(sentence[2])
    assert everywhere and with_body
    for (method, path), operation in served_operations(openapi).items():
        expected = everywhere | (with_body if "requestBody" in operation else set())
        assert expected <= set(operation["responses"]), (
            f"{method} {path}: {sorted(expected - set(operation['responses']))}"
        )
        assert "default" in operation["responses"], f"{method} {path} has no default problem response"


def test_the_headers_and_media_types_the_page_says_the_document_declares_are_declared(openapi: dict[str, Any]) -> None:
    found = re.search(r"\*\*The OpenAPI document\*\* declares the response headers (.*?)\. It gives", _text())
    assert found, "docs/api.md no longer lists the response headers the OpenAPI document declares"
    named = set(re.findall(r"`([A-Za-z-]+)`", found[1]))
    assert named == set(openapi["components"]["headers"]), (named, sorted(openapi["components"]["headers"]))
    for (method, path), operation in served_operations(openapi).items():
        if method == "PATCH":
            assert set(operation["requestBody"]["content"]) == {"application/merge-patch+json"}, path
            assert operation["requestBody"]["required"], path


def test_every_status_in_the_table_of_meanings_is_one_the_service_documents(openapi: dict[str, Any]) -> None:
    table = re.search(r"^\| status \| meaning \|.*?\n\n", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)
    assert table, "docs/api.md has no table of status meanings"
    rows = [line for line in table[0].splitlines()[2:] if line.startswith("|")]
    listed = {status for row in rows for status in _statuses(row.split("|")[1])}
    documented = {status for operation in served_operations(openapi).values() for status in operation["responses"]}
    assert listed and listed <= documented, sorted(listed - documented)


# --- what the page states beyond the OpenAPI document -------------------------------------------------

LIMITS = {  # each row of the page's table of limits: what the code enforces
    "header fields": {middleware.MAX_HEADER_FIELDS, middleware.MAX_HEADER_BYTES},
    "path and query string": {middleware.MAX_TARGET_BYTES},
    "body": {middleware.MAX_BODY_BYTES},
    "time to receive the body": {middleware.BODY_READ_TIMEOUT_S},
}
SENT_REQUEST_ID = "doc-check"


def _numbers(text: str) -> set[float]:
    return {float(number.replace(",", "")) for number in re.findall(r"\d[\d,]*(?:\.\d+)?", text)}


async def _body_never_arrives() -> int:
    """The status BodyLimitMiddleware gives a body that does not come (with a deadline of 10 ms)."""

    async def read(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async def never() -> Message:
        await asyncio.Event().wait()
        raise AssertionError

    async def unused(message: Message) -> None:
        raise AssertionError

    with pytest.raises(HTTPException) as refused:
        await middleware.BodyLimitMiddleware(read, read_timeout_s=0.01)({"type": "http", "headers": []}, never, unused)
    return refused.value.status_code


async def test_each_limit_on_the_page_is_the_code_s_and_answered_as_the_page_says(offline: httpx.AsyncClient) -> None:
    rows = {cells[0]: cells[1:] for cells in _table("what", "limit", "answer")}
    assert set(rows) == set(LIMITS), "docs/api.md: the table of limits names other limits than the test checks"
    for what, limits in LIMITS.items():
        assert limits <= _numbers(rows[what][0]), f"docs/api.md, {what}: {rows[what][0]!r}, the code: {sorted(limits)}"
    sent = {"X-Request-ID": SENT_REQUEST_ID}
    many_fields = middleware.MAX_HEADER_FIELDS  # with X-Request-ID and httpx's own, one too many at least
    answers = {
        "header fields": [
            await offline.get("/healthz", headers=[*sent.items()] + [(f"x-h{n}", "1") for n in range(many_fields)]),
            await offline.get("/healthz", headers=sent | {"X-Padding": "x" * middleware.MAX_HEADER_BYTES}),
        ],
        "path and query string": [
            await offline.get("/healthz", params={"q": "x" * middleware.MAX_TARGET_BYTES}, headers=sent)
        ],
        "body": [await offline.post("/healthz", content=b"x" * (middleware.MAX_BODY_BYTES + 1))],
    }
    about_blank = next(cells for cells in _table("`type`", "status", "`title`") if cells[0] == "`about:blank`")
    for what, responses in answers.items():
        for response in responses:
            assert {str(response.status_code)} == _statuses(rows[what][1]), (what, response.status_code)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["type"] == "about:blank"
            assert str(response.status_code) in _statuses(about_blank[1])
            assert response.headers["x-request-id"] != SENT_REQUEST_ID  # the page: no header is read
    assert {str(await _body_never_arrives())} == _statuses(rows["time to receive the body"][1])


def _problem_kinds() -> set[tuple[str, int, str]]:
    """(type, status, title) of every problem the code raises with a type of its own."""
    kinds, pending = set(), [ProblemError]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        if kind.type != "about:blank":
            kinds.add((kind.type, kind.status, kind.title))
    return kinds


def test_the_problem_types_and_fields_on_the_page_are_the_code_s() -> None:
    stated = {
        (cells[0].strip("`"), int(cells[1]), cells[2])
        for cells in _table("`type`", "status", "`title`")
        if cells[0] != "`about:blank`"
    }
    assert stated == _problem_kinds(), (
        f"on the page only: {stated - _problem_kinds()}; in the code only: {_problem_kinds() - stated}"
    )
    errors = _section("### Errors")
    found = re.search(r"```json\n(.*?)```", errors, flags=re.DOTALL)
    assert found, "docs/api.md: the Errors section has no example problem document"
    example = json.loads(found[1])
    assert (example["type"], example["status"], example["title"]) in stated
    fields = set(ProblemDocument.model_fields)
    assert set(example) <= fields, set(example) - fields
    assert all(f"`{field}`" in errors for field in fields), [field for field in fields if f"`{field}`" not in errors]


def test_the_documents_problem_types_are_the_rows_of_the_page(openapi: dict[str, Any]) -> None:
    """The document's `type` enum is built from the error classes when the app starts (a type a user
    adds appears by itself); docs/api.md does not ship with the service, so its rows are checked here."""
    listed = {cells[0].strip("`") for cells in _table("`type`", "status", "`title`")}
    enum = set(openapi["components"]["schemas"]["ProblemDocument"]["properties"]["type"]["enum"])
    assert enum == listed, f"types without a row in docs/api.md: {enum - listed}; rows of no type: {listed - enum}"


def _schema(operation: dict[str, Any], name: str) -> dict[str, Any]:
    """The schema of a parameter, without the `null` a default of None adds."""
    (parameter,) = [parameter for parameter in operation.get("parameters", []) if parameter["name"].lower() == name]
    schema: dict[str, Any] = parameter["schema"]
    return next((option for option in schema.get("anyOf", [schema]) if option.get("type") != "null"), schema)


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def test_the_values_the_page_states_are_the_code_s(openapi: dict[str, Any]) -> None:
    operations = served_operations(openapi)
    posts = [operation for (method, _), operation in operations.items() if method == "POST"]
    lists = [
        operation
        for operation in operations.values()
        if "limit" in {p["name"] for p in operation.get("parameters", [])}
    ]
    (key,) = {json.dumps(_schema(post, "idempotency-key"), sort_keys=True) for post in posts}
    (limit,) = {json.dumps(_schema(listed, "limit"), sort_keys=True) for listed in lists}
    (cursor,) = {json.dumps(_schema(listed, "cursor"), sort_keys=True) for listed in lists}
    key_schema, limit_schema, cursor_schema = json.loads(key), json.loads(limit), json.loads(cursor)
    visible = re.fullmatch(r"\^\[\\x(\w\w)-\\x(\w\w)\]\+\$", key_schema["pattern"])
    assert visible, key_schema["pattern"]
    first, last = chr(int(visible[1], 16)), chr(int(visible[2], 16))
    error = invalid_json()
    unavailable = ServiceUnavailable("for the test")
    assert unavailable.headers
    stated = [
        f'"detail": "{error.detail}"',
        f'"errors": {json.dumps(error.errors)}',
        f"`Retry-After: {unavailable.headers['Retry-After']}`",
        f"over {MAX_VERSION:,}",
        f"header: {key_schema['minLength']} to {key_schema['maxLength']} visible ASCII characters",
        f"(`{first}` to `{last}`, so",
        f"`limit` ({limit_schema['minimum']} to {limit_schema['maximum']}, default {limit_schema['default']})",
        f"`cursor` (at most {cursor_schema['maxLength']} characters",
        f"`q`, the list's filter (at most {_schema(operations[('GET', '/v1/projects')], 'q')['maxLength']} characters)",
        f"methods {_listed(cors.ALLOWED_METHODS)};",
        f"request headers {_listed(cors.ALLOWED_HEADERS)};",
        f"exposed response headers {_listed(cors.EXPOSED_HEADERS)};",
        f"cached for {cors.PREFLIGHT_MAX_AGE_S} s",
    ]
    text = _text()
    missing = [value for value in stated if value not in text]
    assert not missing, f"docs/api.md no longer states what the code does: {missing}"


async def test_request_ids_are_echoed_as_the_page_says(offline: httpx.AsyncClient) -> None:
    rule = re.search(r"one of (\d+) to (\d+) letters, digits and `([^`]+)`", _text())
    assert rule, "docs/api.md no longer says which X-Request-ID is echoed"
    shortest, longest, others = int(rule[1]), int(rule[2]), rule[3]
    for sent, echoed in [
        ("a" * shortest, True),
        ("Az09" + others + "a" * (longest - 4 - len(others)), True),
        ("a" * (longest + 1), False),
        ("a" * (shortest - 1), False),
        ("a!", False),
    ]:
        answered = (await offline.get("/healthz", headers={"X-Request-ID": sent})).headers["x-request-id"]
        assert (answered == sent) is echoed, sent
        assert echoed or re.fullmatch(r"[0-9a-f]{32}", answered), answered


async def test_the_allow_headers_on_the_page_are_served(offline: httpx.AsyncClient) -> None:
    examples = re.findall(r"`Allow: ([A-Z, ]+)` on `(/[^`]*)`", _text())
    assert examples, "docs/api.md gives no example of Allow"
    for allowed, path in examples:
        response = await offline.put(re.sub(r"\{[^}]+\}", MISSING_ID, path))
        assert (response.status_code, response.headers["allow"]) == (405, allowed), path
