"""Runs `functions-framework --target=api` as a subprocess, exactly as Google's runtime does."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_FRAMEWORK = Path(sys.executable).parent / "functions-framework"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class FunctionServer:
    process: subprocess.Popen[str]
    base_url: str
    output: list[str] = field(default_factory=list)

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
    port = free_port()
    environment = os.environ | {"DATABASE_URL": database_url, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "json"} | env
    environment.pop("INSTANCE_CONNECTION_NAME", None)
    command = [str(FUNCTIONS_FRAMEWORK), "--target=api", f"--source={source}", "--host=127.0.0.1", f"--port={port}"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = FunctionServer(process, f"http://127.0.0.1:{port}")
    reader = threading.Thread(target=_collect, args=(process, server.output), daemon=True)
    reader.start()
    try:
        _wait_until_up(server)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        reader.join(timeout=5)


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
