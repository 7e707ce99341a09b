"""Keyset pagination, newest first: `(created_at, id) < cursor`, served by a (created_at, id) index.

A cursor is the position after the last row of a page, bound to its list: 32 bytes in base64url, 8
of a digest of the list (its table, its filter and the filter's values), the row's `created_at` in
microseconds since the epoch (UTC), and its id. A cursor from another list or with other filters, or
one that does not decode to a time Python and PostgreSQL both hold, is a 422. A cursor grants no
access (the list's own filter still applies), so it needs no signature.
"""

import base64
import hashlib
import re
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar

import asyncpg
from fastapi import Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import Select, bindparam, tuple_

from app.core.db import statements
from app.core.errors import InvalidRequest

ItemT = TypeVar("ItemT")

CURSOR_LAYOUT = struct.Struct(">8sq16s")  # list digest, created_at (µs since the epoch), id
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes in unpadded base64url
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_EARLIEST = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND
_LATEST = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND


class Page(BaseModel, Generic[ItemT]):
    """The shape of every list answer, for OpenAPI (`response_model=Page[TaskPublic]`)."""

    items: list[ItemT]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    cursor: str | None  # checked against the list it is used on, by `Keyset.page`


def _invalid_cursor(why: str) -> InvalidRequest:
    error = {"loc": ["query", "cursor"], "msg": why, "type": "value_error"}
    return InvalidRequest("the cursor is not valid", errors=[error])


async def page_request(  # async: a sync dependency would cost a thread hop per request
    limit: Annotated[int, Query(ge=1, le=100, description="Items per page")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page of the same list")
    ] = None,
) -> PageRequest:
    return PageRequest(limit=limit, cursor=cursor or None)


PageDep = Annotated[PageRequest, Depends(page_request)]


class Keyset:
    """A list statement, newest first, a page at a time: compiled once for the first page and once
    for the pages after a cursor. One row more than the page tells whether another page exists."""

    def __init__(self, statement: Select[Any]) -> None:
        table = statement.columns_clause_froms[0]  # the selected table, read without compiling the statement
        newest_first = statement.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(bindparam("limit"))
        after = tuple_(table.c.created_at, table.c.id) < tuple_(bindparam("after_created_at"), bindparam("after_id"))
        self._first = statements.Statement(newest_first)
        self._later = statements.Statement(newest_first.where(after))
        self._list = f"{table}\n{statement.whereclause}".encode()  # what a cursor is bound to: table, filter

    async def page(self, connection: asyncpg.Connection, page: PageRequest, **values: Any) -> dict[str, Any]:
        """`{"items": [...], "next_cursor": ...}`, ready to render. `values` fill the filter."""
        binding = None
        query = self._first
        if page.cursor is not None:
            binding = self._binding(values)
            after_created_at, after_id = self._position(page.cursor, binding)
            query = self._later
            values |= {"after_created_at": after_created_at, "after_id": after_id}
        rows = await query.fetch(connection, limit=page.limit + 1, **values)
        if len(rows) > page.limit:
            rows = rows[: page.limit]
            return {"items": rows, "next_cursor": self._cursor(rows[-1], binding or self._binding(values))}
        return {"items": rows, "next_cursor": None}

    def _binding(self, values: dict[str, Any]) -> bytes:
        digest = hashlib.blake2b(self._list, digest_size=8)
        for name in sorted(values):
            digest.update(f"\n{name}={values[name]}".encode())
        return digest.digest()

    @staticmethod
    def _cursor(row: statements.Row, binding: bytes) -> str:
        microseconds = (row["created_at"] - _EPOCH) // _MICROSECOND
        raw = CURSOR_LAYOUT.pack(binding, microseconds, row["id"].bytes)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def _position(cursor: str, binding: bytes) -> tuple[datetime, uuid.UUID]:
        """The (created_at, id) a cursor continues after, every value checked before it reaches SQL."""
        if not _CURSOR_TEXT.fullmatch(cursor):
            raise _invalid_cursor("not a cursor this API issued")
        bound, microseconds, row_id = CURSOR_LAYOUT.unpack(base64.urlsafe_b64decode(cursor + "="))
        if bound != binding:
            raise _invalid_cursor("a cursor of another list, or of the same list with other filters")
        if not _EARLIEST <= microseconds <= _LATEST:
            raise _invalid_cursor("not a cursor this API issued")
        return _EPOCH + microseconds * _MICROSECOND, uuid.UUID(bytes=row_id)
