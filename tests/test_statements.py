"""Statement: which values it fills itself (literals, Python-side defaults and onupdates) and which the caller must."""

import itertools

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select, update

from app.core.db.statements import Statement, UnsupportedDefault, check_python_defaults

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
