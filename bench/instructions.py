"""Instructions per request, counted by valgrind's callgrind: `make instructions`.

Timings on a shared machine drift from run to run by more than most single changes save (the
same code measured 640 and 900 µs of CPU per read within the hour); the number of instructions a
request executes does not. This drives the app in-process, as functions-framework's Starlette app
hands it each call (main.py, the middleware, FastAPI, the pool, asyncpg, the log lines; not
uvicorn's HTTP parsing), with 16 requests in flight on uvloop against PostgreSQL, and counts the
instructions of N requests of each kind after a warm-up. Compare two commits by running it in
each (`git worktree add`), as docs/benchmarks.md does; the same code varies by 1-2 %.

    make instructions                                  # get, unkeyed, keyed; 200 requests each
    INSTRUCTIONS_MODES=keyed INSTRUCTIONS_N=500 make instructions

Needs valgrind (Debian: apt-get install valgrind). The database is DATABASE_URL's, else an
embedded PostgreSQL with the migrations applied and bench/run.py's seed.
"""

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
MODES = ("get", "unkeyed", "keyed")
IN_FLIGHT = 16
TIMEOUT_S = 1800  # valgrind runs the interpreter some 50 times slower


async def _call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8080"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect: the request ends first
        raise AssertionError

    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


_numbers = itertools.count()


async def _request(app: Any, mode: str, project: str, task: str) -> None:
    number = next(_numbers)
    headers = [(b"traceparent", f"00-{number:032x}-{number + 1:016x}-01".encode())]  # as Google's front end adds
    if mode == "get":
        status = await _call(app, "GET", f"/v1/tasks/{task}", headers)
    else:
        body = json.dumps({"title": f"counted {number}", "priority": 1}).encode()
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if mode == "keyed":
            headers.append((b"idempotency-key", f"counted-{uuid.uuid4().hex}".encode()))
        status = await _call(app, "POST", f"/v1/projects/{project}/tasks", headers, body)
    if status not in (200, 201):
        raise SystemExit(f"instructions: {mode} answered {status}")


def _callgrind(*arguments: str) -> None:
    subprocess.run(["callgrind_control", *arguments, str(os.getpid())], check=True, capture_output=True, timeout=60)


async def _count(modes: list[str], count: int, project: str, task: str) -> None:
    """Runs under callgrind with instrumentation off: on for each kind's N requests, then a dump."""
    from functions_framework.aio import create_asgi_app

    app = create_asgi_app(target="api", source=str(ROOT / "main.py"))
    in_flight = asyncio.Semaphore(IN_FLIGHT)

    async def one(mode: str) -> None:
        async with in_flight:
            await _request(app, mode, project, task)

    for mode in modes:
        await asyncio.gather(*(one(mode) for _ in range(150)))  # warm: statements prepared, pool full
        _callgrind("-i", "on")
        await asyncio.gather(*(one(mode) for _ in range(count)))
        _callgrind("-i", "off")
        _callgrind("-d", mode)


def _totals(folder: Path) -> dict[str, int]:
    found = {}
    for dump in folder.glob("callgrind.out.*.*"):
        text = dump.read_text(errors="replace")
        trigger = next(line for line in text.splitlines() if line.startswith("desc: Trigger:"))
        total = next(line for line in text.splitlines() if line.startswith("totals:"))  # "summary:" may say 0
        found[trigger.split()[-1]] = int(total.split()[1])
    return found


async def _forget_counted(dsn: str) -> None:
    """The keys the keyed creates stored (the tasks go with the seeded projects)."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("DELETE FROM idempotency_keys WHERE key LIKE 'counted-%'")
    finally:
        await connection.close()


def _measure(modes: list[str], count: int, url: str, project: str, task: str, env: dict[str, str]) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="instructions-") as folder:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={folder}/callgrind.out.%p",
            sys.executable,
            __file__,
            "--count",
            ",".join(modes),
            str(count),
            project,
            task,
        ]
        result = subprocess.run(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=TIMEOUT_S
        )
        if result.returncode != 0:
            raise SystemExit("instructions: the counted run failed:\n" + result.stderr.decode(errors="replace")[-3000:])
        totals = _totals(Path(folder))
    if set(totals) != set(modes):  # callgrind_control answers 0 even when it reached no process
        raise SystemExit(f"instructions: callgrind dumped {sorted(totals)}, not {sorted(modes)}")
    return totals


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--count":  # the process callgrind runs
        import uvloop

        sys.path.insert(0, str(ROOT))  # main.py imports app/ from beside it

        uvloop.run(_count(sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
        return 0
    if shutil.which("valgrind") is None:
        print("instructions: valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(ROOT / "bench"))
    import run as bench

    # The names checked as BENCH_SERVERS and BENCH_PROFILE are; each counted once, in order.
    modes = list(dict.fromkeys(bench._named("INSTRUCTIONS_MODES", "modes", list(MODES), ",".join(MODES))))
    count = os.environ.get("INSTRUCTIONS_N", "200")
    if not modes or not count.isdigit() or int(count) < 1:
        print("instructions: INSTRUCTIONS_MODES names none, or INSTRUCTIONS_N is not a count", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, bench._raise_keyboard_interrupt)  # the embedded database stops at exit
    try:
        url, _ = bench.prepare_database()
        bench.migrate(url)
        dataset = asyncio.run(bench._seed(url))
    except bench.BenchError as error:
        print(f"instructions: {error}", file=sys.stderr)
        return 1
    try:
        # The app configured as make bench serves it; the same hash seed every time, so that a
        # dict's layout, and so its lookups, do not vary.
        env = bench.server_env(url) | {"PYTHONHASHSEED": "0"}
        totals = _measure(modes, int(count), url, str(dataset.project_ids[0]), str(dataset.task_ids[0]), env)
    finally:
        if os.environ.get("DATABASE_URL"):  # leave a database we did not make as we found it
            try:
                asyncio.run(bench._drop_seed(url, dataset.project_ids))
                asyncio.run(_forget_counted(bench.asyncpg_dsn(url)))
            except (OSError, asyncpg.PostgresError) as error:
                print(f"instructions: could not delete the seeded rows: {error}", file=sys.stderr)
    for mode in modes:
        print(f"{mode:8} {totals[mode] / int(count) / 1000:9.1f} k instructions per request ({count} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
