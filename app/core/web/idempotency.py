"""Safe retries for POST: the `Idempotency-Key` header (IETF draft), as the contract describes it.

A keyed create is one statement (`Idempotency.create`): it inserts the row and, from the row it
returns, the key with the columns the route publishes (its response model's), so either both
exist or neither does: a request that fails leaves no record, and its retry runs afresh. When the
key already holds a live answer, its ON
CONFLICT calls `idempotency_key_live()` (made by the migrations), which aborts the statement, row
and all; a second round trip then reads the stored answer and replays it, rendered from the stored
columns exactly as the first answer was. A repeat arriving while the first still runs waits on the
key's unique index until the first ends, then replays its answer (or, if the first failed, runs
afresh). Keys are scoped per principal and kept 24 hours.
"""

import hashlib
import json
import re
from functools import cache
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import StringConstraints, TypeAdapter, ValidationError
from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Index,
    SmallInteger,
    Table,
    Text,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    literal_column,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.sql.dml import Insert
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from app.core.db.statements import Row, Statement
from app.core.errors import Answered, InvalidRequest
from app.core.identity.auth import principal_of
from app.core.models import TIMESTAMP
from app.core.web.resources import UnshapedRow, current_shape, entity_tag, resource_response

EXPIRED_ROWS_PER_WRITE = 20  # each remembered answer also clears a few expired ones
KEY_LIVE_SQLSTATE = "IK409"  # raised by idempotency_key_live(), created by the migrations


# The first response to a POST sent with an Idempotency-Key, replayed for 24 hours. A Core table, not
# a SQLModel class: only statements read it, and a table model's pydantic validator and ORM mapper,
# never used here, were 3-5 ms of start-up (docs/benchmarks.md). Its DDL is the migrations' own.
_TABLE = Table(
    "idempotency_keys",
    SQLModel.metadata,  # where Alembic looks, with the resources' tables
    Column("principal", AutoString(320), primary_key=True),  # "" when authentication is off
    Column("key", AutoString(255), primary_key=True),
    Column("fingerprint", AutoString(64), nullable=False),  # sha256 of method, path and canonical JSON body
    Column("status", SmallInteger, nullable=False),
    # The answer as JSON text. Keys stored by an earlier release replay it as it is; this release
    # replays `resource` and fills `body` with the first answer's text, for a release rolled back to.
    Column("body", Text, nullable=False),
    Column("location", AutoString(2048), nullable=False),
    Column("etag", AutoString(100), nullable=False),
    Column("created_at", TIMESTAMP, nullable=False, server_default=func.now()),
    Column("resource", JSONB, nullable=True),  # the public columns, typed
    Index("ix_idempotency_keys_created_at", "created_at"),
)
_TTL = text("interval '24 hours'")
_KEY_COLUMNS = tuple_(_TABLE.c.principal, _TABLE.c.key)
# Named apart from any column a resource's create may bind.
_THIS_KEY = tuple_(bindparam("idempotency_principal", type_=Text), bindparam("idempotency_key", type_=Text))
_address: Any = literal_column(f"{_TABLE.name}.ctid")  # a row version's address
_EXPIRED = _TABLE.c.created_at < func.now() - _TTL
# Whether any key has expired at all, from the created_at index's first entry (min() is planned as
# that one lookup); until one has, nothing below runs. Looked for directly, the expired keys were
# found by a scan of the whole table whenever the statement's plan was made while the table was
# small (just after a deploy, say), and PostgreSQL keeps the plan as the table grows: a keyed
# create then read every key to find none, at a third of its rate on a table of a few thousand.
# tests/test_idempotency.py holds a plan made on the emptied, analyzed table to index lookups.
_ANY_EXPIRED = select(func.min(_TABLE.c.created_at)).scalar_subquery() < func.now() - _TTL
# Then the oldest few, through the same index, locked and deleted by address (a TID scan). Rows
# another statement holds are skipped: it may be storing a new answer under an expired key, and
# concurrent creates need not queue on the same few rows. A row stored again and committed since
# this statement began is re-checked by the lock on its newest version, which is then live and
# skipped; the rows deleted are the versions this statement locked.
_oldest_expired = (
    select(_address.label("row"))
    .where(_EXPIRED, _KEY_COLUMNS != _THIS_KEY)
    .order_by(_TABLE.c.created_at)
    .limit(EXPIRED_ROWS_PER_WRITE)
    .with_for_update(skip_locked=True)
    .subquery("expired")
)
_FORGET = delete(_TABLE).where(
    _ANY_EXPIRED,
    _address == func.any(func.array(select(_oldest_expired.c.row).scalar_subquery())),  # ctid = ANY(ARRAY(...))
    _EXPIRED,  # already so for every row locked above: kept as a guard
)
_LIVE = _TABLE.c.created_at > func.now() - _TTL
_ANSWER = ("fingerprint", "status", "body", "location", "etag", "resource")


