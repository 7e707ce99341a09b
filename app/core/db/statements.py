"""SQLAlchemy Core statements, compiled once for asyncpg and run with named values.

Build a statement from the SQLModel tables with `bindparam("name")` for each value a request
supplies, wrap it in `Statement` (at import, or cached per shape), then `await query.fetchrow(connection,
name=value)`. Rows come back as asyncpg Records: read them by column name, render them as JSON.

`select(Task).where(col(Task.status) == ...)`, as SQLModel's docs write it, works; this app's own
statements select from the Core table instead (`_tasks = table_of(Task)`, `_tasks.c.status`): the
same SQL, compiled without SQLAlchemy's ORM, whose first compile sets up every table model's mapper
and whose compiles cost more (about 5 ms of this app's start-up, docs/benchmarks.md).
"""

from collections.abc import Callable, Mapping
from typing import Any, cast

import asyncpg
from sqlalchemy import MetaData, Table
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.schema import CallableColumnDefault, Column, ScalarElementColumnDefault
from sqlmodel import SQLModel

Row = asyncpg.Record  # columns by name: row["id"]

_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call] # renders $1, $2, ... with casts asyncpg can prepare
LIKE_ESCAPE = "\\"


def escape_like(text: str) -> str:
    """`text` for a LIKE pattern with `escape=LIKE_ESCAPE`: its `%` and `_` match only themselves."""
    return text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("%", LIKE_ESCAPE + "%").replace("_", LIKE_ESCAPE + "_")


def table_of(model: type[SQLModel]) -> Table:
    """A table model's Core table (`table=True`), its columns as `table.c.name`."""
    table = getattr(model, "__table__", None)  # set by SQLModel for table models only
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not a table model: declare it with table=True")
    return table


class UnsupportedStatement(TypeError):
    """A statement that cannot be compiled once: its SQL depends on the values of a request."""


class UnsupportedDefault(TypeError):
    """A Python-side column default or onupdate that needs SQLAlchemy's execution context."""


def python_side(column: Column[Any], default: Any) -> Callable[[], Any] | Any:
    """A column's Python-side default or onupdate: the constant, or a function called per execution."""
    if isinstance(default, ScalarElementColumnDefault):
        return default.arg
    if isinstance(default, CallableColumnDefault):
        if default.arg is default._given_arg:  # SQLAlchemy wraps only functions that take no context
            raise UnsupportedDefault(
                f"{column.table.name}.{column.key}: its Python default takes SQLAlchemy's execution context, "
                "which statements run on asyncpg do not have; use a function of no arguments "
                "(Field(default_factory=...)), or a server_default"
            )
        function = default.arg
        return lambda: function(None)  # type: ignore[arg-type]  # the wrapper ignores the context
    raise UnsupportedDefault(
        f"{column.table.name}.{column.key}: its default {default!r} cannot be computed in Python; "
        "give the column a server_default instead"
    )


class Statement:
    """One statement's SQL text and the order of its parameters, worked out once.

    Values a statement holds itself are sent as they are: literals (`version + 1`, a `None` in
    `.values()`) and constant Python-side defaults. Callable ones (`Field(default_factory=...)`,
    `onupdate=`) are called per execution, like SQLAlchemy does.
    """

    def __init__(self, statement: ClauseElement) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=_DIALECT))
        if expanding := compiled.post_compile_params | compiled.literal_execute_params:
            names = ", ".join(sorted(bind.key for bind in expanding))
            raise UnsupportedStatement(
                f"the statement has values SQLAlchemy renders only per execution ({names}), which a statement "
                "compiled once cannot hold: for a list, write `column == func.any(bindparam(name, "
                "type_=ARRAY(...)))` and pass a Python list; for a LIMIT or OFFSET, a bindparam"
            )
        self.sql = str(compiled)
        self._names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # A bindparam("name") without a value is the caller's to fill; any other bind is a literal.
        self._fixed = {name: value for name, value in compiled.params.items() if not compiled.binds[name].required}
        self._computed: dict[str, Callable[[], Any]] = {}
        for column, default in [
            *((column, column.default) for column in compiled.insert_prefetch),
            *((column, column.onupdate) for column in compiled.update_prefetch),
        ]:
            value = python_side(column, default)
            if isinstance(default, CallableColumnDefault):
                self._computed[column.key] = value
                self._fixed.pop(column.key, None)
            else:
                self._fixed[column.key] = value

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        if self._computed:
            values = {name: compute() for name, compute in self._computed.items() if name not in values} | dict(values)
        return [values[name] if name in values else self._fixed[name] for name in self._names]

    async def fetch(self, connection: asyncpg.Connection, **values: Any) -> list[Row]:
        rows: list[Row] = await connection.fetch(self.sql, *self.arguments(values))
        return rows

    async def fetchrow(self, connection: asyncpg.Connection, **values: Any) -> Row | None:
        row: Row | None = await connection.fetchrow(self.sql, *self.arguments(values))
        return row

    async def fetchval(self, connection: asyncpg.Connection, **values: Any) -> Any:
        return await connection.fetchval(self.sql, *self.arguments(values))


def check_python_defaults(metadata: MetaData) -> None:
    """At start-up: every Python-side default and onupdate of the tables can be computed per
    execution (else UnsupportedDefault names the column and the fix), rather than a 500 per request."""
    for table in metadata.tables.values():
        for column in table.columns:
            for default in (column.default, column.onupdate):
                if default is not None and (default.is_scalar or default.is_callable):
                    python_side(column, default)
