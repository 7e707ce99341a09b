"""`make run`: the service on http://127.0.0.1:8080, served by functions-framework as in production.

Settings come from the environment and, when present, from .env (see .env.example); the
environment wins. PORT picks another port, HOST another address (127.0.0.1 by default: with
AUTH_MODE=none, nobody else should reach it). With neither DATABASE_URL nor INSTANCE_CONNECTION_NAME
set, an embedded PostgreSQL is started with its data in .data/postgres (kept between runs).
Migrations are applied, then the server starts; "serving on" is printed once it accepts
connections. Ctrl-C stops the server, then the embedded database.
"""

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
START_TIMEOUT_S = 60


class Refused(Exception):
    """Something the user can fix before the server starts; the message says what."""


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def check_port_free(host: str, port: int) -> None:
    """Bind as gunicorn will (SO_REUSEADDR), so a port held by another program is named before anything starts."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise Refused(
                    f"port {port} on {host} is already in use by another program: stop it, or pick another port,"
                    f" for example PORT={port + 1} make run (or PORT={port + 1} in .env)"
                ) from None
            raise Refused(f"cannot listen on {host}:{port}: {error.strerror}") from None


def wait_until_accepting(process: subprocess.Popen[bytes], host: str, port: int) -> bool:
    """True once the server accepts connections; False if it exited first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return process.poll() is None


def _setting(env: dict[str, str], name: str, default: str) -> str:
    return env.get(name) or default


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    dotenv = {key: value for key, value in dotenv_values(ROOT / ".env").items() if value is not None}
    env = dotenv | dict(os.environ)  # the environment wins over .env
    host = _setting(env, "HOST", "127.0.0.1")
    port_text = _setting(env, "PORT", "8080")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Refused(f"PORT={port_text}: use a port number, for example PORT=8081 make run")
    port = int(port_text)
    check_port_free(host, port)

    if url := env.get("DATABASE_URL"):
        import database_check

        origin = "set in your shell" if os.environ.get("DATABASE_URL") else "set in .env"
        if (problem := database_check.problem(url, origin)) is not None:
            raise Refused(problem)
    elif not env.get("INSTANCE_CONNECTION_NAME"):
        import embedded_db

        print("starting the embedded PostgreSQL in .data/postgres ...", flush=True)
        server = embedded_db.start(ROOT / ".data" / "postgres", delete_on_exit=False)
        env["DATABASE_URL"] = embedded_db.ensure_database(server, "app")
        # The embedded server is stopped by its exit hook when this process ends, Ctrl-C included.

    bin_dir = Path(sys.executable).parent
    if subprocess.run([bin_dir / "alembic", "upgrade", "head"], cwd=ROOT, env=env).returncode != 0:
        return 1
    command = [bin_dir / "functions-framework", "--target=api", "--source=main.py", f"--host={host}", f"--port={port}"]
    server_process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        if not wait_until_accepting(server_process, host, port):
            print("the server stopped before it accepted a connection (its messages are above)", file=sys.stderr)
            return server_process.wait() or 1
        shown_host = f"[{host}]" if ":" in host else host
        print(f"serving on http://{shown_host}:{port}  (Ctrl-C to stop)", flush=True)
        return server_process.wait()
    finally:
        if server_process.poll() is None:
            server_process.terminate()
            server_process.wait(timeout=30)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Refused as refused:
        print(f"make run: {refused}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C is how a local run ends: stopped cleanly, nothing to report
        sys.exit(0)
