"""Safe retries for POST: the `Idempotency-Key` header (IETF draft), as the contract describes it.

The first response to a key is stored in the same transaction as the write it reports, so either
both exist or neither does: a request that fails (5xx or otherwise) leaves no record, and its
retry runs afresh. While a request holds a key, a transaction-scoped advisory lock marks it busy,
so a concurrent repeat gets 409 instead of waiting. Keys are scoped per principal and kept 24 hours.
"""

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from sqlalchemy import delete, func, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth import PrincipalDep
from app.database import SessionDep
from app.errors import Conflict, InvalidRequest
from app.models import IdempotencyRecord
from app.preconditions import entity_tag

TTL = text("interval '24 hours'")
EXPIRED_ROWS_PER_WRITE = 20  # each remembered response also clears a few expired ones


class Idempotency:
    def __init__(self, *, session: AsyncSession, principal: str, key: str, fingerprint: str) -> None:
        self.session = session
        self.principal = principal
        self.key = key
        self.fingerprint = fingerprint

    async def stored_response(self) -> Response | None:
        """The first response to this key, or None when this request is the first (and now holds it)."""
        lock_id = func.hashtextextended(f"{self.principal}\n{self.key}", 0)
        if not (await self.session.exec(select(func.pg_try_advisory_xact_lock(lock_id)))).one():
            raise Conflict("a request with this Idempotency-Key is still in progress; retry later")
        record = (
            await self.session.exec(
                select(IdempotencyRecord).where(
                    col(IdempotencyRecord.principal) == self.principal,
                    col(IdempotencyRecord.key) == self.key,
                    col(IdempotencyRecord.created_at) > func.now() - TTL,
                )
            )
        ).one_or_none()
        if record is None:
            return None
        if record.fingerprint != self.fingerprint:
            error = {"loc": ["header", "idempotency-key"], "msg": "already used for another request", "type": "reused"}
            raise InvalidRequest("this Idempotency-Key was used with a different request", errors=[error])
        headers = {"Location": record.location, "ETag": record.etag, "Idempotent-Replayed": "true"}
        return Response(record.body, status_code=record.status, headers=headers, media_type="application/json")

    def recorder(self, public: type[SQLModel], location_of: Callable[[Any], str]) -> Callable[[Any], Awaitable[None]]:
        """A before-commit hook that stores the 201 this request is about to send."""

        async def remember(created: Any) -> None:
            values = {
                "principal": self.principal,
                "key": self.key,
                "fingerprint": self.fingerprint,
                "status": 201,
                "body": public.model_validate(created).model_dump_json(),
                "location": location_of(created),
                "etag": entity_tag(created),
            }
            statement = insert(IdempotencyRecord).values(values)
            replace_expired = {**values, "created_at": func.now()}
            await self.session.exec(
                statement.on_conflict_do_update(index_elements=["principal", "key"], set_=replace_expired)
            )
            await self._forget_some_expired()

        return remember

    async def _forget_some_expired(self) -> None:
        expired = (
            select(col(IdempotencyRecord.principal), col(IdempotencyRecord.key))
            .where(col(IdempotencyRecord.created_at) < func.now() - TTL)
            .limit(EXPIRED_ROWS_PER_WRITE)
        )
        columns = tuple_(col(IdempotencyRecord.principal), col(IdempotencyRecord.key))
        await self.session.exec(delete(IdempotencyRecord).where(columns.in_(expired)))


async def _fingerprint(request: Request) -> str:
    """The same request = same method, path and JSON body (key order and spacing do not matter)."""
    canonical = json.dumps(json.loads(await request.body()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{request.method} {request.url.path}\n{canonical}".encode()).hexdigest()


async def get_idempotency(
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Retry safely: the same key and body within 24 h replays the first response",
        ),
    ] = None,
) -> Idempotency | None:
    if idempotency_key is None:
        return None
    fingerprint = await _fingerprint(request)
    return Idempotency(session=session, principal=principal or "", key=idempotency_key, fingerprint=fingerprint)


IdempotencyDep = Annotated[Idempotency | None, Depends(get_idempotency)]
