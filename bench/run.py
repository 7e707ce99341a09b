"""`make bench`: this service against two peers, same machine, same database, same run.

The servers, each started as in production (`functions-framework`, gunicorn master + one worker):

- service: this repository's `main.py` (FastAPI + SQLModel on SQLAlchemy async + asyncpg);
- flask:   `bench/peers/flask_peer` — Google's Cloud SQL sample style: a Flask function,
           synchronous SQLAlchemy with psycopg 3, gunicorn's gthread worker;
- asyncpg: `bench/peers/asyncpg_peer` — the practical limit: an async function on asyncpg directly.

Database: DATABASE_URL if set, else a throw-away embedded PostgreSQL (Unix socket only). The
migrations are applied, then 100 projects x 100 tasks are seeded with COPY.

On a machine with two or more CPUs the server runs pinned to the first CPU; this script, and
so wrk and the embedded PostgreSQL it starts, are pinned to the second. The server under test
has a CPU of its own, as a Cloud Function instance with --cpu=1 has.

Per server: cold start (spawn to the first 200 of GET /v1/tasks/{id}, median of 10 starts), then
one server process takes, per endpoint, a 3 s warm-up and 10 s of wrk (1 thread, 16 connections,
random ids from a fixed seed); then the worker's resident memory is read from /proc.
Prints a table with ratios and the targets (PASS/MISS); writes bench/results/latest.json.
Everything listens on 127.0.0.1 only, and every process started here is stopped on the way out.
"""

import asyncio
import atexit
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
RESULTS = BENCH / "results"
LUA = BENCH / "wrk.lua"
sys.path.insert(0, str(ROOT / "scripts"))

PROJECTS = 100
TASKS_PER_PROJECT = 100
POOL_SIZE = 5  # every server: 5 pooled connections
CONNECTIONS = 16  # wrk connections
# Overridable for a quick look (BENCH_DURATION_S=2 ...); the documented results use the defaults.
WARMUP_S = int(os.environ.get("BENCH_WARMUP_S", "3"))
DURATION_S = int(os.environ.get("BENCH_DURATION_S", "10"))
COLD_STARTS = int(os.environ.get("BENCH_COLD_STARTS", "10"))
START_TIMEOUT_S = 60  # a server that answers no 200 by then has failed to start
STOP_TIMEOUT_S = 15  # SIGTERM, then SIGKILL after this long

# Settings that would make a server differ from its production defaults, or from the others.
_DROPPED_ENV = (
    "INSTANCE_CONNECTION_NAME",
    "AUTH_MODE",
    "AUTH_AUDIENCE",
    "AUTH_ALLOWED_PRINCIPALS",
    "OIDC_ISSUER",
    "OIDC_JWKS_URL",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "ROOT_PATH",
    "DB_POOL_TIMEOUT_S",
    "DB_STATEMENT_TIMEOUT_MS",
    "THREADS",
    "HOST",
    "PORT",
    "DEBUG",
    "FUNCTION_TARGET",
    "FUNCTION_SOURCE",
    "FUNCTION_SIGNATURE_TYPE",
)


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    target: str
    source: str


SERVERS = (
    Server("service", "this service (FastAPI, SQLModel, SQLAlchemy async + asyncpg)", "api", "main.py"),
    Server("flask", "Flask peer (sync SQLAlchemy + psycopg 3, gthread)", "tasks", "bench/peers/flask_peer/main.py"),
    Server("asyncpg", "asyncpg peer (aio function, asyncpg, no ORM)", "tasks", "bench/peers/asyncpg_peer/main.py"),
)
PEERS = ("flask", "asyncpg")

ENDPOINTS = (
    ("get_task", "GET /v1/tasks/{id}"),
    ("list_tasks", "GET /v1/projects/{id}/tasks"),
    ("create_task", "POST /v1/projects/{id}/tasks"),
)


class BenchError(RuntimeError):
    """A step failed; the message says which and why."""


