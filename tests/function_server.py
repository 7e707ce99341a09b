"""Runs `functions-framework --target=api` as a subprocess, exactly as Google's runtime does."""

import json
import os
import random
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
    """Distinct free ports below the kernel's ephemeral range; each probe stays bound until all are chosen.

    A port the kernel hands out for `bind(0)` comes from the range it also gives outgoing
    connections: between the probe closing and the server binding, a connection to PostgreSQL from
    the other test worker can take it ("Address already in use"). Below the range only listeners
    compete, and a listener probes first.
    """
    low, _ = _ephemeral_range()
    candidates = _draw.sample(range(_FIRST_PORT, low), k=min(200, low - _FIRST_PORT)) if low > _FIRST_PORT else []
    with ExitStack() as stack:
        ports: list[int] = []
        for candidate in [*candidates, *[0] * count]:
            if len(ports) == count:
                break
            probe = stack.enter_context(socket.socket())
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            ports.append(int(probe.getsockname()[1]))
        return ports


_FIRST_PORT = 20000
_draw = random.SystemRandom()  # not the shared generator, which tests and Hypothesis seed alike in both workers


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return 49152, 65535  # IANA's dynamic range, used by macOS and Windows
    return int(low), int(high)


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
        for index, server in enumerate(servers):
            for _ in range(3):
                try:
                    _wait_until_up(server)
                    break
                except _PortTaken:  # another test's server took the port after it was probed
                    server = servers[index] = _start(free_port(), database_url, source, env)
            else:
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


class _PortTaken(RuntimeError):
    pass


def _wait_until_up(server: FunctionServer, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            output = "".join(server.output)
            if "Address already in use" in output:
                raise _PortTaken(output)
            raise RuntimeError("the function server exited:\n" + output)
        try:
            if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError("the function server did not start:\n" + "".join(server.output))
