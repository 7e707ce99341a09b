"""`make startup`: what `import main` costs over its libraries, and the function's cold start.

`import main` over its libraries (the goal: at most 60 ms, docs/benchmarks.md): a fresh interpreter
imports every third-party module that `import main` ends up importing (listed once by another
interpreter that imports main) and lets FastAPI register one route on an app of its own, which
loads what registering a route loads (pydantic's v1 module among it); then it imports main. The
time of that last import is what this service's own code costs at start-up: its models, routes,
compiled statements and the app. Work it defers to the first request is not in it, and would
show in the cold start.

Cold start = from spawning `functions-framework --target=api` to the first 200 of a
database-backed GET (/v1/projects), polled every 5 ms.

Bytecode is compiled first (app/, main.py and the virtualenv's packages, as a deploy's install
leaves them), so no figure includes compiling sources. Each figure is the median of RUNS runs (10).
Uses DATABASE_URL if set, else a throw-away embedded PostgreSQL.
"""

import compileall
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
BIN = Path(sys.executable).parent
RUNS = int(os.environ.get("RUNS", "10"))

# Run by an interpreter in ROOT: the third-party modules in sys.modules after `import main`, in the
# order they were first imported.
_LIST_LIBRARIES = """
import json, sys, sysconfig
import main
roots = tuple({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
print(json.dumps([name for name, module in list(sys.modules.items())
                  if (getattr(module, "__file__", None) or "").startswith(roots)]))
"""

# Reads the module list on stdin; prints the seconds of the libraries plus one route, then of
# `import main`: elapsed, then CPU (the process's own, which other processes on a busy machine
# do not inflate).
_IMPORT_OVER_LIBRARIES = """
import importlib, json, sys, time
modules = json.load(sys.stdin)
started, started_cpu = time.perf_counter(), time.process_time()
for name in modules:
    importlib.import_module(name)
from fastapi import FastAPI
baseline = FastAPI()
@baseline.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}
libraries, libraries_cpu = time.perf_counter(), time.process_time()
import main
ended, ended_cpu = time.perf_counter(), time.process_time()
print(libraries - started, ended - libraries, libraries_cpu - started_cpu, ended_cpu - libraries_cpu)
"""


def compile_bytecode() -> None:
    """What a deploy's install leaves: every source with its bytecode (uv installs without unless asked)."""
    paths = sysconfig.get_paths()
    for folder in [*sorted({paths["purelib"], paths["platlib"]}), str(ROOT / "app")]:
        compileall.compile_dir(folder, quiet=2)
    compileall.compile_file(str(ROOT / "main.py"), quiet=2)


def third_party_modules(env: dict[str, str]) -> list[str]:
    output = subprocess.run(
        [sys.executable, "-c", _LIST_LIBRARIES], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    modules: list[str] = json.loads(output.stdout.splitlines()[-1])
    return modules


def import_over_libraries(
    env: dict[str, str], modules: list[str], prefix: Sequence[str] = ()
) -> tuple[float, float, float, float]:
    """Seconds importing the libraries and registering one route, then `import main`; elapsed,
    then the same two as the process's CPU time."""
    output = subprocess.run(
        [*prefix, sys.executable, "-c", _IMPORT_OVER_LIBRARIES],
        cwd=ROOT,
        env=env,
        input=json.dumps(modules),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    libraries_s, main_s, libraries_cpu_s, main_cpu_s = (float(value) for value in output.stdout.split()[-4:])
    return libraries_s, main_s, libraries_cpu_s, main_cpu_s


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
    compile_bytecode()
    modules = third_party_modules(env)
    imports = [import_over_libraries(env, modules) for _ in range(RUNS)]
    colds = [cold_start_seconds(env, 18080 + run) for run in range(RUNS)]
    packages = len({name.partition(".")[0] for name in modules})
    rows = [
        (f"libraries ({packages} packages, {len(modules)} modules) + one route", [s[0] for s in imports]),
        ("import main over them", [s[1] for s in imports]),
        ("  the same, CPU time of the process", [s[3] for s in imports]),
        ("cold start", colds),
    ]
    for label, samples in rows:
        median, fastest = statistics.median(samples) * 1000, min(samples) * 1000
        print(f"{label:48} median {median:5.0f} ms  (min {fastest:.0f} ms, n={RUNS})")


if __name__ == "__main__":
    main()
