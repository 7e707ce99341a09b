"""The real entry point (`main.api`) with a 1 s body read timeout, so slow-client tests wait 1 s, not 10."""

import app.core.web.middleware

app.core.web.middleware.BODY_READ_TIMEOUT_S = 1.0  # read when the app builds its middleware, on the first request

from main import api  # noqa: E402

__all__ = ["api"]
