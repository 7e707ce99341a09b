"""Safe retries for POST: the `Idempotency-Key` header (IETF draft), as the contract describes it.

The first response to a key is stored in the same transaction as the write it reports, so either
both exist or neither does: a request that fails (5xx or otherwise) leaves no record, and its
retry runs afresh. While a request holds a key, a transaction-scoped advisory lock marks it busy,
so a concurrent repeat gets 409 instead of waiting. Keys are scoped per principal and kept 24 hours.
"""

import hashlib
import json
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import Depends, Header, Request, Response
from sqlalchemy import Index, SmallInteger, Text, bindparam, delete, func, literal, select, text, true, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Field, SQLModel

from app.core.db.statements import Statement
from app.core.errors import Conflict, InvalidRequest
from app.core.identity.auth import principal_of
from app.core.models import SET_BY_SERVER, TIMESTAMP

EXPIRED_ROWS_PER_WRITE = 20  # each remembered response also clears a few expired ones


class IdempotencyRecord(SQLModel, table=True):
    """The first response to a POST sent with an Idempotency-Key, replayed for 24 hours."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    principal: str = Field(primary_key=True, max_length=320)  # "" when authentication is off
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)  # sha256 of method, path and canonical JSON body
    status: int = Field(sa_type=SmallInteger)
    body: str = Field(sa_type=Text)
    location: str = Field(max_length=2048)
    etag: str = Field(max_length=100)
    created_at: datetime = Field(sa_type=TIMESTAMP, nullable=False, sa_column_kwargs=SET_BY_SERVER)


_TABLE = IdempotencyRecord.__table__  # type: ignore[attr-defined]
_TTL = text("interval '24 hours'")
_ANSWER = ("fingerprint", "status", "body", "location", "etag")
_KEY_COLUMNS = tuple_(_TABLE.c.principal, _TABLE.c.key)
_THIS_KEY = tuple_(bindparam("principal"), bindparam("key"))

# One round trip: try the key's lock, and read its stored answer. The lock answers a concurrent
# repeat with an early 409; the store below is the arbiter, so that a repeat committing between
# this statement's snapshot and its lock still cannot produce a second answer.
_live = select(_TABLE).where(_KEY_COLUMNS == _THIS_KEY, _TABLE.c.created_at > func.now() - _TTL).subquery()
_CLAIM = Statement(
    select(func.pg_try_advisory_xact_lock(func.hashtextextended(bindparam("lock_name"), 0)).label("free"), _live)
    .select_from(select(literal(1)).subquery())
    .outerjoin(_live, true())
)
# One round trip: store this answer (replacing an expired one only; RETURNING nothing means a live
# answer exists) and forget a few other expired keys.
_expired = select(_TABLE.c.principal, _TABLE.c.key).where(
    _TABLE.c.created_at < func.now() - _TTL, _KEY_COLUMNS != _THIS_KEY
)
_forget = delete(_TABLE).where(_KEY_COLUMNS.in_(_expired.limit(EXPIRED_ROWS_PER_WRITE).scalar_subquery()))
_STORE = Statement(
    insert(_TABLE)
    .values({name: bindparam(name) for name in ("principal", "key", *_ANSWER)})
    .on_conflict_do_update(
        index_elements=["principal", "key"],
        set_={name: bindparam(name) for name in _ANSWER} | {"created_at": func.now()},
        where=_TABLE.c.created_at <= func.now() - _TTL,
    )
    .returning(_TABLE.c.key)
    .add_cte(_forget.cte("forgotten"))
)


def _in_progress() -> Conflict:
    """A new exception each time: one raised again keeps every earlier raise's frames alive."""
    return Conflict("a request with this Idempotency-Key is still in progress; retry later")


class Idempotency:
    """A POST's `Idempotency-Key`, if it sent one: `replay` the first answer, or `remember` this one."""

    def __init__(self, *, principal: str, key: str | None, fingerprint: str) -> None:
        self.principal = principal
        self.key = key
        self.fingerprint = fingerprint

    async def replay(self, connection: asyncpg.Connection) -> Response | None:
        """The first response to this key, or None when this request is the first (and now holds it)."""
        if self.key is None:
            return None
        record = await _CLAIM.fetchrow(
            connection, lock_name=f"{self.principal}\n{self.key}", principal=self.principal, key=self.key
        )
        assert record is not None  # one row, whatever the join finds
        if not record["free"]:
            raise _in_progress()
        if record["key"] is None:
            return None
        if record["fingerprint"] != self.fingerprint:
            error = {"loc": ["header", "idempotency-key"], "msg": "already used for another request", "type": "reused"}
            raise InvalidRequest("this Idempotency-Key was used with a different request", errors=[error])
        headers = {"Location": record["location"], "ETag": record["etag"], "Idempotent-Replayed": "true"}
        return Response(record["body"], status_code=record["status"], headers=headers, media_type="application/json")

    async def remember(self, connection: asyncpg.Connection, response: Response) -> None:
        """Store `response` for replays, in the caller's transaction (so only if its write commits)."""
        if self.key is None:
            return
        stored = await _STORE.fetchval(
            connection,
            principal=self.principal,
            key=self.key,
            fingerprint=self.fingerprint,
            status=response.status_code,
            body=bytes(response.body).decode(),
            location=response.headers["Location"],
            etag=response.headers["ETag"],
        )
        if stored is None:  # a repeat got its answer stored first: undo this write, the retry replays
            raise _in_progress()


async def _fingerprint(request: Request) -> str:
    """The same request = same method, path and JSON body (key order and spacing do not matter).

    The body FastAPI parsed is reused; an empty or unparsed one (refused by validation after this
    runs) counts as its bytes, so that such a request answers exactly as it would without a key.
    """
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    body = await request.body()
    try:
        digest.update(json.dumps(await request.json(), sort_keys=True, separators=(",", ":")).encode())
    except ValueError:  # includes json.JSONDecodeError
        digest.update(body)
    return digest.hexdigest()


async def get_idempotency(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Retry safely: the same key and body within 24 h replays the first response",
        ),
    ] = None,
) -> Idempotency:
    principal = principal_of(request) or ""
    if idempotency_key is None:
        return Idempotency(principal=principal, key=None, fingerprint="")
    if len(request.headers.getlist("idempotency-key")) > 1:
        error = {"loc": ["header", "idempotency-key"], "msg": "send one key", "type": "duplicate"}
        raise InvalidRequest("the request has more than one Idempotency-Key", errors=[error])
    return Idempotency(principal=principal, key=idempotency_key, fingerprint=await _fingerprint(request))


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
