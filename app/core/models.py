"""What every resource's models share: the audited columns, input rules and text types."""

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BeforeValidator
from sqlalchemy import DateTime, func, text
from sqlmodel import Field, SQLModel

# Deterministic constraint names: migrations stay stable and services can recognise violations.
SQLModel.metadata.naming_convention = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
}

TIMESTAMP = DateTime(timezone=True)
SET_BY_SERVER = {"server_default": func.now()}


def _storable(value: str) -> str:
    """PostgreSQL text cannot hold NUL. (A lone surrogate cannot get this far: the body's strict
    JSON check refuses `\\ud800`, and query strings are decoded with replacement characters.)"""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# Annotate every client-supplied text field with it: `Annotated[str, StringConstraints(...), Storable]`.
Storable = AfterValidator(_storable)

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_date_text(value: object) -> object:
    """Pydantic would also take 0 (as 1970-01-01) and a midnight date-time; a date is YYYY-MM-DD."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date as YYYY-MM-DD")
    return value  # pydantic then checks that the day exists


# A calendar date in a request body, as ISO 8601 text ("2027-03-01").
IsoDate = Annotated[date, BeforeValidator(_iso_date_text)]


class Audited(SQLModel):
    """Columns every resource's table has: server-owned identity, timestamps, version, authorship.

    `resource_name` names one row in 404 details and audit entries ("task", "task label").
    """

    resource_name: ClassVar[str]

    id: uuid.UUID = Field(primary_key=True, sa_column_kwargs={"server_default": text("gen_random_uuid()")})
    created_at: datetime = Field(sa_type=TIMESTAMP, nullable=False, sa_column_kwargs=SET_BY_SERVER)
    updated_at: datetime = Field(sa_type=TIMESTAMP, nullable=False, sa_column_kwargs=SET_BY_SERVER)
    version: int = Field(sa_column_kwargs={"server_default": text("1")})
    created_by: str | None = Field(default=None, max_length=320)
    updated_by: str | None = Field(default=None, max_length=320)


class AuditedPublic(SQLModel):
    """The audited fields as the API returns them; `version` grows by one on every change (see ETag)."""

    id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    version: int
    created_by: str | None
    updated_by: str | None


class InputSchema(SQLModel):
    """Request bodies: unknown (and server-owned) fields are an error, never silently dropped."""

    model_config = {"extra": "forbid"}  # subclasses inherit it, also when they add an example


def reject_null(value: object) -> object:
    """Merge patch: null clears a field, so it is refused for fields that cannot be empty."""
    if value is None:
        raise ValueError("may not be null")
    return value


def example(**values: object) -> Any:
    """Model config with one example, shown in /docs and in the OpenAPI document."""
    return {"json_schema_extra": {"examples": [values]}}
