"""A pytest plugin (loaded by tests/conftest.py): every status the suite sees an in-process app answer
on one of its documented paths is declared for that operation in the app's own OpenAPI document,
explicitly: the `default` response is a safety net, not a declaration.

Each response that passes through httpx's ASGITransport is looked up in its app's document; an
undeclared one is written to a file of the worker's. The controller reads them all at the end of the
session (with pytest-xdist, across the workers) and fails the run if there is any. A method the path
does not take (a 405, or a refusal before routing) must be declared by every operation of the path,
since OpenAPI has no place for a path's own answers.
"""

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

_FOLDER_KEY = "observed_statuses_folder"
_folder: Path | None = None
_seen: set[tuple[str, str, str, int]] = set()
_templates: dict[int, list[tuple[re.Pattern[str], str]]] = {}


def _template(app: FastAPI, path: str) -> tuple[dict[str, Any], str] | None:
    document = app.openapi()
    if id(document) not in _templates:
        _templates[id(document)] = [
            (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"), template)
            for template in document.get("paths", {})
        ]
    for pattern, template in _templates[id(document)]:
        if pattern.match(path):
            return document, template
    return None


def undeclared(app: FastAPI, method: str, path: str, status: int) -> str | None:
    """Why `status` on `method path` is not declared in `app`'s document, or None if it is."""
    found = _template(app, path)
    if found is None:  # not a documented path (an unknown one, /docs, a test's own route)
        return None
    document, template = found
    item = document["paths"][template]
    operation = item.get("get" if method == "HEAD" else method.lower())
    if operation is not None:
        if str(status) in operation.get("responses", {}):
            return None
        return f"{method} {template} answered {status}; it declares {sorted(operation.get('responses', {}))}"
    lacking = [name.upper() for name, other in item.items() if str(status) not in other.get("responses", {})]
    if not lacking:
        return None
    return f"{method} {template} (not an operation) answered {status}, which {', '.join(lacking)} do not declare"


_original = httpx.ASGITransport.handle_async_request


async def _recording(self: httpx.ASGITransport, request: httpx.Request) -> httpx.Response:
    response = await _original(self, request)
    app = self.app
    key = (request.method, request.url.path, str(id(app)), response.status_code)
    # A CORS preflight is the CORS layer's (docs/api.md describes it): OpenAPI has no operation for it.
    preflight = request.method == "OPTIONS" and "access-control-request-method" in request.headers
    if isinstance(app, FastAPI) and not preflight and key not in _seen and _folder is not None:
        _seen.add(key)
        if reason := undeclared(app, request.method, request.url.path, response.status_code):
            with (_folder / f"{os.getpid()}.jsonl").open("a") as found:
                found.write(json.dumps(reason) + "\n")
    return response


def pytest_configure(config: pytest.Config) -> None:
    global _folder
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        _folder = Path(workerinput[_FOLDER_KEY])
    else:
        _folder = Path(tempfile.mkdtemp(prefix="observed-statuses-"))
        config.stash[_folder_key] = _folder
    httpx.ASGITransport.handle_async_request = _recording  # type: ignore[method-assign]


_folder_key = pytest.StashKey[Path]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # pytest-xdist: the controller tells each worker where
    node.workerinput[_FOLDER_KEY] = str(node.config.stash[_folder_key])


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput") or _folder_key not in session.config.stash:
        return
    folder = session.config.stash[_folder_key]
    reasons = sorted({json.loads(line) for file in folder.glob("*.jsonl") for line in file.read_text().splitlines()})
    for file in folder.glob("*.jsonl"):
        file.unlink()
    folder.rmdir()
    if reasons:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = "\n".join(f"  {reason}" for reason in reasons)
        message = f"statuses the suite observed that the OpenAPI document does not declare:\n{lines}\n"
        if reporter is not None:
            reporter.write_sep("=", "undeclared statuses", red=True)
            reporter.write(message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
