"""Project behaviours. Keyword-only, session first; they raise typed errors, never HTTP responses."""

import uuid

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.errors import Conflict
from app.models import Page, Project, ProjectCreate, ProjectUpdate
from app.pagination import PageRequest, keyset, to_page
from app.services import versioned

_UNIQUE_NAME = "uq_projects_name_lower"


def _name_taken(error: IntegrityError, name: str | None) -> Exception:
    if versioned.violated_constraint(error) == _UNIQUE_NAME:
        return Conflict(f"a project named {name!r} already exists (names are case-insensitive)")
    return error


async def create_project(
    *,
    session: AsyncSession,
    data: ProjectCreate,
    principal: str | None,
    before_commit: versioned.BeforeCommit | None = None,
) -> Project:
    values = data.model_dump()
    try:
        return await versioned.insert_returning(
            session, Project, values, principal=principal, before_commit=before_commit
        )
    except IntegrityError as error:  # the unique index decides, so two racing creates cannot both win
        raise _name_taken(error, data.name) from None


async def list_projects(*, session: AsyncSession, page: PageRequest, name_contains: str | None) -> Page[Project]:
    statement = select(Project)
    if name_contains:  # autoescape: `%` and `_` in the query are literal characters, not wildcards
        statement = statement.where(col(Project.name).icontains(name_contains, autoescape=True))
    rows = (await session.exec(keyset(statement, Project, page))).all()
    return to_page(list(rows), page)


async def update_project(
    *,
    session: AsyncSession,
    project_id: uuid.UUID,
    changes: ProjectUpdate,
    expected_versions: frozenset[int] | None,
    principal: str | None,
) -> Project:
    try:
        return await versioned.update_versioned(
            session,
            Project,
            resource_id=project_id,
            values=changes.model_dump(exclude_unset=True),
            expected_versions=expected_versions,
            principal=principal,
        )
    except IntegrityError as error:
        raise _name_taken(error, changes.name) from None


async def delete_project(
    *, session: AsyncSession, project_id: uuid.UUID, expected_versions: frozenset[int] | None, principal: str | None
) -> None:
    """Deletes the project's tasks too (ON DELETE CASCADE), in the same statement."""
    await versioned.delete_versioned(
        session, Project, resource_id=project_id, expected_versions=expected_versions, principal=principal
    )
