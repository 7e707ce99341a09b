"""`make run`: the service on http://localhost:8080, served by functions-framework as in production.

Settings come from the environment and, when present, from .env (see .env.example); the
environment wins. With neither DATABASE_URL nor INSTANCE_CONNECTION_NAME set, an embedded
PostgreSQL is started with its data in .data/postgres (kept between runs). Migrations are applied,
then the server starts. Ctrl-C stops the server, then the embedded database.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    env = dotenv_values(ROOT / ".env") | dict(os.environ)  # the environment wins over .env
    if not env.get("DATABASE_URL") and not env.get("INSTANCE_CONNECTION_NAME"):
        import embedded_db

        print("starting embedded PostgreSQL in .data/postgres ...", flush=True)
        server = embedded_db.start(ROOT / ".data" / "postgres", delete_on_exit=False)
        env["DATABASE_URL"] = embedded_db.ensure_database(server, "app")
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True)
    port = env.get("PORT", "8080")
    print(f"serving on http://localhost:{port}  (Ctrl-C to stop)", flush=True)
    server_process = subprocess.Popen(
        [bin_dir / "functions-framework", "--target=api", "--source=main.py", f"--port={port}"], cwd=ROOT, env=env
    )
    try:
        return server_process.wait()
    except KeyboardInterrupt:
        server_process.terminate()
        server_process.wait(timeout=30)
        return 0
    # The embedded server, if any, is stopped by its exit hook when this process ends.


if __name__ == "__main__":
    sys.exit(main())
