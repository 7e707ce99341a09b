"""`make startup`: how long `import main` takes, and the function's cold start.

Cold start = from spawning `functions-framework --target=api` to the first 200 of a
database-backed GET (/v1/projects), polled every 5 ms. Each figure is the median of N runs.
Uses DATABASE_URL if set, else a throw-away embedded PostgreSQL.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
BIN = Path(sys.executable).parent
RUNS = int(os.environ.get("RUNS", "10"))


def import_seconds(env: dict[str, str]) -> float:
    code = "import time; t = time.perf_counter(); import main; print(time.perf_counter() - t)"
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return float(output.stdout)


def cold_start_seconds(env: dict[str, str], port: int) -> float:
    command = [str(BIN / "functions-framework"), "--target=api", "--host=127.0.0.1", f"--port={port}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=2) as client:
            while time.perf_counter() - started < 30:
                try:
                    if client.get(f"http://127.0.0.1:{port}/v1/projects?limit=1").status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                time.sleep(0.005)
        raise TimeoutError("no 200 within 30 s")
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    env = dict(os.environ)
    folder = None
    if not env.get("DATABASE_URL"):
        import embedded_db

        folder = tempfile.TemporaryDirectory(prefix="startup-pg-")
        server = embedded_db.start(Path(folder.name) / "data", delete_on_exit=True)
        env["DATABASE_URL"] = embedded_db.ensure_database(server, "app")
    subprocess.run([BIN / "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True)
    env["LOG_LEVEL"] = "WARNING"
    imports = [import_seconds(env) for _ in range(RUNS)]
    colds = [cold_start_seconds(env, 18080 + run) for run in range(RUNS)]
    for label, samples in [("import main", imports), ("cold start", colds)]:
        median, fastest = statistics.median(samples) * 1000, min(samples) * 1000
        print(f"{label:12} median {median:5.0f} ms  (min {fastest:.0f} ms, n={RUNS})")


if __name__ == "__main__":
    main()
