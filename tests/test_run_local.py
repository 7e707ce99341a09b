"""`make run` (scripts/run_local.py) as a person meets it: the port, the database, Ctrl-C.

Each test runs the script for real, with a deadline, against this session's PostgreSQL.
"""

import socket
import subprocess
from collections.abc import Callable

import httpx
import psutil

from tests.function_server import free_port
from tests.local_run import DEADLINE_S, run_local, stop_with_ctrl_c, wait_until_serving


def _refusal(**settings: str) -> str:
    """stderr of a run that must stop by itself, quickly, without starting anything."""
    with run_local(**settings) as process:
        stdout, stderr = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 1, (stdout, stderr)
    assert "serving on" not in stdout and "Traceback" not in stderr, (stdout, stderr)
    assert len(stderr.strip().splitlines()) == 1, stderr
    return stderr


def test_a_busy_port_is_named_with_the_way_to_pick_another() -> None:
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        message = _refusal(PORT=str(port), DATABASE_URL="postgresql+asyncpg://nobody@127.0.0.1:1/never-reached")
    assert f"port {port}" in message and f"PORT={port + 1} make run" in message, message


def test_an_unreachable_database_url_is_one_line_without_its_password() -> None:
    closed = free_port()
    url = f"postgresql+asyncpg://alice:s3cr3t-pw@127.0.0.1:{closed}/app"
    message = _refusal(PORT=str(free_port()), DATABASE_URL=url)
    assert f"postgresql+asyncpg://alice:***@127.0.0.1:{closed}/app" in message, message
    assert "s3cr3t-pw" not in message
    assert "unset DATABASE_URL" in message and "set in your shell" in message


def _listening(process: subprocess.Popen[str]) -> set[tuple[str, int]]:
    addresses = set()
    for child in psutil.Process(process.pid).children(recursive=True):
        for connection in child.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN:
                addresses.add((connection.laddr.ip, connection.laddr.port))
    return addresses


def test_serving_on_is_printed_once_it_accepts_on_loopback_and_ctrl_c_stops_everything(
    create_database: Callable[[], str],
) -> None:
    port = free_port()
    with run_local(PORT=str(port), DATABASE_URL=create_database()) as process:
        line = wait_until_serving(process)
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass  # accepting the moment the line is printed
        assert line == f"serving on http://127.0.0.1:{port}  (Ctrl-C to stop)"
        assert _listening(process) == {("127.0.0.1", port)}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/projects", timeout=10).status_code == 200
        stop_with_ctrl_c(process, port)
