"""Typed errors and the one place that turns every failure into an RFC 9457 problem document."""

import logging
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ProblemDocument(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    type: str = Field(examples=["urn:problem-type:not-found"])
    title: str = Field(examples=["Resource not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["project 0b7e... does not exist"])
    instance: str = Field(examples=["/v1/projects/0b7e..."])
    errors: list[FieldError] | None = None
    request_id: str | None = None


class ProblemError(Exception):
    """An expected failure a client can act on; subclasses fix status, type and title."""

    status: ClassVar[int]
    type: ClassVar[str]
    title: ClassVar[str]

    def __init__(
        self, detail: str, *, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


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


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def problem_response(
    request: Request,
    *,
    status: int,
    title: str,
    detail: str,
    type_: str = "about:blank",
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type_,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors is not None:
        body["errors"] = errors
    request_id = request_id_of(request)
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def response_for(request: Request, problem: ProblemError) -> JSONResponse:
    return problem_response(
        request,
        status=problem.status,
        title=problem.title,
        detail=problem.detail,
        type_=problem.type,
        errors=problem.errors,
        headers=problem.headers,
    )


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return response_for(request, exc)


def _public_error(error: Any) -> dict[str, Any]:
    # Only where and why: echoing `input` back could reflect large or sensitive values.
    return {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_public_error(error) for error in exc.errors()]
    return response_for(request, InvalidRequest("the request has invalid or missing fields", errors=errors))


async def http_problem(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors: unknown route (404), wrong method (405, keeps `Allow`), 413, 400."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):  # a body FastAPI could not decode
        error = {"loc": ["body"], "msg": "the body is not UTF-8 JSON", "type": "json_invalid"}
        return response_for(request, InvalidRequest("the body is not valid JSON", errors=[error]))
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if exc.detail and exc.detail != phrase else f"{phrase}: {request.method} {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(request, status=exc.status_code, title=phrase, detail=detail, headers=headers)


async def _on_integrity(request: Request, exc: Exception) -> JSONResponse:
    """A constraint the services did not translate: still the client's conflict, never a 500."""
    logger.warning("unmapped integrity error: %s", getattr(exc, "orig", exc).__class__.__name__)
    return response_for(request, Conflict("the change conflicts with existing data"))


async def _on_unhandled(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    response = problem_response(
        request,
        status=500,
        title="Internal Server Error",
        detail="an unexpected error occurred; quote the request id when reporting it",
    )
    # This handler runs outside the middleware stack, so it stamps the request id itself.
    request_id = request_id_of(request)
    if request_id:
        response.headers["X-Request-ID"] = request_id
    return response


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(HTTPException, http_problem)
    app.add_exception_handler(IntegrityError, _on_integrity)
    app.add_exception_handler(Exception, _on_unhandled)
