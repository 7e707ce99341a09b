"""The tasks table and the task schemas of the API."""

import uuid
from datetime import date
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import BeforeValidator, StringConstraints, field_validator
from sqlalchemy import CheckConstraint, Index, SmallInteger, String
from sqlmodel import Field

from app.core.models import Audited, AuditedPublic, InputSchema, IsoDate, Storable, example, reject_null

TaskTitle = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), Storable]
TaskDescription = Annotated[str, StringConstraints(max_length=10_000), Storable]


def _integral(value: object) -> object:
    """JSON has one number type, so 2.0 is the integer 2; but true and "2" are not numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be a whole number")
    return int(value)


# Field before BeforeValidator: bounds that precede a validator in Annotated become JSON Schema's
# minimum/maximum; after it, pydantic writes them as its own ge/le, which no client generator reads.
Priority = Annotated[int, Field(ge=0, le=3, description="0 is the highest priority"), BeforeValidator(_integral)]


class TaskStatus(StrEnum):
    todo = "todo"
    in_progress = "in_progress"
    done = "done"


class Task(Audited, table=True):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_project_id_created_at_id", "project_id", "created_at", "id"),
        CheckConstraint("status IN ('todo', 'in_progress', 'done')", name="status"),
        CheckConstraint("priority BETWEEN 0 AND 3", name="priority"),
    )
    resource_name: ClassVar[str] = "task"

    project_id: uuid.UUID = Field(foreign_key="projects.id", ondelete="CASCADE")
    title: str = Field(max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    status: TaskStatus = Field(default=TaskStatus.todo, sa_type=String(20))
    priority: int = Field(default=1, sa_type=SmallInteger)
    due_date: date | None = None


class TaskCreate(InputSchema):
    """A new task in the project named by the path."""

    model_config = example(title="Write the launch post", status="todo", priority=1, due_date="2027-03-01")

    title: TaskTitle
    description: TaskDescription | None = None
    status: TaskStatus = TaskStatus.todo
    priority: Priority = 1
    due_date: IsoDate | None = None


class TaskUpdate(InputSchema):
    """A JSON merge patch; `project_id` moves the task to another existing project."""

    model_config = example(status="done", due_date=None)

    project_id: uuid.UUID | None = None
    title: TaskTitle | None = None
    description: TaskDescription | None = None
    status: TaskStatus | None = None
    priority: Priority | None = None
    due_date: IsoDate | None = None

    _not_null = field_validator("project_id", "title", "status", "priority", mode="before")(reject_null)


class TaskPublic(AuditedPublic):
    """A task as the API returns it."""

    project_id: uuid.UUID
    title: str
    description: str | None
    status: TaskStatus
    priority: int
    due_date: date | None
