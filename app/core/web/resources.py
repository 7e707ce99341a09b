"""What every resource's routes share on the HTTP side: ETags and the conditional headers, JSON
answers, body media types.

A tag is `"<id hex>.<version>"`: the version changes on every write, and the id makes a tag of one
resource useless on another. `If-Match` guards writes, `If-None-Match` saves reads. The headers are
parsed by werkzeug's `parse_etags` (installed with functions-framework), and only when they name the
resource at all; a tag that cannot be one of ours (say a version beyond the column's range) simply
never matches.

Rows are rendered to JSON once, by orjson, straight from the database's Records, and the route's
`response_model` is the filter: a Record carries exactly the fields of the one model the answer's
shape holds (`TaskPublic` in `TaskPublic`, `list[TaskPublic]` or `Page[TaskPublic]`), in its order
and under its names, whatever else the statement selected. A column added to a table is published
only once its public model names it. A Record rendered where no response model says which of its
columns to publish is refused (a 500 whose log names the route and the fix), never sent whole.
FastAPI does not validate a returned `Response` again; the shape is worked out once per route.
"""

import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Annotated, Any, get_args, get_origin

import asyncpg
import orjson
from fastapi import Header, Request, Response
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send
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


class UnshapedRow(TypeError):
    """A Record rendered where no response model says which of its columns to publish."""


class RowShape:
    """Which columns of a Record an answer carries, under which names, in the model's field order."""

    def __init__(self, model: type[BaseModel], *, by_alias: bool = True) -> None:
        self.model = model
        fields = model.model_fields
        self.columns = tuple(fields)
        # (name in the answer, column of the row), in the model's field order
        self.pairs: tuple[tuple[str, str], ...] = tuple(
            ((field.serialization_alias or field.alias or name) if by_alias else name, name)
            for name, field in fields.items()
        )

    def encode(self, value: Any) -> Any:
        """orjson's `default`: Records in this shape, the rest as always. (One call per row: this is
        the list's hot path, so the shaping is inline.)"""
        if isinstance(value, asyncpg.Record):
            try:
                return {name: value[column] for name, column in self.pairs}
            except KeyError:
                raise self._unfit(value) from None
        return _encode(value)

    def _unfit(self, row: Row) -> UnshapedRow:
        present = set(row.keys())  # `in` on a Record looks at its values
        missing = [column for column in self.columns if column not in present]
        return UnshapedRow(
            f"{self.model.__name__} has fields the row has no column for: {', '.join(missing)} "
            f"(the row has {', '.join(row.keys())}); select them, labelled with the field's name"
        )


