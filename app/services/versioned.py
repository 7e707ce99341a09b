"""Writes shared by every resource: optimistic concurrency lives in the UPDATE/DELETE itself."""

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from sqlalchemy import delete, func, insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.errors import NotFound, PreconditionFailed
from app.logs import audit
from app.models import Audited

ModelT = TypeVar("ModelT", bound=Audited)

# The statements below return fresh rows; there is nothing in the session to synchronise.
_NO_SYNC = {"synchronize_session": False}


def violated_constraint(error: IntegrityError) -> str | None:
    """Name of the constraint asyncpg reports (SQLAlchemy keeps asyncpg's exception as the cause)."""
    return getattr(error.orig.__cause__, "constraint_name", None) if error.orig else None


def missing_parent(error: IntegrityError, model: type[Audited], parent: type[Audited]) -> bool:
    """Whether `error` is `model`'s foreign key to `parent` finding no such row."""
    table, parent_table = model.__table__, parent.__table__  # type: ignore[attr-defined]
    keys = {key.name for key in table.foreign_key_constraints if key.referred_table is parent_table}
    return violated_constraint(error) in keys


def not_found(model: type[Audited], resource_id: uuid.UUID) -> NotFound:
    return NotFound(f"{model.__name__.lower()} {resource_id} does not exist")


def _audit(action: str, resource: Audited, principal: str | None) -> None:
    audit(
        action=action,
        resource_type=type(resource).__name__.lower(),
        resource_id=resource.id,
        version=resource.version,
        principal=principal,
    )


BeforeCommit = Callable[[Any], Awaitable[None]]  # more work for the write's own transaction


async def insert_returning(
    session: AsyncSession,
    model: type[ModelT],
    values: dict[str, Any],
    *,
    principal: str | None,
    before_commit: BeforeCommit | None = None,
) -> ModelT:
    """One INSERT ... RETURNING: the database fills id, timestamps and version."""
    values = values | {"created_by": principal, "updated_by": principal}
    created: ModelT = (await session.exec(insert(model).values(**values).returning(model))).scalars().one()
    if before_commit is not None:
        await before_commit(created)
    await session.commit()
    _audit("create", created, principal)
    return created


async def get_or_none(session: AsyncSession, model: type[ModelT], resource_id: uuid.UUID) -> ModelT | None:
    return await session.get(model, resource_id)


async def update_versioned(
    session: AsyncSession,
    model: type[ModelT],
    *,
    resource_id: uuid.UUID,
    values: dict[str, Any],
    expected_versions: frozenset[int] | None,
    principal: str | None,
) -> ModelT:
    """Apply `values` only if the row still has an expected version; bump version and audit fields.

    Two writers holding the same ETag race on the row lock: the second re-checks `version`
    after the first commits, matches nothing, and gets 412. No lost update.
    """
    where = [col(model.id) == resource_id]
    if expected_versions is not None:
        where.append(col(model.version).in_(expected_versions))
    if values:
        audit = {"version": col(model.version) + 1, "updated_at": func.now(), "updated_by": principal}
        statement = update(model).where(*where).values(**values, **audit).returning(model)
        updated: ModelT | None = (await session.exec(statement, execution_options=_NO_SYNC)).scalars().one_or_none()
    else:  # an empty merge patch changes nothing, so the version stays
        updated = (await session.exec(select(model).where(*where))).one_or_none()
    if updated is None:
        await _raise_missing_or_stale(session, model, resource_id)
    await session.commit()
    if values:
        _audit("update", updated, principal)
    return updated


async def delete_versioned(
    session: AsyncSession,
    model: type[ModelT],
    *,
    resource_id: uuid.UUID,
    expected_versions: frozenset[int] | None,
    principal: str | None,
) -> None:
    statement = delete(model).where(col(model.id) == resource_id)
    if expected_versions is not None:
        statement = statement.where(col(model.version).in_(expected_versions))
    returning = statement.returning(model).execution_options(**_NO_SYNC)
    deleted: ModelT | None = (await session.exec(returning)).scalars().one_or_none()
    if deleted is None:
        await _raise_missing_or_stale(session, model, resource_id)
    await session.commit()
    _audit("delete", deleted, principal)


async def _raise_missing_or_stale(session: AsyncSession, model: type[ModelT], resource_id: uuid.UUID) -> NoReturn:
    exists = (await session.exec(select(col(model.id)).where(col(model.id) == resource_id))).first()
    if exists is None:
        raise not_found(model, resource_id)
    raise PreconditionFailed("If-Match does not match the current ETag; fetch the resource and retry")
