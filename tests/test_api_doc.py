"""docs/api.md, the contract clients rely on, against the OpenAPI document the service serves.

Every operation, query parameter and status code the page's tables name is served, and every
served operation is named on the page. The app is built as the service builds it (with
authentication on, so 401 and 403 are documented), without a database: building it does no I/O.
"""

import re
import typing
from typing import Any

import pytest

from app.api import create_app
from tests.conftest import ROOT

DOC = ROOT / "docs" / "api.md"
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
OPERATION = re.compile(r"^`([A-Z]+) (/[^`?\s]*)(?:\?([^`\s]*))?`$")
STATUS = re.compile(r"(?<![\w.-])([1-5]\d\d)(?![\w.,]\d)")


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    settings_type = next(
        kind for kind in typing.get_args(typing.get_type_hints(create_app)["settings"]) if kind is not type(None)
    )
    settings = settings_type(
        database_url="postgresql+asyncpg://nobody@127.0.0.1:9/never-connected",
        auth_mode="google",
        auth_audience="https://service.example.test",
    )
    document: dict[str, Any] = create_app(settings).openapi()
    return document


def _rows() -> list[tuple[int, list[str]]]:
    """(line number, cells) of every row of the page's `| method and path | ... |` tables."""
    rows, in_table = [], False
    for number, line in enumerate(DOC.read_text().splitlines(), start=1):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells[:1] == ["method and path"]:
            in_table = True
        elif not cells:
            in_table = False
        elif in_table and not set(cells[0]) <= set("-: "):
            rows.append((number, cells))
    return rows


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
    text = " ".join(DOC.read_text().split())
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


def test_every_status_in_the_table_of_meanings_is_one_the_service_documents(openapi: dict[str, Any]) -> None:
    table = re.search(r"^\| status \| meaning \|.*?\n\n", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)
    assert table, "docs/api.md has no table of status meanings"
    rows = [line for line in table[0].splitlines()[2:] if line.startswith("|")]
    listed = {status for row in rows for status in _statuses(row.split("|")[1])}
    documented = {status for operation in served_operations(openapi).values() for status in operation["responses"]}
    assert listed and listed <= documented, sorted(listed - documented)