class _Unshaped:
    """orjson's `default` where rows have no shape: anything but a Record renders as always."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def refusal(self) -> UnshapedRow:
        return UnshapedRow(
            f"a database row was rendered where no response model says which of its columns to publish "
            f"({self.reason}): declare response_model= with the public model on the route (only its fields "
            "are sent), or render a dict of the fields to publish"
        )

    def encode(self, value: Any) -> Any:
        if isinstance(value, asyncpg.Record):
            raise self.refusal()
        return _encode(value)


def _row_models(annotation: Any, seen: frozenset[type[BaseModel]] = frozenset()) -> set[type[BaseModel]]:
    """The models a response model's rows take: itself (`TaskPublic`, also when a field of it is
    another model: a row is flat, the nested one is part of it), unless it holds rows in a
    collection field (`Page[TaskPublic]`'s `items: list[TaskPublic]`): then those."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return set()
        held: set[type[BaseModel]] = set()
        for field in annotation.model_fields.values():
            held |= _collected_models(field.annotation, seen | {annotation})
        return held or {annotation}
    found: set[type[BaseModel]] = set()
    for argument in get_args(annotation):  # list[M], M | None, Annotated[M, ...], dict[str, M]
        found |= _row_models(argument, seen)
    return found


def _collected_models(annotation: Any, seen: frozenset[type[BaseModel]]) -> set[type[BaseModel]]:
    """The row models inside a field's collections (list, tuple, set, dict values), not a lone model."""
    if get_origin(annotation) in (list, tuple, set, frozenset, dict, Sequence, Mapping):
        return _row_models(annotation, seen)
    found: set[type[BaseModel]] = set()
    for argument in get_args(annotation):  # Optional[list[M]], Annotated[list[M], ...]
        found |= _collected_models(argument, seen)
    return found


def shape_of(route: Any) -> RowShape | str:
    """The shape a route's rows take, from its `response_model`; or why it has none."""
    where = f"{', '.join(sorted(getattr(route, 'methods', None) or ()))} {getattr(route, 'path', '?')}"
    response_model = getattr(route, "response_model", None)
    models = _row_models(response_model) if response_model is not None else set()
    if len(models) == 1:
        return RowShape(models.pop(), by_alias=getattr(route, "response_model_by_alias", True))
    if not models:
        return f"{where} declares no response_model"
    names = ", ".join(sorted(model.__name__ for model in models))
    return f"{where}: its response_model holds several models ({names}), so a row's shape is ambiguous"


# The request being served, for the renderer to find its route's response model. Set innermost (by
# RowShapes), where the scope is the one the router writes the matched route into.
_current_scope: ContextVar[Scope | None] = ContextVar("current_scope", default=None)


class RowShapes:
    """ASGI middleware: lets rows rendered while serving a request take their route's shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _current_scope.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            _current_scope.reset(token)


_NO_ROUTE = _Unshaped("no route is being served")


def _shape(route: Any) -> RowShape | _Unshaped:
    """The shape of `route`'s rows (or why it has none), worked out once per route."""
    shape: RowShape | _Unshaped | None = getattr(route, "_row_shape", None)
    if shape is None:
        found = shape_of(route)
        shape = route._row_shape = found if isinstance(found, RowShape) else _Unshaped(found)
    return shape


def _current() -> RowShape | _Unshaped:
    """The shape of the rows of the route being served (`_NO_ROUTE` outside one)."""
    scope = _current_scope.get()
    route = scope.get("route") if scope is not None else None
    return _NO_ROUTE if route is None else _shape(route)


def _encoder() -> Callable[[Any], Any]:
    """The `default` of this render: the shape of the route being served."""
    return _current().encode


def current_shape() -> RowShape:
    """The shape the route being served gives its rows: the columns it publishes (`UnshapedRow`,
    naming the fix, when it has none)."""
    shape = _current()
    if isinstance(shape, _Unshaped):
        raise shape.refusal()
    return shape


def _encode(value: Any) -> Any:
    """What orjson does not know natively, besides Records: asyncpg's UUID subclass."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


_OPTIONS = orjson.OPT_UTC_Z


def render(content: Any) -> bytes:
    encode = _encoder()
    try:
        return orjson.dumps(content, default=encode, option=_OPTIONS)
    except orjson.JSONEncodeError as error:
        # Keys other than str (an enum, a UUID, a date: FastAPI accepts them) make every render
        # slower with OPT_NON_STR_KEYS (docs/benchmarks.md), so only a content that fails without
        # it is rendered again with it; whatever else failed fails again, as it would have.
        if isinstance(error.__cause__, UnshapedRow):
            raise error.__cause__ from None  # its own message names the route and the fix
        try:
            return orjson.dumps(content, default=encode, option=_OPTIONS | orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError as again:
            if isinstance(again.__cause__, UnshapedRow):
                raise again.__cause__ from None
            raise error from None


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


def created_response(row: Row, *, location_prefix: str) -> Response:
    """201 with the new resource, at `location_prefix` + its id: the prefix its keyed create was
    given, so that a replay's Location (stored by that create) is this one."""
    return resource_response(row, status_code=201, location=f"{location_prefix}{row['id']}")


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
    """The Content-Type without its parameters (charset), lower-cased, as the email package reads
    it for FastAPI (`Message.get_content_type`, which answers text/plain for a type without
    exactly one "/"): the part before the first ";", stripped."""
    header = request.headers.get("content-type")
    if not header:
        return ""
    media_type = header.partition(";")[0].strip().lower()
    return media_type if media_type.count("/") == 1 else "text/plain"


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