# --------------------------------------------------------------------------------------------
# CPUs and /proc


@dataclass(frozen=True)
class Pinning:
    server_cpu: int | None
    load_cpu: int | None

    def prefix(self, cpu: int | None) -> list[str]:
        return ["taskset", "-c", str(cpu)] if cpu is not None else []


def choose_pinning() -> Pinning:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("bench: fewer than 2 CPUs: nothing is pinned; server and load generator share the CPU", flush=True)
        return Pinning(None, None)
    pinning = Pinning(cpus[0], cpus[1])
    # This process (its polling during cold starts), and what it starts without taskset (the
    # embedded PostgreSQL, alembic), stay off the server's CPU.
    os.sched_setaffinity(0, {pinning.load_cpu})
    return pinning


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): fields 3 onwards."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:  # field 4: the parent's pid
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):  # the process ended while we looked
                continue
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def pss_kib(pid: int) -> int | None:
    """Proportional set size: private pages plus a fair share of those shared with the master."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies from /proc/stat."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *numbers = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(number) for number in numbers]
            idle = values[3] + values[4]  # idle + iowait
            times[name.removeprefix("cpu")] = (sum(values[:8]) - idle, sum(values[:8]))
    return times


def busy_percent(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    return {
        cpu: round(100 * (after[cpu][0] - before[cpu][0]) / max(1, after[cpu][1] - before[cpu][1]), 1)
        for cpu in after
        if cpu in before
    }


# --------------------------------------------------------------------------------------------
# Processes: every one started here is tracked and stopped, also on Ctrl-C and errors


_running: list[subprocess.Popen[bytes]] = []


def spawn(command: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        # A session (and so a process group) of its own: Ctrl-C on the terminal reaches only this
        # script, which then stops the whole group, gunicorn master and worker alike.
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    _running.append(process)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # The group may outlive its leader (a worker the master did not reap): end it too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process in _running:
        _running.remove(process)


def stop_all() -> None:
    for process in list(_running):
        stop(process)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------
# Tools and database


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise BenchError(
            "wrk is not installed and this is not root. Install it (Debian/Ubuntu: sudo apt-get install wrk) "
            "and run `make bench` again."
        )
    print("bench: installing wrk (apt-get install -y wrk) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:  # most often a stale or missing package list
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600, check=False)
    found = shutil.which("wrk")
    if not found:
        raise BenchError(f"could not install wrk with apt-get:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return found


def prepare_database() -> tuple[str, str]:
    """(URL, description). The embedded server, if started, stops and is deleted when we exit."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, "DATABASE_URL"
    import embedded_db

    folder = tempfile.mkdtemp(prefix="bench-pg-")
    # Registered before the server's own exit hook, so it runs after it (atexit is last-in, first-out).
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    print("bench: starting embedded PostgreSQL ...", flush=True)
    server = embedded_db.start(Path(folder) / "data", delete_on_exit=True)
    return embedded_db.ensure_database(server, "bench"), "embedded PostgreSQL (Unix socket)"


