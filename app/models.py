"""Tables and the API's schemas: what is stored, what a client may send, what it gets back."""

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, StringConstraints, field_validator
from pydantic import Field as PydanticField
from sqlalchemy import CheckConstraint, DateTime, Index, SmallInteger, String, Text, func, text
from sqlmodel import Field, SQLModel


def _storable(value: str) -> str:
    """PostgreSQL text cannot hold NUL, and UTF-8 cannot encode a lone surrogate: reject both."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


_Storable = AfterValidator(_storable)
# Labels: surrounding whitespace dropped, then 1..N characters. Free text: stored verbatim.
ProjectName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), _Storable]
TaskTitle = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), _Storable]
ProjectDescription = Annotated[str, StringConstraints(max_length=2_000), _Storable]
TaskDescription = Annotated[str, StringConstraints(max_length=10_000), _Storable]
SearchText = Annotated[str, StringConstraints(max_length=100), _Storable]


def _integral(value: object) -> object:
    """JSON has one number type, so 2.0 is the integer 2; but true and "2" are not numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be a whole number")
    return int(value)


Priority = Annotated[int, BeforeValidator(_integral), Field(ge=0, le=3, description="0 is the highest priority")]


class TaskStatus(StrEnum):
    todo = "todo"
    in_progress = "in_progress"
    done = "done"


# Deterministic constraint names: migrations stay stable and services can recognise violations.
SQLModel.metadata.naming_convention = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
}

_TIMESTAMP = DateTime(timezone=True)
_SET_BY_SERVER = {"server_default": func.now()}


class Audited(SQLModel):
    """Columns every resource has: server-owned identity, timestamps, version and authorship."""

    id: uuid.UUID = Field(primary_key=True, sa_column_kwargs={"server_default": text("gen_random_uuid()")})
    created_at: datetime = Field(sa_type=_TIMESTAMP, nullable=False, sa_column_kwargs=_SET_BY_SERVER)
    updated_at: datetime = Field(sa_type=_TIMESTAMP, nullable=False, sa_column_kwargs=_SET_BY_SERVER)
    version: int = Field(default=1, sa_column_kwargs={"server_default": text("1")})
    created_by: str | None = Field(default=None, max_length=320)
    updated_by: str | None = Field(default=None, max_length=320)


class Project(Audited, table=True):
    __tablename__ = "projects"
    __table_args__ = (
        Index("uq_projects_name_lower", func.lower(text("name")), unique=True),
        Index("ix_projects_created_at_id", "created_at", "id"),
    )

    name: str = Field(max_length=100)
    description: str | None = Field(default=None, max_length=2_000)


class Task(Audited, table=True):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_project_id_created_at_id", "project_id", "created_at", "id"),
        CheckConstraint("status IN ('todo', 'in_progress', 'done')", name="status"),
        CheckConstraint("priority BETWEEN 0 AND 3", name="priority"),
    )

    project_id: uuid.UUID = Field(foreign_key="projects.id", ondelete="CASCADE")
    title: str = Field(max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    status: TaskStatus = Field(default=TaskStatus.todo, sa_type=String(20))
    priority: int = Field(default=1, sa_type=SmallInteger)
    due_date: date | None = None


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
    created_at: datetime = Field(sa_type=_TIMESTAMP, nullable=False, sa_column_kwargs=_SET_BY_SERVER)


class InputSchema(SQLModel):
    """Request bodies: unknown (and server-owned) fields are an error, never silently dropped."""

    model_config = {"extra": "forbid"}  # subclasses with an example repeat it (see _example)


def _reject_null(value: object) -> object:
    """Merge-patch: null clears a field, so it is refused for fields that cannot be empty."""
    if value is None:
        raise ValueError("may not be null")
    return value


def _example(**values: object) -> Any:
    """Model config with one example, shown in /docs and in the OpenAPI document."""
    return {"extra": "forbid", "json_schema_extra": {"examples": [values]}}


class ProjectCreate(InputSchema):
    """A new project. The name is trimmed and unique, whatever its case."""

    model_config = _example(name="Website relaunch", description="Everything for the spring launch")

    name: ProjectName
    description: ProjectDescription | None = None


class ProjectUpdate(InputSchema):
    """A JSON merge patch: absent fields stay as they are, null clears `description`."""

    model_config = _example(description=None)

    name: ProjectName | None = None
    description: ProjectDescription | None = None

    _not_null = field_validator("name", mode="before")(_reject_null)


class ProjectPublic(SQLModel):
    """A project as the API returns it; `version` grows by one on every change (see ETag)."""

    id: uuid.UUID
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    version: int
    created_by: str | None
    updated_by: str | None


class TaskCreate(InputSchema):
    """A new task in the project named by the path."""

    model_config = _example(title="Write the launch post", status="todo", priority=1, due_date="2027-03-01")

    title: TaskTitle
    description: TaskDescription | None = None
    status: TaskStatus = TaskStatus.todo
    priority: Priority = 1
    due_date: date | None = None


class TaskUpdate(InputSchema):
    """A JSON merge patch; `project_id` moves the task to another existing project."""

    model_config = _example(status="done", due_date=None)

    project_id: uuid.UUID | None = None
    title: TaskTitle | None = None
    description: TaskDescription | None = None
    status: TaskStatus | None = None
    priority: Priority | None = None
    due_date: date | None = None

    _not_null = field_validator("project_id", "title", "status", "priority", mode="before")(_reject_null)


class TaskPublic(SQLModel):
    """A task as the API returns it."""

    id: uuid.UUID
    project_id: uuid.UUID
    title: str
    description: str | None
    status: TaskStatus
    priority: int
    due_date: date | None
    created_at: datetime
    updated_at: datetime
    version: int
    created_by: str | None
    updated_by: str | None


ItemT = TypeVar("ItemT")


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    next_cursor: str | None = PydanticField(description="Pass as `cursor` for the next page; null on the last page")