_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


def _as_json_text(column: Any) -> Any:
    """`column` as the renderer spells it, where PostgreSQL's JSON spelling differs: timestamps as
    orjson with OPT_UTC_Z writes them (UTC, `Z`, microseconds only when there are some), dates as
    YYYY-MM-DD. Other types go to row_to_json as they are."""
    kind = column.type
    if isinstance(kind, DateTime):
        moment = func.timezone(literal_column("'UTC'"), column) if kind.timezone else column
        # orjson writes a fraction only when there is one; `.US` always writes six digits, so those
        # of a whole second are dropped (the spelling's only "."): one to_char per timestamp.
        spelled = func.to_char(moment, literal_column("'YYYY-MM-DD\"T\"HH24:MI:SS.US'"))
        spelled = func.replace(spelled, literal_column("'.000000'"), literal_column("''"))
        return spelled.op("||")(literal_column("'Z'")) if kind.timezone else spelled
    if isinstance(kind, Date):
        return func.to_char(column, literal_column("'YYYY-MM-DD'"))
    return column


def _public_columns(created: Any, pairs: tuple[tuple[str, str], ...]) -> list[Any]:
    missing = [column for _, column in pairs if column not in created.c]
    if missing:
        raise UnshapedRow(
            f"the public model has fields the created row has no column for: {', '.join(missing)}; "
            "a keyed create stores the public columns of the row it inserts"
        )
    return [created.c[column] for _, column in pairs]


def _json_of(columns: list[Any], labels: list[str], name: str, to_json: Any) -> Any:
    """`to_json` of a row of `columns` labelled `labels`, from a subquery of them alone: its keys in
    that order, its columns referred to by name (a table column cannot take the row's place)."""
    subquery = select(*(column.label(label) for column, label in zip(columns, labels, strict=True))).subquery(name)
    return select(to_json(literal_column(f"{name}.*"))).select_from(subquery).scalar_subquery()


@cache
def _remembering(create: Insert, pairs: tuple[tuple[str, str], ...]) -> Statement:
    """`create` (an INSERT ... RETURNING of one row) and its key in one statement: the key's row is
    made from the created row's public columns (`pairs`: the answer's names and the row's columns),
    and a live key aborts the statement (`idempotency_key_live()`); an expired one is replaced. A
    few other expired keys go too.

    `resource` holds the public columns typed (this release renders a replay from them), `body`
    the first answer's text as far as SQL can spell it (a release rolled back to replays it as is)."""
    created = create.cte("created")
    public = _public_columns(created, pairs)
    body = _json_of(
        [_as_json_text(column) for column in public], [name for name, _ in pairs], "answer_body", func.row_to_json
    )
    resource = _json_of(public, [column for _, column in pairs], "answer_resource", func.to_jsonb)
    tag = func.concat('"', func.replace(cast(created.c.id, Text), "-", ""), ".", created.c.version, '"')
    answer = select(
        bindparam("idempotency_principal", type_=Text),
        bindparam("idempotency_key", type_=Text),
        bindparam("idempotency_fingerprint", type_=Text),
        literal(201),
        cast(body, Text),
        func.concat(bindparam("idempotency_location", type_=Text), created.c.id),
        tag,  # as resources.entity_tag: read by a release rolled back to, which replays these columns
        resource,
    ).select_from(created)
    store = (
        insert(_TABLE)
        .from_select(["principal", "key", *_ANSWER], answer)
        .on_conflict_do_update(
            index_elements=["principal", "key"],
            set_={name: getattr(insert(_TABLE).excluded, name) for name in _ANSWER} | {"created_at": func.now()},
            where=case((_LIVE, func.idempotency_key_live()), else_=true()),
        )
    )
    return Statement(select(created).add_cte(store.cte("stored")).add_cte(_FORGET.cte("forgotten")))


