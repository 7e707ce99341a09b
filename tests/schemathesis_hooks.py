"""Schemathesis checks of our own, loaded with SCHEMATHESIS_HOOKS.

functions-framework answers a few requests itself, before the function runs: methods it does not
route (TRACE, QUERY, ...) with a plain 405, and paths its `/{path:path}` route cannot match (a
decoded newline) with a plain 404. Those answers carry no X-Request-ID, so they are told apart
and only checked to be those two statuses; every answer of the app meets the full checks.
"""

from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)


def _header(response: Any, name: str) -> str:
    value = response.headers.get(name, [""])
    return str(value[0] if isinstance(value, list) else value)


@schemathesis.check
def app_answers_conform(ctx: Any, response: Any, case: Any) -> None:
    if not _header(response, "x-request-id"):
        if response.status_code not in (404, 405):
            raise AssertionError(f"the framework answered {response.status_code} without reaching the app")
        return
    for check in (status_code_conformance, content_type_conformance, response_schema_conformance):
        check(ctx, response, case)
    if response.status_code >= 400:  # every error is a problem document
        media_type = _header(response, "content-type")
        if not media_type.startswith("application/problem+json"):
            raise AssertionError(f"{response.status_code} answered as {media_type!r}, not application/problem+json")
        body = response.json()
        if body.get("status") != response.status_code or not (body.get("type") and body.get("title")):
            raise AssertionError(f"not a problem document: {body!r}")
