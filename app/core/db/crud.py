"""Create, read, update and delete one row of any `Audited` table, by id.

Optimistic concurrency lives in the UPDATE and DELETE themselves (`version = ANY(accepted)`), so
of two writers holding the same ETag exactly one wins; the other gets 412. Every write is audited
(written once its transaction commits). Statements are compiled once per table and set of columns.
"""

import uuid
from functools import cache
from typing import TYPE_CHECKING, Any, NoReturn

import asyncpg
import sqlalchemy as sa
from sqlalchemy import Integer, bindparam, func
from sqlalchemy.dialects.postgresql import ARRAY

from app.core.db.statements import Row, Statement, python_side, table_of
from app.core.errors import PreconditionFailed, not_found
from app.core.models import Audited
from app.core.observability.audit import audit

if TYPE_CHECKING:
    from app.core.web.idempotency import Idempotency


@cache
def _insert_returning(model: type[Audited], columns: tuple[str, ...]) -> sa.Insert:
    table = table_of(model)
    values: dict[str, Any] = {column: bindparam(column) for column in columns}
    return sa.insert(table).values(values).returning(*table.c)


@cache
def _python_defaults(model: type[Audited]) -> tuple[tuple[str, bool, Any], ...]:
    """The table's Python-side defaults (`Field(default=...)`, `default_factory`) as (column, called,
    value or function). An insert sends them as values of its own: the keyed create runs its INSERT
    inside a CTE, where SQLAlchemy computes no Python-side default."""
    defaults = []
    for column in table_of(model).columns:
        default = column.default
        if default is not None and (default.is_scalar or default.is_callable):
            defaults.append((column.key, bool(default.is_callable), python_side(column, default)))
    return tuple(defaults)


def _with_python_defaults(model: type[Audited], values: dict[str, Any]) -> dict[str, Any]:
    for name, called, default in _python_defaults(model):
        if name not in values:
            values[name] = default() if called else default
    return values


@cache
def _insert(model: type[Audited], columns: tuple[str, ...]) -> Statement:
    return Statement(_insert_returning(model, columns))


@cache
def _select(model: type[Audited]) -> Statement:
    table = table_of(model)
    return Statement(sa.select(table).where(table.c.id == bindparam("id")))


def _accepted(table: Any) -> Any:
    """`If-Match` in SQL: any version when `accepted` is null, else one of the accepted versions."""
    accepted = bindparam("accepted", type_=ARRAY(Integer))
    return sa.or_(accepted.is_(None), table.c.version == func.any(accepted))


@cache
def _update(model: type[Audited], columns: tuple[str, ...]) -> Statement:
    table = table_of(model)
    changes: dict[str, Any] = {column: bindparam(column) for column in columns}
    changes |= {"version": table.c.version + 1, "updated_at": func.now(), "updated_by": bindparam("principal")}
    where = (table.c.id == bindparam("id"), _accepted(table))
    return Statement(sa.update(table).where(*where).values(changes).returning(*table.c))


@cache
def _delete(model: type[Audited]) -> Statement:
    table = table_of(model)
    where = (table.c.id == bindparam("id"), _accepted(table))
    return Statement(sa.delete(table).where(*where).returning(table.c.id, table.c.version))


async def create(
    connection: asyncpg.Connection,
    model: type[Audited],
    values: dict[str, Any],
    *,
    principal: str | None,
    idempotency: "Idempotency | None" = None,
    location_prefix: str | None = None,
) -> Row:
    """One INSERT ... RETURNING: the database fills id, timestamps and version. With an
    Idempotency-Key, the same statement stores the answer, whose Location is `location_prefix` +
    the new id (`AnswerStored` when the key has one: the app's handler replays it). Give the same
    prefix to `created_response`, so that a replay's Location is the first answer's."""
    if idempotency is not None and location_prefix is None:  # on every request, keyed or not: the first test finds it
        raise TypeError("a create with idempotency= needs location_prefix=, where the new resource will be")
    values = _with_python_defaults(model, values | {"created_by": principal, "updated_by": principal})
    columns = tuple(values)
    created: Row | None
    if idempotency is not None and idempotency.key is not None and location_prefix is not None:
        create = _insert_returning(model, columns)
        created = await idempotency.create(connection, table_of(model), create, values, location_prefix=location_prefix)
    else:
        created = await _insert(model, columns).fetchrow(connection, **values)
    assert created is not None
    _audit("create", model, created, principal)
    return created


async def get(connection: asyncpg.Connection, model: type[Audited], resource_id: uuid.UUID) -> Row:
    """The row, or a 404 problem naming the resource."""
    row = await _select(model).fetchrow(connection, id=resource_id)
    if row is None:
        raise not_found(model.resource_name, resource_id)
    return row


async def update(
    connection: asyncpg.Connection,
    model: type[Audited],
    resource_id: uuid.UUID,
    changes: dict[str, Any],
    *,
    accepted_versions: frozenset[int] | None,
    principal: str | None,
) -> Row:
    """Apply `changes` if the row still has an accepted version (None: any); bump its version.

    An empty merge patch changes nothing, so the version stays and nothing is audited.
    """
    if not changes:
        row = await get(connection, model, resource_id)
        if accepted_versions is not None and row["version"] not in accepted_versions:
            raise _stale()
        return row
    accepted = list(accepted_versions) if accepted_versions is not None else None
    updated = await _update(model, tuple(changes)).fetchrow(
        connection, **changes, id=resource_id, principal=principal, accepted=accepted
    )
    if updated is None:
        await _raise_missing_or_stale(connection, model, resource_id)
    _audit("update", model, updated, principal)
    return updated


async def delete(
    connection: asyncpg.Connection,
    model: type[Audited],
    resource_id: uuid.UUID,
    *,
    accepted_versions: frozenset[int] | None,
    principal: str | None,
) -> None:
    accepted = list(accepted_versions) if accepted_versions is not None else None
    deleted = await _delete(model).fetchrow(connection, id=resource_id, accepted=accepted)
    if deleted is None:
        await _raise_missing_or_stale(connection, model, resource_id)
    _audit("delete", model, deleted, principal)


async def _raise_missing_or_stale(
    connection: asyncpg.Connection, model: type[Audited], resource_id: uuid.UUID
) -> NoReturn:
    await get(connection, model, resource_id)  # 404 when it is gone
    raise _stale()


def _stale() -> PreconditionFailed:
    return PreconditionFailed("If-Match does not match the current ETag; fetch the resource and retry")


def _audit(action: str, model: type[Audited], row: Row, principal: str | None) -> None:
    audit(
        action=action,
        resource_type=model.resource_name,
        resource_id=row["id"],
        version=row["version"],
        principal=principal,
    )
