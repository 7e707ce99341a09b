"""`make run` (scripts/run_local.py) driven as a person at a terminal: started, awaited, stopped by Ctrl-C.

Shared by the tests of the script itself and the walk-through, which serves its renamed copy.
"""

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import psutil
import pytest

from tests.helpers import ROOT

DEADLINE_S = 60


def environment(**settings: str) -> dict[str, str]:
    """The user's environment less database settings; HOST="" wins over a .env and means the default."""
    environment = {key: value for key, value in os.environ.items() if key not in ("INSTANCE_CONNECTION_NAME",)}
    return environment | {"HOST": "", "LOG_FORMAT": "json"} | settings


@contextmanager
def run_local(root: Path = ROOT, **settings: str) -> Iterator[subprocess.Popen[str]]:
    """The script of the checkout at `root`, in a session of its own as a terminal runs it; leftovers are killed."""
    process = subprocess.Popen(
        [sys.executable, "scripts/run_local.py"],
        cwd=root,
        env=environment(**settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=DEADLINE_S)
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


def wait_until_serving(process: subprocess.Popen[str]) -> str:
    """The "serving on" line, once the script prints it; fails if the script ends first or stays
    silent for DEADLINE_S. A thread reads stdout, then keeps draining it, so the server never
    blocks on a full pipe."""
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def read(stream: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):  # the stream is closed when the test ends
            for line in stream:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=read, args=(process.stdout,), daemon=True).start()
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no 'serving on' within {DEADLINE_S} s")
        if line is None:
            pytest.fail(f"the script ended without serving: {process.stderr.read()}")  # type: ignore[union-attr]
        if line.startswith("serving on"):
            return line.strip()


def stop_with_ctrl_c(process: subprocess.Popen[str], port: int) -> None:
    """SIGINT to the session, as Ctrl-C sends it; then the script and all it started have ended, the port is free."""
    started = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground group
    process.wait(timeout=DEADLINE_S)
    alive = [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"still running after Ctrl-C: {alive}"
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))  # the port is free again
