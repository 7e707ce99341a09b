"""Whether a configured DATABASE_URL answers, said in one line a person can act on."""

import asyncio

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

CONNECT_TIMEOUT_S = 5


def shown(url: str) -> str:
    """The URL with its password replaced by ***, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(a value that is not a URL)"


async def _connect(url: str) -> None:
    parsed = make_url(url)
    if parsed.drivername != "postgresql+asyncpg":
        raise ValueError("it must start with postgresql+asyncpg://")
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    await connection.close()


def problem(url: str, origin: str) -> str | None:
    """None when `url` accepts a connection; else one line: which URL, what went wrong, what to do."""
    try:
        asyncio.run(_connect(url))
    except (ValueError, ArgumentError) as error:
        advice, reason = "Correct the URL", str(error)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        advice, reason = "Start that server or correct the URL", str(error) or type(error).__name__
    else:
        return None
    return (
        f"cannot use DATABASE_URL={shown(url)} ({origin}): {reason}. {advice};"
        " or unset DATABASE_URL (and remove it from .env) to use the embedded PostgreSQL."
    )
