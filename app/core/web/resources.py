"""What every resource's routes share on the HTTP side: ETags and the conditional headers, JSON
answers, body media types.

A tag is `"<id hex>.<version>"`: the version changes on every write, and the id makes a tag of one
resource useless on another. `If-Match` guards writes, `If-None-Match` saves reads. The headers are
parsed by werkzeug's `parse_etags` (installed with functions-framework), and only when they name the
resource at all; a tag that cannot be one of ours (say a version beyond the column's range) simply
never matches.

Rows are rendered to JSON once, by orjson, straight from the database's Records: the route's
`response_model` documents the shape in OpenAPI, and FastAPI does not validate a returned
`Response` again.
"""

import uuid
from email.message import Message
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import Header, Request, Response
from werkzeug.http import parse_etags

from app.core.db.statements import Row
from app.core.errors import UnsupportedMediaType, invalid_json

MAX_VERSION = 2**31 - 1  # `version` is a PostgreSQL integer

IfMatch = Annotated[str | None, Header(description="Write only if the resource still has this ETag")]
IfNoneMatch = Annotated[str | None, Header(description="Answer 304 if the resource still has this ETag")]


def entity_tag(row: Row) -> str:
    return f'"{row["id"].hex}.{row["version"]}"'


def _version(text: str) -> int | None:
    """A version this API could have issued: 1 to 10 ASCII digits, within the column's range."""
    if not (text.isascii() and text.isdigit() and len(text) <= 10):  # "²" is a digit to str.isdigit
        return None
    version = int(text)
    return version if version <= MAX_VERSION else None


def accepted_versions(if_match: str | None, resource_id: uuid.UUID) -> frozenset[int] | None:
    """The versions a write may replace: None when unconditional (no header, or `*`)."""
    if if_match is None or if_match.strip() == "*":
        return None
    prefix = f"{resource_id.hex}."
    if prefix not in if_match:  # no tag of this resource: nothing to parse
        return frozenset()
    versions = set()
    for tag in parse_etags(if_match).as_set():  # strong tags only: If-Match uses the strong comparison
        if tag.startswith(prefix) and (version := _version(tag[len(prefix) :])) is not None:
            versions.add(version)
    return frozenset(versions)


def not_modified(if_none_match: str | None, current: str) -> bool:
    """Whether `If-None-Match` names the current tag, weak or strong (the weak comparison)."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return current in if_none_match and parse_etags(if_none_match).contains_weak(current.strip('"'))


def _encode(value: Any) -> Any:
    """What orjson does not know natively: Records (as objects) and asyncpg's UUID subclass."""
    if isinstance(value, asyncpg.Record):
        return dict(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def render(content: Any) -> bytes:
    return orjson.dumps(content, default=_encode, option=orjson.OPT_UTC_Z)


class RenderedJSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return render(content)


def resource_response(row: Row, *, status_code: int = 200, location: str | None = None) -> Response:
    """One resource with its ETag (and, when created, its Location)."""
    headers = {"ETag": entity_tag(row)}
    if location is not None:
        headers["Location"] = location
    return RenderedJSON(row, status_code=status_code, headers=headers)


def location_of(request: Request, path: str) -> str:
    """A path of this API as a client addresses it: under ROOT_PATH, when the app is mounted there."""
    return str(request.scope.get("root_path", "")) + path


def conditional_response(row: Row, if_none_match: str | None) -> Response:
    """304 with the ETag when the client's copy is current, else the resource."""
    tag = entity_tag(row)
    if not_modified(if_none_match, tag):
        return Response(status_code=304, headers={"ETag": tag})
    return RenderedJSON(row, headers={"ETag": tag})


def _media_type(request: Request) -> str:
    header = request.headers.get("content-type")
    if not header:
        return ""
    message = Message()
    message["content-type"] = header
    return message.get_content_type()  # lower-cased, parameters such as charset dropped


async def _require_json_text(request: Request) -> None:
    """JSON between systems is UTF-8 without a byte order mark, and has no NaN (RFC 8259). FastAPI's
    json.loads is laxer (UTF-16, a BOM, NaN); orjson, strict, re-reads the body, which costs
    far less than the parse it checks."""
    body = await request.body()  # already read by FastAPI
    try:
        orjson.loads(body or b"null")  # an empty body is refused by validation, as a missing one
    except orjson.JSONDecodeError:
        raise invalid_json() from None


async def require_json(request: Request) -> None:
    if _media_type(request) != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    await _require_json_text(request)


async def require_json_or_merge_patch(request: Request) -> None:
    if _media_type(request) not in ("application/json", "application/merge-patch+json"):
        raise UnsupportedMediaType("send the body as application/merge-patch+json or application/json")
    await _require_json_text(request)