@cache
def _stored(table: Any) -> Statement:
    """The key's live answer, with the created row's columns typed as `table`'s: NULL for keys an
    earlier release stored, and for a key used with another request (whose columns may be of
    another table: they are not read)."""
    row_type: Any = literal_column(f"NULL::{_PREPARER.format_table(table)}")
    populated = func.jsonb_populate_record(row_type, _TABLE.c.resource)
    same_request = _TABLE.c.fingerprint == bindparam("idempotency_fingerprint", type_=Text)
    return Statement(
        select(
            *(_TABLE.c[name] for name in _ANSWER if name != "resource"),
            case((same_request, populated)).label("row"),
        ).where(_KEY_COLUMNS == _THIS_KEY, _LIVE)
    )


class AnswerStored(Answered):
    """The key already has an answer: `response` replays it (the app's handler sends it)."""


class Idempotency:
    """A POST's `Idempotency-Key`, if it sent one: its create stores the answer, or replays it."""

    def __init__(self, *, principal: str, key: str | None, fingerprint: str) -> None:
        self.principal = principal
        self.key = key
        self.fingerprint = fingerprint

    async def create(
        self,
        connection: asyncpg.Connection,
        table: Any,
        create: Insert,
        values: dict[str, Any],
        *,
        location_prefix: str,
    ) -> Row:
        """Run `create` and store its answer under this key, in one statement: the public columns
        of the route being served, and `location_prefix` + the new id as its Location. `AnswerStored`
        when the key already has one (also when the create broke a constraint only because a
        repeat had done it first: a unique name, say)."""
        keyed = {"idempotency_principal": self.principal, "idempotency_key": self.key}
        try:
            created: Row | None = await _remembering(create, current_shape().pairs).fetchrow(
                connection,
                **values,
                **keyed,
                idempotency_fingerprint=self.fingerprint,
                idempotency_location=location_prefix,
            )
        except asyncpg.PostgresError as error:
            is_live = error.sqlstate == KEY_LIVE_SQLSTATE
            if not is_live and not isinstance(error, asyncpg.IntegrityConstraintViolationError):
                raise
            stored = await _stored(table).fetchrow(connection, **keyed, idempotency_fingerprint=self.fingerprint)
            if stored is None and is_live:  # it expired between the two statements: now it is replaced
                return await self.create(connection, table, create, values, location_prefix=location_prefix)
            if stored is None:  # a constraint this request broke on its own: the caller maps it
                raise
            raise AnswerStored(self._replay(stored)) from None
        assert created is not None  # one row, or an error
        return created

    def _replay(self, stored: Row) -> Response:
        if stored["fingerprint"] != self.fingerprint:
            error = {"loc": ["header", "idempotency-key"], "msg": "already used for another request", "type": "reused"}
            raise InvalidRequest("this Idempotency-Key was used with a different request", errors=[error])
        row = stored["row"]
        if _describes(row, stored["etag"]):
            response = resource_response(row, status_code=stored["status"], location=stored["location"])
        else:  # stored by an earlier release, or stored again by one after a rollback: as it is
            headers = {"Location": stored["location"], "ETag": stored["etag"]}
            response = Response(stored["body"], status_code=stored["status"], headers=headers)
            response.headers["Content-Type"] = "application/json"
        response.headers["Idempotent-Replayed"] = "true"
        return response


def _describes(row: Row | None, etag: str) -> bool:
    """Whether the stored columns are those of the stored answer: a release rolled back to stores
    a key's answer again (body, Location, ETag) and leaves the columns as they were."""
    return row is not None and row["id"] is not None and row["version"] is not None and entity_tag(row) == etag


