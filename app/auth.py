"""Who is calling. With AUTH_MODE=none there is no principal; token checks plug in here."""

from typing import Annotated

from fastapi import Depends


async def get_principal() -> str | None:
    return None


PrincipalDep = Annotated[str | None, Depends(get_principal)]
