"""Keyset pagination, newest first: `(created_at, id) < cursor`, served by a (created_at, id) index."""

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import asyncpg
from fastapi import Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import Select, bindparam, tuple_

from app.core import sql
from app.core.errors import InvalidRequest

ItemT = TypeVar("ItemT")


class Page(BaseModel, Generic[ItemT]):
    """The shape of every list answer, for OpenAPI (`response_model=Page[TaskPublic]`)."""

    items: list[ItemT]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: tuple[datetime, uuid.UUID] | None


def encode_cursor(row: sql.Row) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['id']}".encode()
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


class Keyset:
    """A list statement, newest first, a page at a time: compiled once for the first page and once
    for the pages after a cursor. One row more than the page tells whether another page exists."""

    def __init__(self, statement: Select[Any]) -> None:
        table = statement.get_final_froms()[0]
        newest_first = statement.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(bindparam("limit"))
        after = tuple_(table.c.created_at, table.c.id) < tuple_(bindparam("after_created_at"), bindparam("after_id"))
        self._first = sql.Query(newest_first)
        self._later = sql.Query(newest_first.where(after))

    async def page(self, connection: asyncpg.Connection, page: PageRequest, **values: Any) -> dict[str, Any]:
        """`{"items": [...], "next_cursor": ...}`, ready to render."""
        query = self._first
        if page.after is not None:
            query = self._later
            values |= {"after_created_at": page.after[0], "after_id": page.after[1]}
        rows = await query.fetch(connection, limit=page.limit + 1, **values)
        if len(rows) > page.limit:
            rows = rows[: page.limit]
            return {"items": rows, "next_cursor": encode_cursor(rows[-1])}
        return {"items": rows, "next_cursor": None}
