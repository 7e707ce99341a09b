"""Keyset pagination, newest first: `(created_at, id) < cursor`, served by a (created_at, id) index."""

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Query
from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from app.errors import InvalidRequest
from app.models import Page


class Keyed(Protocol):
    id: uuid.UUID
    created_at: datetime


RowT = TypeVar("RowT", bound=Keyed)
SelectT = TypeVar("SelectT", bound=Select[Any])


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: tuple[datetime, uuid.UUID] | None


def encode_cursor(row: Keyed) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, row_id = raw.split("|")
        after = datetime.fromisoformat(created_at), uuid.UUID(row_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = None
    if after is None or after[0].tzinfo is None:
        error = {"loc": ["query", "cursor"], "msg": "not a cursor this API issued", "type": "value_error"}
        raise InvalidRequest("the cursor is not valid", errors=[error])
    return after


async def page_request(  # async: a sync dependency would cost a thread hop per request
    limit: Annotated[int, Query(ge=1, le=100, description="Items per page")] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page")] = None,
) -> PageRequest:
    return PageRequest(limit=limit, after=decode_cursor(cursor) if cursor else None)


PageDep = Annotated[PageRequest, Depends(page_request)]


def keyset(statement: SelectT, model: type[Keyed], page: PageRequest) -> SelectT:
    created_at: InstrumentedAttribute[datetime] = model.created_at  # type: ignore[assignment]
    row_id: InstrumentedAttribute[uuid.UUID] = model.id  # type: ignore[assignment]
    if page.after is not None:
        statement = statement.where(tuple_(created_at, row_id) < tuple_(*page.after))
    # One extra row tells whether another page exists without a COUNT.
    return statement.order_by(created_at.desc(), row_id.desc()).limit(page.limit + 1)


def to_page(rows: list[RowT], page: PageRequest) -> "Page[RowT]":  # a string: pydantic cannot build Page[Protocol]
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        return Page(items=rows, next_cursor=encode_cursor(rows[-1]))
    return Page(items=rows, next_cursor=None)
