"""The real entry point (`main.api`) plus one route that fails, served by the function tests."""

from main import api, app

__all__ = ["api"]


@app.get("/__test__/boom", include_in_schema=False)
async def boom() -> None:
    raise RuntimeError("password=hunter2 SELECT * FROM secrets")  # must never reach a client