def migrate(url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    result = subprocess.run(
        [str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise BenchError(f"alembic upgrade head failed:\n{result.stdout}{result.stderr}")


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@dataclass
class Dataset:
    project_ids: list[uuid.UUID]
    task_ids: list[uuid.UUID]
    postgres_version: str


async def _seed(url: str) -> Dataset:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        tag = uuid.uuid4().hex[:8]  # project names are unique: a tag per run keeps an existing database usable
        start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
        projects, tasks = [], []
        for p in range(PROJECTS):
            created = start + datetime.timedelta(minutes=p)
            projects.append(
                (uuid.uuid4(), f"bench {tag} project {p:03}", "A project of the benchmark", created, created)
            )
            for t in range(TASKS_PER_PROJECT):
                # Distinct timestamps, interleaved across projects, as rows written over time would be.
                at = start + datetime.timedelta(seconds=t * PROJECTS + p)
                due = (at + datetime.timedelta(days=7)).date() if t % 3 else None
                status = ("todo", "in_progress", "done")[t % 3]
                description = f"Task {t} of project {p}: something to do, written down in a sentence or two."
                tasks.append((uuid.uuid4(), projects[-1][0], f"task {t:03}", description, status, t % 4, due, at, at))
        async with conn.transaction():
            await conn.copy_records_to_table(
                "projects", records=projects, columns=["id", "name", "description", "created_at", "updated_at"]
            )
            await conn.copy_records_to_table(
                "tasks",
                records=tasks,
                columns=[
                    "id",
                    "project_id",
                    "title",
                    "description",
                    "status",
                    "priority",
                    "due_date",
                    "created_at",
                    "updated_at",
                ],
            )
        await conn.execute("ANALYZE projects")
        await conn.execute("ANALYZE tasks")
        version = await conn.fetchval("SHOW server_version")
        return Dataset([row[0] for row in projects], [row[0] for row in tasks], version)
    finally:
        await conn.close()


async def _delete_posted(url: str, project_ids: list[uuid.UUID]) -> int:
    """Remove the tasks a POST run created, so every server meets the same data."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        status = await conn.execute(
            "DELETE FROM tasks WHERE project_id = ANY($1::uuid[]) AND title LIKE 'wrk-post %'", project_ids
        )
        await conn.execute("VACUUM ANALYZE tasks")
        return int(status.split()[-1])
    finally:
        await conn.close()


async def _sessions_opened(url: str) -> int | None:
    """Connections ever opened to the database (PostgreSQL 14+): the difference over a run is the
    pool's churn. One is this query's own."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
    except asyncpg.UndefinedColumnError:
        return None
    finally:
        await conn.close()


async def _drop_seed(url: str, project_ids: list[uuid.UUID]) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:  # ON DELETE CASCADE takes the tasks along
        await conn.execute("DELETE FROM projects WHERE id = ANY($1::uuid[])", project_ids)
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------------
# Servers, cold start, load


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_env(url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _DROPPED_ENV}
    env.update(
        DATABASE_URL=url,
        WORKERS="1",  # functions-framework's default, made explicit
        DB_POOL_SIZE=str(POOL_SIZE),
        DB_MAX_OVERFLOW="2",  # the service's default, and the Flask sample's max_overflow
    )
    return env


def start_server(server: Server, env: dict[str, str], pinning: Pinning, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [
        *pinning.prefix(pinning.server_cpu),
        str(BIN / "functions-framework"),
        f"--target={server.target}",
        f"--source={server.source}",
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    return spawn(command, env=env, log=log), port


def first_200(process: subprocess.Popen, port: int, path: str, started: float) -> float:
    """Seconds from `started` to the first 200 of GET `path`, polling every 5 ms."""
    last = "no answer"
    while time.perf_counter() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            raise BenchError(f"the server exited with status {process.returncode} before answering ({last})")
        connection = HTTPConnection("127.0.0.1", port, timeout=START_TIMEOUT_S)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status == 200:
                return time.perf_counter() - started
            last = f"{response.status} {body[:300]!r}"
        except OSError:  # not listening yet
            pass
        finally:
            connection.close()
        time.sleep(0.005)
    raise BenchError(f"no 200 from GET {path} within {START_TIMEOUT_S} s (last: {last})")


def run_wrk(wrk: str, pinning: Pinning, port: int, mode: str, ids_dir: Path, seconds: int) -> dict[str, Any]:
    command = [
        *pinning.prefix(pinning.load_cpu),
        wrk,
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout=5s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}",
        "--",
        mode,
        str(ids_dir),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            raw = json.loads(line.removeprefix("BENCH_JSON "))
            break
    else:
        raise BenchError(f"wrk printed no result (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    seconds_measured = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds_measured, 1),
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p90_ms": raw["latency_us"]["p90"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
        "max_ms": raw["latency_us"]["max"] / 1000,
        "non_2xx": raw["non_2xx"],
        "socket_errors": {key: value for key, value in raw["errors"].items() if key != "status"},
        "non_2xx_samples": [line for line in raw["samples"].splitlines() if line],
        "wrk_cpu_pct": round(100 * wrk_cpu_s / seconds_measured, 1),
    }


def measure_cold_starts(server: Server, env: dict[str, str], pinning: Pinning, path: str, logs: Path) -> list[float]:
    samples = []
    for run in range(COLD_STARTS):
        started = time.perf_counter()
        process, port = start_server(server, env, pinning, logs / f"{server.key}-cold-{run}.log")
        try:
            samples.append(first_200(process, port, path, started))
        finally:
            stop(process)
    return samples


def bench_server(
    server: Server, url: str, pinning: Pinning, wrk: str, dataset: Dataset, ids_dir: Path, logs: Path
) -> dict[str, Any]:
    env = server_env(url)
    probe = f"/v1/tasks/{dataset.task_ids[0]}"
    print(f"bench: {server.key}: {COLD_STARTS} cold starts ...", flush=True)
    colds = measure_cold_starts(server, env, pinning, probe, logs)
    result: dict[str, Any] = {
        "label": server.label,
        "cold_start_ms": {
            "median": round(statistics.median(colds) * 1000, 1),
            "min": round(min(colds) * 1000, 1),
            "samples": [round(sample * 1000, 1) for sample in colds],
        },
        "endpoints": {},
    }
    process, port = start_server(server, env, pinning, logs / f"{server.key}-load.log")
    try:
        first_200(process, port, probe, time.perf_counter())
        workers = children_of(process.pid)
        if len(workers) != 1:
            raise BenchError(f"expected one worker under gunicorn master {process.pid}, found {workers}")
        worker = workers[0]
        result["pids"] = {"master": process.pid, "worker": worker}
        result["rss_kib_before_load"] = {
            "worker": memory_kib(worker)["VmRSS"],
            "master": memory_kib(process.pid)["VmRSS"],
        }
        for mode, label in ENDPOINTS:
            print(f"bench: {server.key}: {label}: {WARMUP_S} s warm-up, {DURATION_S} s measured ...", flush=True)
            warmup = run_wrk(wrk, pinning, port, mode, ids_dir, WARMUP_S)
            sessions_before = asyncio.run(_sessions_opened(url))
            cpu_before, busy_before, wall_before = cpu_seconds(worker), cpu_times(), time.perf_counter()
            measured = run_wrk(wrk, pinning, port, mode, ids_dir, DURATION_S)
            wall = time.perf_counter() - wall_before
            worker_cpu_s = cpu_seconds(worker) - cpu_before
            measured["cpu_busy_pct"] = busy_percent(busy_before, cpu_times())
            sessions_after = asyncio.run(_sessions_opened(url))
            measured["worker_cpu_pct"] = round(100 * worker_cpu_s / wall, 1)
            # Throughput per CPU-second the worker used: steadier than req/s when the other CPU
            # (wrk and PostgreSQL) is the bottleneck or the machine is noisy.
            measured["req_per_cpu_s"] = round(measured["requests"] / worker_cpu_s, 1) if worker_cpu_s else None
            if sessions_before is not None and sessions_after is not None:
                measured["db_sessions_opened"] = sessions_after - sessions_before - 1
            # The server's CPU should be busy with the worker alone; anything more is another
            # process on it (a noisy machine), and the numbers of this run are worth less.
            other = measured["cpu_busy_pct"].get(str(pinning.server_cpu), 0) - measured["worker_cpu_pct"]
            if pinning.server_cpu is not None and other > 10:
                measured["interference_pct"] = round(other, 1)
                print(f"bench: note: other processes used {other:.0f}% of CPU {pinning.server_cpu} during this run")
            measured["warmup"] = {key: warmup[key] for key in ("rps", "p99_ms", "non_2xx", "non_2xx_samples")}
            if mode == "create_task":
                measured["rows_created"] = asyncio.run(_delete_posted(url, dataset.project_ids))
            result["endpoints"][mode] = measured
        master, worker_memory = memory_kib(process.pid), memory_kib(worker)
        result["rss_kib"] = {
            "worker": worker_memory["VmRSS"],
            "worker_peak": worker_memory["VmHWM"],
            "worker_pss": pss_kib(worker),
            "master": master["VmRSS"],
        }
    finally:
        stop(process)
    return result


# --------------------------------------------------------------------------------------------
# Report


def ratios(servers: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    ours = servers["service"]
    table: dict[str, dict[str, float]] = {}
    for peer in PEERS:
        theirs = servers[peer]
        row = {}
        for mode, _ in ENDPOINTS:
            a, b = ours["endpoints"][mode], theirs["endpoints"][mode]
            row[f"{mode}_rps"] = round(a["rps"] / b["rps"], 3) if b["rps"] else float("nan")
            row[f"{mode}_p99"] = round(a["p99_ms"] / b["p99_ms"], 3) if b["p99_ms"] else float("nan")
            if a["req_per_cpu_s"] and b["req_per_cpu_s"]:
                row[f"{mode}_req_per_cpu_s"] = round(a["req_per_cpu_s"] / b["req_per_cpu_s"], 3)
        row["cold_start"] = round(ours["cold_start_ms"]["median"] / theirs["cold_start_ms"]["median"], 3)
        row["worker_rss"] = round(ours["rss_kib"]["worker"] / theirs["rss_kib"]["worker"], 3)
        table[peer] = row
    return table


def targets(servers: dict[str, dict[str, Any]], ratio: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rss_mib = servers["service"]["rss_kib"]["worker"] / 1024
    checks = [
        ("GET one task req/s >= 1.5x the Flask peer's", ratio["flask"]["get_task_rps"], ">=", 1.5, "x"),
        ("GET one task req/s >= 0.7x the asyncpg peer's", ratio["asyncpg"]["get_task_rps"], ">=", 0.7, "x"),
        ("GET one task p99 <= 1.5x the asyncpg peer's", ratio["asyncpg"]["get_task_p99"], "<=", 1.5, "x"),
        ("list tasks req/s >= 0.6x the asyncpg peer's", ratio["asyncpg"]["list_tasks_rps"], ">=", 0.6, "x"),
        ("POST task req/s >= 0.6x the asyncpg peer's", ratio["asyncpg"]["create_task_rps"], ">=", 0.6, "x"),
        ("cold start <= 1.5x the asyncpg peer's", ratio["asyncpg"]["cold_start"], "<=", 1.5, "x"),
        ("worker RSS after load <= 120 MiB", round(rss_mib, 1), "<=", 120, " MiB"),
    ]
    return [
        {
            "target": name,
            "value": value,
            "limit": limit,
            "unit": unit.strip(),
            "pass": value >= limit if op == ">=" else value <= limit,
        }
        for name, value, op, limit, unit in checks
    ]


def _ratio_cell(row: dict[str, float], key: str) -> str:
    value = row.get(key)
    return f"{value:.2f}x" if value is not None else "-"


def render(results: dict[str, Any]) -> str:
    """The printed report: per endpoint and server, then cold start and memory, ratios, targets."""
    servers, settings = results["servers"], results["settings"]
    load_cpu = settings["load_cpu"]
    busy_label = f"CPU{load_cpu} busy" if load_cpu is not None else "-"
    on_load_cpu = "wrk" if settings["database"] == "DATABASE_URL" else "wrk + PostgreSQL"
    lines = [
        f"wrk: {settings['connections']} connections, 1 thread, {settings['duration_s']} s per endpoint after "
        f"{settings['warmup_s']} s warm-up; server on CPU {settings['server_cpu']}, {on_load_cpu} on CPU {load_cpu}",
        "",
    ]
    header = (
        f"{'endpoint':29} {'server':8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7}"
        f" {'worker CPU':>10} {'req/CPU-s':>9} {busy_label:>9}"
    )
    lines += [header, "-" * len(header)]
    for mode, label in ENDPOINTS:
        for index, server in enumerate(SERVERS):
            row = servers[server.key]["endpoints"][mode]
            busy = row["cpu_busy_pct"].get(str(load_cpu))
            lines.append(
                f"{label if index == 0 else '':29} {server.key:8} {row['rps']:7.0f} {row['p50_ms']:7.1f}"
                f" {row['p99_ms']:7.1f} {row['non_2xx']:7d} {row['worker_cpu_pct']:9.0f}%"
                f" {row['req_per_cpu_s'] or 0:9.0f} {'-' if busy is None else f'{busy:.0f}%':>9}"
            )
    for mode, label in ENDPOINTS:
        for server in SERVERS:
            row = servers[server.key]["endpoints"][mode]
            if row.get("interference_pct"):
                other = row["interference_pct"]
                lines.append(f"note: {label}, {server.key}: other processes used {other:.0f}% of the server's CPU")
            if any(row["socket_errors"].values()):
                lines.append(f"note: {label}, {server.key}: wrk socket errors {row['socket_errors']}")
    lines.append("")
    header = f"{'':29} {'server':8} {'cold start':>11} {'worker RSS':>11} {'worker PSS':>11} {'master RSS':>11}"
    lines += [header, f"{'':29} {'-' * (len(header) - 30)}"]
    for server in SERVERS:
        data = servers[server.key]
        memory = {key: f"{value / 1024:.1f} MiB" if value else "-" for key, value in data["rss_kib"].items()}
        lines.append(
            f"{'':29} {server.key:8} {data['cold_start_ms']['median']:8.0f} ms {memory['worker']:>11}"
            f" {memory['worker_pss']:>11} {memory['master']:>11}"
        )
    lines.append(f"{'':29} (cold start: median of {settings['cold_starts']} starts; memory after the load)")
    lines.append("")
    lines.append(f"{'ratio: this service / peer':42} {'vs flask':>9} {'vs asyncpg':>10}")
    ratio = results["ratios"]
    for mode, label in ENDPOINTS:
        for metric, name in (("rps", "req/s"), ("p99", "p99"), ("req_per_cpu_s", "req/CPU-s")):
            key = f"{mode}_{metric}"
            flask, asyncpg_ = _ratio_cell(ratio["flask"], key), _ratio_cell(ratio["asyncpg"], key)
            lines.append(f"{label + ' ' + name:42} {flask:>9} {asyncpg_:>10}")
    for key, name in (("cold_start", "cold start"), ("worker_rss", "worker RSS")):
        flask, asyncpg_ = _ratio_cell(ratio["flask"], key), _ratio_cell(ratio["asyncpg"], key)
        lines.append(f"{name:42} {flask:>9} {asyncpg_:>10}")
    lines.append("")
    disturbed = [
        f"{server.key} {mode}"
        for server in SERVERS
        for mode, _ in ENDPOINTS
        if servers[server.key]["endpoints"][mode].get("interference_pct")
    ]
    if disturbed:
        lines.append(f"targets (other processes shared the server's CPU in {len(disturbed)} of 9 runs: run again on")
        lines.append("a quiet machine before trusting a PASS or a MISS; req/CPU-s is the steadier figure)")
    else:
        lines.append("targets")
    for check in results["targets"]:
        value = f"{check['value']:.1f} MiB" if check["unit"] == "MiB" else f"{check['value']:.2f}x"
        lines.append(f"  {'PASS' if check['pass'] else 'MISS'}  {check['target']:47} {value}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def wrk_version(wrk: str) -> str:
    result = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    output = (result.stdout + result.stderr).strip()  # `wrk -v` prints its version, then its usage
    return output.splitlines()[0] if output else "unknown"


def collect_unusual_log_lines(logs: Path) -> dict[str, list[str]]:
    """Server output other than the service's INFO/NOTICE JSON lines: errors, tracebacks, warnings."""
    found: dict[str, list[str]] = {}
    for log in sorted(logs.glob("*.log")):
        key = log.name.split("-")[0]
        for line in log.read_text(errors="replace").splitlines():
            if '"severity": "INFO"' in line or '"severity": "NOTICE"' in line or not line.strip():
                continue
            found.setdefault(key, [])
            if len(found[key]) < 200:
                found[key].append(f"{log.name}: {line[:2000]}")
    return found


def _log_tail(logs: Path, lines: int = 40) -> str:
    """The end of the most recent server log: why a server failed is usually there."""
    candidates = sorted(logs.glob("*.log"), key=lambda log: log.stat().st_mtime)
    if not candidates:
        return ""
    text = candidates[-1].read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {candidates[-1].name} ---\n" + "\n".join(text)


def main() -> int:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    began = time.perf_counter()
    pinning = choose_pinning()
    dataset = None
    url = ""
    scratch = tempfile.TemporaryDirectory(prefix="bench-run-")
    ids_dir, logs = Path(scratch.name), Path(scratch.name) / "logs"
    logs.mkdir()
    try:
        wrk = ensure_wrk()
        url, database = prepare_database()
        migrate(url)
        dataset = asyncio.run(_seed(url))
        print(f"bench: seeded {len(dataset.project_ids)} projects x {TASKS_PER_PROJECT} tasks", flush=True)
        (ids_dir / "tasks.txt").write_text("\n".join(map(str, dataset.task_ids)) + "\n")
        (ids_dir / "projects.txt").write_text("\n".join(map(str, dataset.project_ids)) + "\n")
        servers = {server.key: bench_server(server, url, pinning, wrk, dataset, ids_dir, logs) for server in SERVERS}
        unusual = collect_unusual_log_lines(logs)
        results: dict[str, Any] = {
            "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": {
                "database": database,
                "postgres": dataset.postgres_version,
                "dataset": f"{PROJECTS} projects x {TASKS_PER_PROJECT} tasks",
                "wrk": wrk_version(wrk),
                "wrk_threads": 1,
                "connections": CONNECTIONS,
                "warmup_s": WARMUP_S,
                "duration_s": DURATION_S,
                "cold_starts": COLD_STARTS,
                "pool_size": POOL_SIZE,
                "server_cpu": pinning.server_cpu,
                "load_cpu": pinning.load_cpu,
            },
            "servers": servers,
            "server_log_lines": unusual,
        }
        results["ratios"] = ratios(servers)
        results["targets"] = targets(servers, results["ratios"])
        results["elapsed_s"] = round(time.perf_counter() - began, 1)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
        print()
        print(render(results))
        print()
        for key, lines in unusual.items():
            print(f"bench: {key} wrote {len(lines)} unexpected log line(s); first: {lines[0][:300]}")
        for server in SERVERS:
            for mode, label in ENDPOINTS:
                samples = servers[server.key]["endpoints"][mode]["non_2xx_samples"]
                if samples:
                    print(f"bench: {server.key} {label} non-2xx, first: {samples[0][:500]}")
        print(f"bench: results in {RESULTS / 'latest.json'} ({results['elapsed_s']:.0f} s)")
        return 0
    except BenchError as error:
        print(f"bench: {error}{_log_tail(logs)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; stopping servers", file=sys.stderr)
        return 130
    finally:
        stop_all()
        if dataset is not None and os.environ.get("DATABASE_URL"):  # leave a database we did not make as we found it
            try:
                asyncio.run(_drop_seed(url, dataset.project_ids))
            except (OSError, asyncpg.PostgresError) as error:
                print(f"bench: could not delete the seeded rows: {error}", file=sys.stderr)
        scratch.cleanup()


if __name__ == "__main__":
    sys.exit(main())