def _url_path(request: Request) -> str:
    """`request.url.path`, which earlier releases hashed, without building the whole URL (about 15 µs
    of a keyed create) where the path is plain: Starlette escapes ?, # and \\ in it, and urlsplit drops
    tabs and line breaks and rewrites a path starting with //."""
    path: str = request.scope["path"]
    if path.startswith("//") or any(character in path for character in "?#\\\t\r\n"):
        return request.url.path
    return path


async def _fingerprint(request: Request) -> str:
    """The same request = same method, path and JSON body (key order and spacing do not matter).

    The body FastAPI parsed is reused; an empty or unparsed one (refused by validation after this
    runs) counts as its bytes, so that such a request answers exactly as it would without a key.
    """
    digest = hashlib.sha256(f"{request.method} {_url_path(request)}\n".encode())
    body = await request.body()
    try:
        digest.update(json.dumps(await request.json(), sort_keys=True, separators=(",", ":")).encode())
    except ValueError:  # includes json.JSONDecodeError
        digest.update(body)
    return digest.hexdigest()


KEY_HEADER = "idempotency-key"
_KEY_PATTERN = r"^[\x21-\x7e]+$"  # visible ASCII
_KEY_DESCRIPTION = "Retry safely: the same key and body within 24 h replays the first response"
_KEY_FIELD = KEY_HEADER.encode()  # as the scope names it
_PLAIN_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # what _key_validator() accepts, checked without it when it does
# The header as OpenAPI describes it: exactly what FastAPI writes for a `Header(...)` parameter of
# these constraints (tests/test_idempotency.py compares them); app/core/web/openapi.py puts it on
# every operation that depends on get_idempotency.
KEY_PARAMETER: dict[str, Any] = {
    "name": KEY_HEADER,
    "in": "header",
    "required": False,
    "schema": {
        "anyOf": [{"type": "string", "minLength": 1, "maxLength": 255, "pattern": _KEY_PATTERN}, {"type": "null"}],
        "description": _KEY_DESCRIPTION,
        "title": "Idempotency-Key",
    },
    "description": _KEY_DESCRIPTION,
}


@cache
def _key_validator() -> TypeAdapter[str]:
    """The key's constraints as pydantic checks them, for its errors. Built on the first refused key,
    not at import: about 0.2 ms of start-up (0.4 million instructions) that a valid key never needs."""
    return TypeAdapter(Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=_KEY_PATTERN)])


def _key_of(request: Request) -> str | None:
    """The request's Idempotency-Key, validated as FastAPI validates a declared header (the same
    errors), read from the scope: as a `Header()` parameter, FastAPI's per-parameter machinery cost
    4.4 % of the instructions of a create without the header and 5.7 % of one with it. A key it
    refuses is answered at once, before the path and the body's fields are validated (docs/api.md)."""
    key: str | None = None
    sent = 0
    for name, value in request.scope["headers"]:
        if name == _KEY_FIELD:
            sent += 1
            key = key if key is not None else value.decode("latin-1")
    if key is None:
        return None
    if not _PLAIN_KEY.fullmatch(key):
        try:
            _key_validator().validate_python(key)
        except ValidationError as invalid:
            errors = invalid.errors(include_url=False)
            raise RequestValidationError([{**e, "loc": ("header", KEY_HEADER, *e["loc"])} for e in errors]) from None
    if sent > 1:
        error = {"loc": ["header", KEY_HEADER], "msg": "send one key", "type": "duplicate"}
        raise InvalidRequest("the request has more than one Idempotency-Key", errors=[error])
    return key


async def get_idempotency(request: Request) -> Idempotency:
    """The POST's Idempotency-Key (OpenAPI: `KEY_PARAMETER`), if it sent one, with the fingerprint
    of the request it came with."""
    principal = principal_of(request) or ""
    if (key := _key_of(request)) is None:
        return Idempotency(principal=principal, key=None, fingerprint="")
    return Idempotency(principal=principal, key=key, fingerprint=await _fingerprint(request))


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
