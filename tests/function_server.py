"""Runs `functions-framework --target=api` as a subprocess, exactly as Google's runtime does."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_FRAMEWORK = Path(sys.executable).parent / "functions-framework"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Distinct free ports: each probe stays bound until all are chosen."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


@dataclass
class FunctionServer:
    process: subprocess.Popen[str]
    base_url: str
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def json_logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in list(self.output):
            if line.startswith("{"):
                entries.append(json.loads(line))
        return entries


@contextmanager
def serve_function(
    database_url: str, *, source: str = "tests/served_function.py", **env: str
) -> Iterator[FunctionServer]:
    with serve_functions(1, database_url, source=source, **env) as (server,):
        yield server


@contextmanager
def serve_functions(
    count: int, database_url: str, *, source: str = "tests/served_function.py", **env: str
) -> Iterator[list[FunctionServer]]:
    """`count` servers, each its own process on its own port (as instances are), started together."""
    servers: list[FunctionServer] = []
    try:
        for port in free_ports(count):
            servers.append(_start(port, database_url, source, env))
        for server in servers:
            _wait_until_up(server)
        yield servers
    finally:
        for server in servers:
            _stop(server)


def _start(port: int, database_url: str, source: str, env: dict[str, str]) -> FunctionServer:
    environment = os.environ | {"DATABASE_URL": database_url, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "json"} | env
    environment.pop("INSTANCE_CONNECTION_NAME", None)
    command = [str(FUNCTIONS_FRAMEWORK), "--target=api", f"--source={source}", "--host=127.0.0.1", f"--port={port}"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = FunctionServer(process, f"http://127.0.0.1:{port}")
    server.reader = threading.Thread(target=_collect, args=(process, server.output), daemon=True)
    server.reader.start()
    return server


def _stop(server: FunctionServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        server.process.wait(timeout=30)
    if server.reader is not None:
        server.reader.join(timeout=5)


def _collect(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)


def _wait_until_up(server: FunctionServer, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError("the function server exited:\n" + "".join(server.output))
        try:
            if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError("the function server did not start:\n" + "".join(server.output))
