"""SQLAlchemy Core statements, compiled once for asyncpg and run with named values.

Build a statement from the SQLModel tables with `bindparam("name")` for each value a request
supplies, wrap it in `Statement` (at import, or cached per shape), then `await query.fetchrow(connection,
name=value)`. Rows come back as asyncpg Records: read them by column name, render them as JSON.
"""

from collections.abc import Mapping
from typing import Any, cast

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.schema import ScalarElementColumnDefault

Row = asyncpg.Record  # columns by name: row["id"]

_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call] # renders $1, $2, ... with casts asyncpg can prepare
LIKE_ESCAPE = "\\"


def escape_like(text: str) -> str:
    """`text` for a LIKE pattern with `escape=LIKE_ESCAPE`: its `%` and `_` match only themselves."""
    return text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("%", LIKE_ESCAPE + "%").replace("_", LIKE_ESCAPE + "_")


class Statement:
    """One statement's SQL text and the order of its parameters, worked out once."""

    def __init__(self, statement: ClauseElement) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=_DIALECT))
        self.sql = str(compiled)
        self._names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # Literal values inside the statement (`version + 1`) and Python-side column defaults.
        self._fixed = {name: value for name, value in compiled.params.items() if value is not None}
        for column in compiled.insert_prefetch:
            if isinstance(column.default, ScalarElementColumnDefault):
                self._fixed[column.key] = column.default.arg

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] if name in values else self._fixed[name] for name in self._names]

    async def fetch(self, connection: asyncpg.Connection, **values: Any) -> list[Row]:
        rows: list[Row] = await connection.fetch(self.sql, *self.arguments(values))
        return rows

    async def fetchrow(self, connection: asyncpg.Connection, **values: Any) -> Row | None:
        row: Row | None = await connection.fetchrow(self.sql, *self.arguments(values))
        return row

    async def fetchval(self, connection: asyncpg.Connection, **values: Any) -> Any:
        return await connection.fetchval(self.sql, *self.arguments(values))
