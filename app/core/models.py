"""What every resource's models share: the audited columns, input rules and text types."""

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BeforeValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
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


def reject_null(value: object) -> object:
    """Merge patch: null clears a field, so it is refused for fields that cannot be empty."""
    if value is None:
        raise ValueError("may not be null")
    return value


class InputSchema(SQLModel):
    """Request bodies: unknown (and server-owned) fields are an error, never silently dropped.

    A merge patch's field that may be left out but not cleared is typed `X | None = None` (absent:
    unchanged) and refuses null with `field_validator(..., mode="before")(reject_null)`; that same
    declaration takes `null` out of the field's JSON Schema, so generated clients cannot send it.
    """

    model_config = {"extra": "forbid"}  # subclasses inherit it, also when they add an example

    @classmethod
    def not_nullable(cls) -> set[str]:
        """The fields whose validators include reject_null."""
        validators = cls.__pydantic_decorators__.field_validators.values()
        return {name for validator in validators if validator.func is reject_null for name in validator.info.fields}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        properties = handler.resolve_ref_schema(schema).get("properties", {})
        for name in cls.not_nullable():
            field = properties[name]
            options = [option for option in field.pop("anyOf", [field]) if option.get("type") != "null"]
            if len(options) == 1:
                field.update(options[0])
            else:  # a union of several types besides null: keep it, without null
                field["anyOf"] = options
            field.pop("default", None)  # leaving the field out is not sending null
        return schema


def example(**values: object) -> Any:
    """Model config with one example, shown in /docs and in the OpenAPI document."""
    return {"json_schema_extra": {"examples": [values]}}
