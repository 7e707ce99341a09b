"""Typed errors and the one place that turns every failure into an RFC 9457 problem document."""

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.exceptions import HTTPException
from starlette.routing import Match

from app.core.observability.logs import URL_LIMIT, clip, new_request_id

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5  # what a 503 asks a client to wait before trying again


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


def _no_default(field: dict[str, Any]) -> None:
    field.pop("default", None)


class ProblemDocument(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    type: str = Field(examples=["urn:problem-type:not-found"])
    title: str = Field(examples=["Resource not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["project 0b7e... does not exist"])
    instance: str = Field(examples=["/v1/projects/0b7e..."])
    # Left out, never null, when there are none: no null in its schema, and no `"default": null` either.
    errors: list[FieldError] | SkipJsonSchema[None] = Field(None, json_schema_extra=_no_default)
    request_id: str = Field(description="The response's X-Request-ID", examples=["7f3c1e52a9d84b6f"])


class ProblemError(Exception):
    """A failure a client can act on; subclasses fix status, type and title (Starlette's own errors
    and the 500 are ProblemErrors made on the spot, with `about:blank` and the status phrase)."""

    status: int = 500
    type: str = "about:blank"
    title: str = "Internal Server Error"

    def __init__(
        self, detail: str, *, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


class Unauthenticated(ProblemError):
    """401 with an RFC 6750 challenge: bare when no token came, with the reason when one was refused."""

    status, type, title = 401, "urn:problem-type:unauthenticated", "Authentication required"

    def __init__(self, detail: str, *, token_refused: bool = False) -> None:
        challenge = f'Bearer error="invalid_token", error_description="{detail}"' if token_refused else "Bearer"
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(ProblemError):
    status, type, title = 403, "urn:problem-type:forbidden", "Not allowed"


class NotFound(ProblemError):
    status, type, title = 404, "urn:problem-type:not-found", "Resource not found"


class Conflict(ProblemError):
    status, type, title = 409, "urn:problem-type:conflict", "Conflict with the current state"


class PreconditionFailed(ProblemError):
    status, type, title = 412, "urn:problem-type:precondition-failed", "Precondition failed"


class UnsupportedMediaType(ProblemError):
    status, type, title = 415, "urn:problem-type:unsupported-media-type", "Unsupported media type"


class InvalidRequest(ProblemError):
    status, type, title = 422, "urn:problem-type:validation-error", "Request is not valid"


class ServiceUnavailable(ProblemError):
    status, type, title = 503, "urn:problem-type:unavailable", "Service temporarily unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_S)})


def not_found(resource_name: str, resource_id: uuid.UUID) -> NotFound:
    return NotFound(f"{resource_name} {resource_id} does not exist")


def invalid_json() -> InvalidRequest:
    """One answer for every body that is not a JSON document: truncated, not UTF-8, NaN, ..."""
    error = {"loc": ["body"], "msg": "send one UTF-8 JSON document", "type": "json_invalid"}
    return InvalidRequest("the body is not valid JSON", errors=[error])


class Answered(Exception):  # not an error: the answer, found where the work is done
    """The request's answer, decided below the route (a create whose Idempotency-Key already has
    one): sent as it is, by the one handler `install_problem_handlers` registers, so that no route
    has to catch it."""

    def __init__(self, response: Response) -> None:
        super().__init__("answered")
        self.response = response


async def _on_answered(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Answered)
    return exc.response


def response_for(request: Request, problem: ProblemError) -> JSONResponse:
    # Set by RequestContextMiddleware on every request; an app driven without it still names the answer.
    request_id: str = getattr(request.state, "request_id", None) or new_request_id()
    document = ProblemDocument(
        type=problem.type,
        title=problem.title,
        status=problem.status,
        detail=problem.detail,
        instance=request.url.path,
        errors=[FieldError.model_validate(error) for error in problem.errors] if problem.errors is not None else None,
        request_id=request_id,
    )
    body = document.model_dump(exclude_none=True)
    response = JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON)
    # the 500 handler runs outside the middleware that stamps it on every other response
    response.headers["X-Request-ID"] = request_id
    return response


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return response_for(request, exc)


def _public_error(error: Any) -> dict[str, Any]:
    # Only where and why: echoing `input` back could reflect large or sensitive values.
    return {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_public_error(error) for error in exc.errors()]
    if any(error["type"] == "json_invalid" for error in errors):  # FastAPI's own JSON decode error
        return response_for(request, invalid_json())
    return response_for(request, InvalidRequest("the request has invalid or missing fields", errors=errors))


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """`Allow` for a 405: every method some route takes on this path (Starlette names only the
    first route's), found by asking the routes; HEAD wherever GET is (the middleware answers it)."""
    routes = request.app.router.routes
    allowed = {
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    }
    if "GET" in allowed:
        allowed.add("HEAD")
    return ", ".join(sorted(allowed))


async def http_problem(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors: unknown route (404), wrong method (405, with `Allow`), 413, 408, 400."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):  # a body FastAPI
        return response_for(request, invalid_json())  # could not decode: not UTF-8, or nested too deep
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if exc.detail and exc.detail != phrase else f"{phrase}: {request.method} {request.url.path}"
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    problem = ProblemError(detail, headers=headers or None)
    problem.status, problem.title = exc.status_code, phrase
    return response_for(request, problem)


async def _on_unhandled(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, clip(request.url.path, URL_LIMIT))
    return response_for(request, ProblemError("an unexpected error occurred; quote the request id when reporting it"))


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Answered, _on_answered)
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(HTTPException, http_problem)
    app.add_exception_handler(Exception, _on_unhandled)
