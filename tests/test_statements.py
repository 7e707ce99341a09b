"""Statement: which values it fills itself (literals, Python-side defaults and onupdates) and which the caller must."""

import itertools
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import col

from app.core.db.statements import Statement, UnsupportedDefault, UnsupportedStatement, check_python_defaults
from app.tasks.models import Task
from tests.helpers import libpq_url

_counter = itertools.count()
metadata = MetaData()
table = Table(
    "things",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ref", String, default=lambda: f"ref-{next(_counter)}"),
    Column("kind", String, default="plain"),
    Column("note", String, nullable=True),
    Column("touched", String, onupdate=lambda: "touched"),
)


def test_a_callable_default_is_called_per_execution_and_a_constant_is_sent_as_is() -> None:
    statement = Statement(insert(table).values(id=bindparam("id")))
    first, second = statement.arguments({"id": 1}), statement.arguments({"id": 2})
    assert first[0] == 1 and first[1] != second[1] and first[1].startswith("ref-")
    assert first[2] == "plain"


def test_a_value_the_caller_gives_wins_over_the_default() -> None:
    statement = Statement(insert(table).values(id=bindparam("id"), ref=bindparam("ref")))
    assert statement.arguments({"id": 1, "ref": "mine"})[:2] == [1, "mine"]


def test_a_literal_none_is_kept_and_a_required_value_is_still_required() -> None:
    statement = Statement(update(table).where(table.c.id == bindparam("id")).values(note=None))
    assert statement.arguments({"id": 7}) == [None, "touched", 7]  # note, the onupdate, id
    with pytest.raises(KeyError):
        statement.arguments({})


def test_literals_in_a_where_clause_are_sent_as_they_are() -> None:
    statement = Statement(
        select(table.c.id).where(table.c.kind == "odd", table.c.note.is_(None), table.c.id > bindparam("after"))
    )
    assert statement.arguments({"after": 3}) == ["odd", 3]


def test_a_default_that_takes_the_execution_context_is_refused_naming_the_column() -> None:
    odd = Table(
        "odd", MetaData(), Column("id", Integer, primary_key=True), Column("stamp", String, default=lambda context: 1)
    )
    with pytest.raises(UnsupportedDefault, match=r"odd\.stamp: .*default_factory"):
        Statement(insert(odd).values(id=bindparam("id")))
    check_python_defaults(metadata)  # the supported kinds pass


@pytest.mark.parametrize(
    "condition",
    [
        lambda: col(Task.status).in_(["todo", "done"]),
        lambda: col(Task.status).in_(bindparam("statuses", expanding=True)),
    ],
    ids=["in_ with a list", "an expanding bindparam"],
)
def test_an_in_list_is_refused_when_compiled_naming_the_fix(condition: Any) -> None:
    with pytest.raises(UnsupportedStatement, match=r"func\.any\(bindparam"):
        Statement(select(Task.id).where(condition()))


async def test_any_of_an_array_bindparam_is_the_way_to_filter_by_a_list(database_url: str) -> None:
    statement = Statement(
        select(Task.id).where(col(Task.status) == func.any(bindparam("statuses", type_=ARRAY(String))))
    )
    connection = await asyncpg.connect(libpq_url(database_url))
    try:
        rows = await statement.fetch(connection, statuses=["no such status"])
        assert rows == []  # it ran: the list went as one array parameter
    finally:
        await connection.close()
