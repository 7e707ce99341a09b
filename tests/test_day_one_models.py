"""A resource changed the way FastAPI's and SQLModel's docs teach, through HTTP: a column its public
model leaves out is in no answer; `Field(default_factory=...)`, a Python-side `onupdate` and a literal
None are honoured; a row rendered where no response model shapes it is refused, never sent whole.

The scratch table lives in a database of its own (migrated, plus the table), and off
`SQLModel.metadata`, so the migration tests never see it.
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from types import SimpleNamespace
from typing import ClassVar

import asyncpg
import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from sqlalchemy import String, bindparam, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable
from sqlmodel import Field, SQLModel, col

import app.api
from app.core.db import crud
from app.core.db.database import database_of, migration_engine
from app.core.db.pagination import Keyset, Page, PageDep
from app.core.db.statements import Statement
from app.core.models import Audited, AuditedPublic, InputSchema
from app.core.settings import Settings
from app.core.web.idempotency import IdempotencyDep
from app.core.web.openapi import NOT_MODIFIED
from app.core.web.resources import (
    RenderedJSON,
    RowShape,
    conditional_response,
    created_response,
    resource_response,
    shape_of,
)
from tests.helpers import asgi_client, libpq_url, run_alembic, unique


class Note(Audited, table=True):
    __tablename__ = "scratch_notes"
    resource_name: ClassVar[str] = "note"

    name: str = Field(max_length=100)
    internal_note: str = Field(default="for staff only")  # the column nobody chose to publish
    ref: str = Field(default_factory=lambda: uuid.uuid4().hex, max_length=32)
    touched: str | None = Field(default=None, sa_column_kwargs={"onupdate": lambda: "by onupdate"})


SQLModel.metadata.remove(Note.__table__)  # type: ignore[attr-defined]
_NOTES = Note.__table__  # type: ignore[attr-defined]


class NoteCreate(InputSchema):
    name: str


class NotePublic(AuditedPublic):
    name: str
    ref: str
    touched: str | None


class Colour(StrEnum):
    red = "red"
    blue = "blue"


_CLEAR_TOUCHED = Statement(update(_NOTES).where(_NOTES.c.id == bindparam("id")).values(touched=None).returning(_NOTES))
_NOTE_PAGE = Keyset(select(Note))
_NAMED = Statement(select(Note.name, Note.internal_note).where(col(Note.id) == bindparam("id")))

router = APIRouter(prefix="/v1/notes")


@router.post("", status_code=201, response_model=NotePublic)
async def create_note(body: NoteCreate, idempotency: IdempotencyDep, request: Request) -> Response:
    prefix = "/v1/notes/"
    async with database_of(request).connection() as connection:
        note = await crud.create(
            connection, Note, body.model_dump(), principal=None, idempotency=idempotency, location_prefix=prefix
        )
    return created_response(note, location_prefix=prefix)


@router.get("", response_model=Page[NotePublic])
async def list_notes(request: Request, page: PageDep) -> Response:
    async with database_of(request).connection() as connection:
        return RenderedJSON(await _NOTE_PAGE.page(connection, page))


@router.get("/{note_id}", response_model=NotePublic, responses=NOT_MODIFIED)
async def read_note(note_id: uuid.UUID, request: Request) -> Response:
    async with database_of(request).connection() as connection:
        return conditional_response(await crud.get(connection, Note, note_id), request.headers.get("if-none-match"))


@router.patch("/{note_id}", response_model=NotePublic)
async def rename_note(note_id: uuid.UUID, body: NoteCreate, request: Request) -> Response:
    async with database_of(request).transaction() as connection:
        note = await crud.update(connection, Note, note_id, body.model_dump(), accepted_versions=None, principal=None)
    return resource_response(note)


@router.post("/{note_id}/untouch", response_model=NotePublic)
async def untouch(note_id: uuid.UUID, request: Request) -> Response:
    async with database_of(request).connection() as connection:
        return RenderedJSON(await _CLEAR_TOUCHED.fetchrow(connection, id=note_id))


@router.get("/{note_id}/whole")  # no response_model: nothing says which columns are public
async def whole_note(note_id: uuid.UUID, request: Request) -> Response:
    async with database_of(request).connection() as connection:
        return RenderedJSON(await crud.get(connection, Note, note_id))


@router.get("/{note_id}/too-little", response_model=NotePublic)
async def too_little(note_id: uuid.UUID, request: Request) -> Response:
    async with database_of(request).connection() as connection:
        return RenderedJSON(await _NAMED.fetchrow(connection, id=note_id))


@router.get("/-/colours", response_model=dict[Colour, int])
async def colours() -> Response:
    return RenderedJSON({Colour.red: 1, Colour.blue: 2})


@router.get("/-/engine")
async def engine_in_a_request(request: Request) -> Response:
    async with migration_engine(request.app.state.settings):
        return Response(status_code=204)


@pytest.fixture(scope="module")
def notes_database(create_database: Callable[[], str]) -> str:
    url = create_database()
    run_alembic(url, "upgrade", "head")

    async def create_table() -> None:
        connection = await asyncpg.connect(libpq_url(url))
        try:
            await connection.execute(str(CreateTable(_NOTES).compile(dialect=postgresql.dialect())))  # type: ignore[no-untyped-call]
        finally:
            await connection.close()

    asyncio.run(create_table())
    return url


@pytest.fixture
async def notes_app(notes_database: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FastAPI]:
    """The app as create_app builds it, with the scratch router registered beside the resources."""
    monkeypatch.setattr(app.api, "RESOURCE_ROUTERS", [*app.api.RESOURCE_ROUTERS, router])
    application = app.api.create_app(Settings(database_url=notes_database, instance_connection_name=None))
    yield application
    await application.state.database.dispose()


@pytest.fixture
async def notes(notes_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(notes_app) as http:
        yield http


async def _stored(url: str, note_id: str) -> asyncpg.Record:
    connection = await asyncpg.connect(libpq_url(url))
    try:
        row: asyncpg.Record = await connection.fetchrow("SELECT * FROM scratch_notes WHERE id = $1", uuid.UUID(note_id))
        return row
    finally:
        await connection.close()


async def _kept_for_the_key(url: str, key: str) -> asyncpg.Record:
    connection = await asyncpg.connect(libpq_url(url))
    try:
        row: asyncpg.Record = await connection.fetchrow(
            "SELECT body, resource::text FROM idempotency_keys WHERE key = $1", key
        )
        return row
    finally:
        await connection.close()


PUBLIC = {"id", "created_at", "updated_at", "version", "created_by", "updated_by", "name", "ref", "touched"}


async def test_a_column_the_public_model_leaves_out_is_in_no_answer(
    notes: httpx.AsyncClient, notes_database: str
) -> None:
    headers = {"Idempotency-Key": unique("note")}
    created = await notes.post("/v1/notes", json={"name": "n"}, headers=headers)
    assert created.status_code == 201, created.text
    replayed = await notes.post("/v1/notes", json={"name": "n"}, headers=headers)
    read = await notes.get(created.headers["location"])
    listed = await notes.get("/v1/notes", params={"limit": 100})
    renamed = await notes.patch(created.headers["location"], json={"name": "m"})
    assert (await _stored(notes_database, created.json()["id"]))["internal_note"] == "for staff only"
    for answer in (created, replayed, read, renamed):
        assert set(answer.json()) == PUBLIC, answer.text
        assert list(answer.json()) == list(NotePublic.model_fields)  # in the model's order
    assert replayed.headers["idempotent-replayed"] == "true"
    kept = await _kept_for_the_key(notes_database, headers["Idempotency-Key"])  # what a rolled-back release replays
    assert kept["body"].encode() == created.content and "staff" not in kept["resource"], kept
    assert all(set(item) == PUBLIC for item in listed.json()["items"]) and listed.json()["items"]
    assert b"staff" not in b"".join(answer.content for answer in (created, replayed, read, listed, renamed))
    unchanged = await notes.get(created.headers["location"], headers={"If-None-Match": renamed.headers["etag"]})
    assert (unchanged.status_code, unchanged.content) == (304, b"")


async def test_a_router_added_after_create_app_is_filtered_too(notes_app: FastAPI, notes: httpx.AsyncClient) -> None:
    later = APIRouter(prefix="/v2/notes")
    later.add_api_route(
        "/{note_id}", read_note, methods=["GET"], response_model=NotePublic, operation_id="read_note_v2"
    )
    notes_app.include_router(later)
    note = (await notes.post("/v1/notes", json={"name": "later"})).json()
    response = await notes.get(f"/v2/notes/{note['id']}")
    assert (response.status_code, set(response.json())) == (200, PUBLIC)


async def test_a_row_rendered_without_a_response_model_is_refused_naming_the_fix(
    notes: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    note = (await notes.post("/v1/notes", json={"name": "whole"})).json()
    with caplog.at_level(logging.ERROR):
        response = await notes.get(f"/v1/notes/{note['id']}/whole")
    assert response.status_code == 500 and b"staff" not in response.content
    logged = "\n".join(str(record.exc_info[1]) for record in caplog.records if record.exc_info)
    assert "GET /v1/notes/{note_id}/whole declares no response_model" in logged
    assert "declare response_model=" in logged


async def test_a_row_without_a_field_the_model_needs_is_refused_naming_it(
    notes: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    note = (await notes.post("/v1/notes", json={"name": "little"})).json()
    with caplog.at_level(logging.ERROR):
        response = await notes.get(f"/v1/notes/{note['id']}/too-little")
    assert response.status_code == 500
    logged = "\n".join(str(record.exc_info[1]) for record in caplog.records if record.exc_info)
    assert "NotePublic has fields the row has no column for: id, created_at" in logged


async def test_default_factory_onupdate_and_a_literal_none_are_honoured(notes: httpx.AsyncClient) -> None:
    first = (await notes.post("/v1/notes", json={"name": "a"})).json()
    second = (await notes.post("/v1/notes", json={"name": "b"})).json()
    assert len(first["ref"]) == 32 and first["ref"] != second["ref"]  # called per insert
    assert first["touched"] is None
    renamed = await notes.patch(f"/v1/notes/{first['id']}", json={"name": "c"})
    assert (renamed.status_code, renamed.json()["touched"], renamed.json()["ref"]) == (200, "by onupdate", first["ref"])
    cleared = await notes.post(f"/v1/notes/{first['id']}/untouch")  # .values(touched=None)
    assert (cleared.status_code, cleared.json()["touched"]) == (200, None)


async def test_a_dict_with_enum_keys_is_rendered(notes: httpx.AsyncClient) -> None:
    response = await notes.get("/v1/notes/-/colours")
    assert (response.status_code, response.json()) == (200, {"red": 1, "blue": 2})


async def test_the_migration_engine_is_refused_inside_a_request(
    notes: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = await notes.get("/v1/notes/-/engine")
    assert response.status_code == 500
    logged = "\n".join(str(record.exc_info[1]) for record in caplog.records if record.exc_info)
    assert "serves Alembic only" in logged and "database_of(request).connection()" in logged


async def test_the_migration_engine_works_outside_a_request(notes_database: str) -> None:
    settings = Settings(database_url=notes_database, instance_connection_name=None)
    async with migration_engine(settings) as engine, engine.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(_NOTES))).scalar() is not None


def test_a_default_that_needs_the_orm_context_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import Column, MetaData, Table

    from app.core.db.statements import UnsupportedDefault, check_python_defaults

    metadata = MetaData()
    Table("odd", metadata, Column("stamp", String, default=lambda context: context.get_current_parameters()["x"]))
    with pytest.raises(UnsupportedDefault, match=r"odd\.stamp: .*server_default"):
        check_python_defaults(metadata)
    monkeypatch.setattr(SQLModel, "metadata", metadata)
    with pytest.raises(UnsupportedDefault, match=r"odd\.stamp"):
        app.api.create_app(Settings(database_url="postgresql+asyncpg://nobody@localhost/none"))


class Owner(SQLModel):
    id: uuid.UUID
    name: str


class NoteWithOwner(NotePublic):
    owner: Owner | None = None


@pytest.mark.parametrize(
    ("response_model", "rows_take"),
    [
        (NotePublic, NotePublic),
        (Page[NotePublic], NotePublic),
        (list[NotePublic], NotePublic),
        (NoteWithOwner, NoteWithOwner),
    ],
)
def test_a_row_takes_the_shape_of_its_own_model_even_with_a_nested_one(response_model: object, rows_take: type) -> None:
    """A model with a nested model is still the row's own shape; only collections hold rows."""
    shape = shape_of(SimpleNamespace(response_model=response_model, methods={"GET"}, path="/x"))
    assert isinstance(shape, RowShape) and shape.model is rows_take
