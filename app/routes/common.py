"""Plumbing every resource's routes share: media types, ETag headers, conditional reads."""

import re
import uuid
from collections.abc import Awaitable, Callable
from email.message import Message
from typing import Annotated, TypeVar

from fastapi import Path, Request, Response
from sqlmodel import SQLModel

from app.database import ReadSessionDep
from app.errors import UnsupportedMediaType
from app.idempotency import Idempotency
from app.models import Audited
from app.preconditions import Versioned, entity_tag, not_modified
from app.services.versioned import BeforeCommit, get_or_none, not_found

ModelT = TypeVar("ModelT", bound=Audited)


async def created_response(
    *,
    request: Request,
    response: Response,
    idempotency: Idempotency | None,
    public: type[SQLModel],
    read_route: str,
    create: Callable[[BeforeCommit | None], Awaitable[ModelT]],
) -> ModelT | Response:
    """201 with Location and ETag, or the stored first answer when an Idempotency-Key is repeated."""
    if idempotency is not None and (stored := await idempotency.stored_response()) is not None:
        return stored

    def location_of(resource: Audited) -> str:
        return request.url_for(read_route, **{path_parameter(type(resource)): resource.id}).path

    resource = await create(idempotency.recorder(public, location_of) if idempotency is not None else None)
    with_etag(response, resource, location=location_of(resource))
    return resource


def path_parameter(model: type) -> str:
    """The path parameter that names one `model`: `Task` -> `task_id`, `TaskLabel` -> `task_label_id`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", model.__name__).lower() + "_id"


def load_or_404(model: type[ModelT]) -> Callable[..., Awaitable[ModelT]]:
    """A dependency that loads `model` by its `{<model>_id}` path parameter, or answers 404."""

    async def load(
        session: ReadSessionDep, resource_id: Annotated[uuid.UUID, Path(alias=path_parameter(model))]
    ) -> ModelT:
        resource = await get_or_none(session, model, resource_id)
        if resource is None:
            raise not_found(model, resource_id)
        return resource

    return load


def _media_type(request: Request) -> str:
    header = request.headers.get("content-type")
    if not header:
        return ""
    message = Message()
    message["content-type"] = header
    return message.get_content_type()  # lower-cased, parameters such as charset dropped


async def require_json(request: Request) -> None:
    if _media_type(request) != "application/json":
        raise UnsupportedMediaType("send the body as application/json")


async def require_json_or_merge_patch(request: Request) -> None:
    if _media_type(request) not in ("application/json", "application/merge-patch+json"):
        raise UnsupportedMediaType("send the body as application/merge-patch+json or application/json")


def with_etag(response: Response, resource: Versioned, *, location: str | None = None) -> None:
    response.headers["ETag"] = entity_tag(resource)
    if location is not None:
        response.headers["Location"] = location


def conditional_read(resource: Versioned, response: Response, if_none_match: str | None) -> Response | None:
    """A 304 with the ETag when the client's copy is current, else None (after tagging `response`)."""
    tag = entity_tag(resource)
    if not_modified(if_none_match, tag):
        return Response(status_code=304, headers={"ETag": tag})
    response.headers["ETag"] = tag
    return None
