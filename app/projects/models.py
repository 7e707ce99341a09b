"""The projects table and the project schemas of the API."""

from typing import Annotated, ClassVar

from pydantic import StringConstraints, field_validator
from sqlalchemy import Index, func, text
from sqlmodel import Field

from app.core.models import Audited, AuditedPublic, InputSchema, Storable, example, reject_null

# Surrounding whitespace dropped, then 1..100 characters; the description is stored verbatim.
ProjectName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), Storable]
ProjectDescription = Annotated[str, StringConstraints(max_length=2_000), Storable]
NameSearch = Annotated[str, StringConstraints(max_length=100), Storable]


class Project(Audited, table=True):
    __tablename__ = "projects"
    __table_args__ = (
        Index("uq_projects_name_lower", func.lower(text("name")), unique=True),
        Index("ix_projects_created_at_id", "created_at", "id"),
    )
    resource_name: ClassVar[str] = "project"

    name: str = Field(max_length=100)
    description: str | None = Field(default=None, max_length=2_000)


class ProjectCreate(InputSchema):
    """A new project. The name is trimmed and unique, whatever its case."""

    model_config = example(name="Website relaunch", description="Everything for the spring launch")

    name: ProjectName
    description: ProjectDescription | None = None


class ProjectUpdate(InputSchema):
    """A JSON merge patch: absent fields stay as they are, null clears `description`."""

    model_config = example(description=None)

    name: ProjectName | None = None
    description: ProjectDescription | None = None

    _not_null = field_validator("name", mode="before")(reject_null)


class ProjectPublic(AuditedPublic):
    """A project as the API returns it."""

    name: str
    description: str | None
