"""`make bench`: this service against four peers, same machine, same database, same runs.

The servers, each started as in production (`functions-framework`, gunicorn master + one worker):

- service:      this repository's `main.py` with the settings it is deployed with (JSON logs at
                INFO with request ids and an access line per request, ETags, audit entries,
                idempotency on POST: every POST sends an Idempotency-Key), authentication off;
- service_auth: the same with AUTH_MODE=google, a bearer token on every request, the signing
                keys fetched once from a local key server and cached (tests/identity_fakes.py);
- flask:        `bench/peers/flask_peer` — Google's Cloud SQL sample style: a Flask function,
                synchronous SQLAlchemy with psycopg 3, gunicorn's gthread worker;
- fullstack:    `bench/peers/fullstack_peer` — full-stack-fastapi-template style: sync SQLModel
                Session, `def` routes, response_model validation of ORM objects, psycopg 3;
- lean:         `bench/peers/lean_peer` — lean FastAPI: SQLModel tables, Core statements built at
                import, run on the asyncpg connection from SQLAlchemy's async pool, orjson;
- asyncpg:      `bench/peers/asyncpg_peer` — the limit: an aio function on asyncpg directly;
- five_trips:   this service at commit 4461b00 (git archive), a keyed create in five round trips:
                on that endpoint only, the yardstick of the connection-time goal in the same run.

Database: DATABASE_URL if set, else a throw-away embedded PostgreSQL (Unix socket only). The
migrations are applied, then 100 projects x 100 tasks are seeded with COPY.

On a machine with two or more CPUs the server runs pinned to the first CPU; this script, and
so wrk, py-spy and the embedded PostgreSQL it starts, are pinned to the second. The server under
test has a CPU of its own, as a Cloud Function instance with --cpu=1 has.

One run: per server, cold starts (spawn to the first 200 of GET /v1/tasks/{id}); then one server
process answers a contract check (same JSON, pages, 201 + Location, 404s) and takes, per endpoint,
a warm-up and a measured wrk run (1 thread, 16 connections, random ids from a fixed seed), its
worker's CPU time read from /proc around the measured run; then the worker's memory. Also timed:
`import main` over importing its dependencies alone. The servers' order rotates from run to run.
`make bench` makes BENCH_RUNS runs (3) and reports the median of each run's ratios, with the
targets (PASS/FAIL); then py-spy samples the service's worker under GET and list load for a
profile summary. Prints the report; writes bench/results/latest.json (and the profiles' stacks).
Everything listens on 127.0.0.1 only, and every process started here is stopped on the way out.
"""

import asyncio
import atexit
import contextlib
import datetime
import itertools
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
from dataclasses import dataclass, field
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
sys.path.insert(1, str(ROOT))  # tests.identity_fakes: the token issuer of the authenticated row

import measure_startup  # noqa: E402 (scripts/measure_startup.py: `import main` over its libraries)
import profile_summary  # noqa: E402 (bench/profile_summary.py, beside this file)
import report  # noqa: E402 (bench/report.py)

PROJECTS = 100
TASKS_PER_PROJECT = 100
POOL_SIZE = 5  # every server: 5 pooled connections
CONNECTIONS = 16  # wrk connections


def _setting(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit():
        raise SystemExit(f"bench: {name} must be a whole number, not {value!r}")
    return int(value)


# Every knob is an environment variable; the defaults make a full `make bench` of about 11 minutes
# on a 2-CPU machine. For a quick look: BENCH_RUNS=1 BENCH_DURATION_S=2 BENCH_WARMUP_S=1 ...
RUNS = _setting("BENCH_RUNS", 3)  # the report is the median of the runs' ratios
WARMUP_S = _setting("BENCH_WARMUP_S", 2)  # per endpoint and server, not measured
DURATION_S = _setting("BENCH_DURATION_S", 5)  # per endpoint and server, measured
COLD_STARTS = _setting("BENCH_COLD_STARTS", 5)  # per server and run; the run's median counts
IMPORT_SAMPLES = _setting("BENCH_IMPORT_SAMPLES", 5)  # `import main` timings per run
PROFILE_S = _setting("BENCH_PROFILE_S", 10)  # py-spy seconds per profiled endpoint; 0: no profile
PROFILE_RATE = _setting("BENCH_PROFILE_RATE", 250)  # samples per second
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
    "DB_POOL_IDLE_S",
    "DB_STATEMENT_TIMEOUT_MS",
    "GOOGLE_CLOUD_PROJECT",
    "THREADS",
    "HOST",
    "PORT",
    "DEBUG",
    "FUNCTION_TARGET",
    "FUNCTION_SOURCE",
    "FUNCTION_SIGNATURE_TYPE",
)
# As on Google Cloud: the deploy step sets GOOGLE_CLOUD_PROJECT (log lines then name their trace in
# Cloud Trace), and Cloud Run sets K_SERVICE (the service then writes JSON log lines).
DEPLOYED_ENV = {"GOOGLE_CLOUD_PROJECT": "bench-project", "K_SERVICE": "projects-api"}
AUTH_PRINCIPAL = "bench-client@example.com"


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    target: str
    source: str
    authenticated: bool = False  # AUTH_MODE=google, and wrk sends a bearer token
    cold_starts: bool = True
    patches: bool = True  # answers PATCH with If-Match (the full-stack and asyncpg peers do not)
    revision: str | None = None  # served from this commit of the repository, not from the work tree
    modes: tuple[str, ...] | None = None  # only these endpoints (all when None)


# BENCH_POOL=asyncpg: the service (both rows) on asyncpg's own pool instead of app/core/db/pool.py,
# the pool's A/B (bench/asyncpg_pool.py); everything else is the same service.
def service_source() -> str:
    """What the service's servers serve: main.py, or with BENCH_POOL=asyncpg bench/asyncpg_pool.py."""
    sources = {"": "main.py", "asyncpg": "bench/asyncpg_pool.py"}
    pool = os.environ.get("BENCH_POOL", "")
    if pool not in sources:
        raise SystemExit(f"bench: BENCH_POOL={pool!r}: leave it empty (this service's pool) or set asyncpg")
    return sources[pool]


SERVICE_SOURCE = service_source()
ON_POOL = ", on asyncpg's pool" if SERVICE_SOURCE != "main.py" else ""

# The commit just before writes took one statement (BEGIN, claim, INSERT, store, COMMIT for a keyed
# create), with the connection-time counter (Database.held_s) already in.
FIVE_ROUND_TRIPS = "4461b00"

SERVERS = (
    Server(
        "service",
        f"this service, as deployed (JSON logs, ETags, audit, idempotency), auth off{ON_POOL}",
        "api",
        SERVICE_SOURCE,
    ),
    Server(
        "service_auth",
        f"this service, as above, AUTH_MODE=google (signing keys cached){ON_POOL}",
        "api",
        SERVICE_SOURCE,
        authenticated=True,
        cold_starts=False,
    ),
    Server(
        "flask",
        "Flask peer: Google's sample style (sync SQLAlchemy + psycopg 3, gthread)",
        "tasks",
        "bench/peers/flask_peer/main.py",
    ),
    Server(
        "fullstack",
        "full-stack-fastapi-template style (sync SQLModel Session, def routes)",
        "tasks",
        "bench/peers/fullstack_peer/main.py",
        patches=False,
    ),
    Server(
        "lean",
        "lean FastAPI (SQLModel tables, Core on SQLAlchemy's pool + asyncpg, orjson)",
        "tasks",
        "bench/peers/lean_peer/main.py",
    ),
    Server(
        "asyncpg",
        "no framework: aio function + asyncpg (the limit)",
        "tasks",
        "bench/peers/asyncpg_peer/main.py",
        patches=False,
    ),
    # The baseline of a keyed create's connection time, measured in the same run: a run on a busy
    # machine holds connections longer, so a figure recorded on another day is no yardstick.
    Server(
        "five_trips",
        f"this service at {FIVE_ROUND_TRIPS}, before writes took one statement: a keyed create in five round trips",
        "api",
        "main.py",
        cold_starts=False,
        patches=False,
        revision=FIVE_ROUND_TRIPS,
        modes=("create_task",),
    ),
)
PEERS = ("flask", "fullstack", "lean", "asyncpg")

ENDPOINTS = (
    ("get_task", "GET /v1/tasks/{id}"),
    ("list_tasks", "GET /v1/projects/{id}/tasks"),
    ("create_task", "POST task, Idempotency-Key"),
    ("create_task_unkeyed", "POST task, no key"),
    ("patch_task", "PATCH task, If-Match"),
)
WRITES = frozenset({"create_task", "create_task_unkeyed", "patch_task"})


def _named(variable: str, what: str, known: list[str], default: str = "") -> list[str]:
    """The comma-separated names in `variable` (else `default`); one not in `known` stops the bench."""
    names = [name.strip() for name in os.environ.get(variable, default).split(",") if name.strip()]
    unknown = set(names) - set(known)
    if unknown:
        raise SystemExit(f"bench: {variable} names unknown {what} {sorted(unknown)}; known: " + ", ".join(known))
    return names


def profiled_endpoints() -> tuple[str, ...]:
    """BENCH_PROFILE=create_task,patch_task profiles those endpoints (default: the two reads)."""
    return tuple(_named("BENCH_PROFILE", "endpoints", [mode for mode, _ in ENDPOINTS], "get_task,list_tasks"))


def selected_servers() -> tuple[Server, ...]:
    """BENCH_SERVERS=service,lean runs a subset (targets that need a missing server show n/a)."""
    if not os.environ.get("BENCH_SERVERS", "").strip():
        return SERVERS
    keys = _named("BENCH_SERVERS", "servers", [server.key for server in SERVERS])
    return tuple(server for server in SERVERS if server.key in keys)


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


def spawn(command: list[str], *, env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        # A session (and so a process group) of its own: Ctrl-C on the terminal reaches only this
        # script, which then stops the whole group, gunicorn master and worker alike.
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
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
    """Remove the tasks a POST run created, and the service's idempotency records of them, so
    every server meets the same data."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        status = await conn.execute(
            "DELETE FROM tasks WHERE project_id = ANY($1::uuid[]) AND title LIKE 'wrk-post %'", project_ids
        )
        if await conn.fetchval("SELECT to_regclass('idempotency_keys') IS NOT NULL"):
            await conn.execute("DELETE FROM idempotency_keys WHERE key LIKE 'wrk-%'")
            await conn.execute("VACUUM ANALYZE idempotency_keys")
        await conn.execute("VACUUM ANALYZE tasks")
        return int(status.split()[-1])
    finally:
        await conn.close()


async def _reset_versions(url: str, version: int) -> None:
    """Every task at `version`, as wrk.lua's PATCH run expects (the seeded rows' priorities and the
    PATCHes' own are all in range, so nothing else needs undoing)."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("UPDATE tasks SET version = $1", version)
        await conn.execute("VACUUM ANALYZE tasks")  # every server's PATCH run meets the same table
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


@dataclass(frozen=True)
class Identity:
    """The authenticated row's token issuer: RSA keys, their JWKS on loopback, signed ID tokens."""

    issuer: Any  # tests.identity_fakes.Issuer
    audience: str

    def settings(self) -> dict[str, str]:
        return {
            "AUTH_MODE": "google",
            "AUTH_AUDIENCE": self.audience,
            # Google's key set is not reachable here: the same keys, fetched once and cached, from loopback.
            "OIDC_JWKS_URL": self.issuer.jwks_url,
            "AUTH_ALLOWED_PRINCIPALS": AUTH_PRINCIPAL,
        }

    def token(self) -> str:
        """A Google-style ID token, valid for an hour (as Google's are); one is made per wrk run."""
        token: str = self.issuer.token(AUTH_PRINCIPAL, audience=self.audience, expires_in=3600)
        return token


def start_identity() -> Identity:
    from tests.identity_fakes import AUDIENCE, Issuer

    issuer = Issuer().start()
    atexit.register(issuer.stop)
    return Identity(issuer, AUDIENCE)


@dataclass
class Bench:
    """What every step of a run needs."""

    url: str
    pinning: "Pinning"
    wrk: str
    dataset: Dataset
    ids_dir: Path
    logs: Path
    identity: Identity | None = None
    checkouts: dict[str, Path] = field(default_factory=dict)  # revision: where its files were put


def server_env(url: str, server: Server | None = None, identity: Identity | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _DROPPED_ENV}
    env.update(
        DATABASE_URL=url,
        WORKERS="1",  # functions-framework's default, made explicit
        DB_POOL_SIZE=str(POOL_SIZE),
        DB_MAX_OVERFLOW="2",  # the service's default, and the Flask sample's max_overflow
        **DEPLOYED_ENV,
    )
    if server is not None and server.authenticated:
        if identity is None:
            raise BenchError(f"{server.key} needs the token issuer")
        env.update(identity.settings())
    return env


# Under load the service is served through bench/service_main.py: main.py plus a bench-only path
# that reports how long its connections were checked out (connection-seconds per request).
SERVICE_UNDER_LOAD = "bench/service_main.py"


def start_server(
    server: Server, env: dict[str, str], pinning: Pinning, log: Path, source: str | None = None, cwd: Path = ROOT
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [
        *pinning.prefix(pinning.server_cpu),
        str(BIN / "functions-framework"),
        f"--target={server.target}",
        f"--source={source or server.source}",
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    return spawn(command, env=env, log=log, cwd=cwd), port


def first_200(
    process: subprocess.Popen, port: int, path: str, started: float, headers: dict[str, str] | None = None
) -> float:
    """Seconds from `started` to the first 200 of GET `path`, polling every 5 ms."""
    last = "no answer"
    while time.perf_counter() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            raise BenchError(f"the server exited with status {process.returncode} before answering ({last})")
        connection = HTTPConnection("127.0.0.1", port, timeout=START_TIMEOUT_S)
        try:
            connection.request("GET", path, headers=headers or {})
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


def wrk_command(
    wrk: str,
    pinning: Pinning,
    port: int,
    mode: str,
    ids_dir: Path,
    seconds: int,
    token: str | None = None,
    first_version: int | None = None,
) -> list[str]:
    tag = uuid.uuid4().hex[:16]  # makes this run's Idempotency-Keys and trace ids its own
    return [
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
        tag,
        token or "",
        *([str(first_version)] if first_version is not None else []),
    ]


def parse_wrk(stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            raw = json.loads(line.removeprefix("BENCH_JSON "))
            break
    else:
        raise BenchError(f"wrk printed no result (exit {returncode}):\n{stdout}{stderr}")
    seconds_measured = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": round(seconds_measured, 3),
        "rps": round(raw["requests"] / seconds_measured, 1),
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p90_ms": raw["latency_us"]["p90"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
        "max_ms": raw["latency_us"]["max"] / 1000,
        "non_2xx": raw["non_2xx"],
        "socket_errors": {key: value for key, value in raw["errors"].items() if key != "status"},
        "non_2xx_samples": [line for line in raw["samples"].splitlines() if line],
    }


# Each PATCH wrk run's first version: far enough apart that no run's visits reach the next one's.
_PATCH_VERSIONS = itertools.count(1, 1000)


def run_wrk(
    wrk: str,
    pinning: Pinning,
    port: int,
    mode: str,
    ids_dir: Path,
    seconds: int,
    *,
    token: str | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    first_version = None
    if mode == "patch_task":  # wrk.lua's If-Match counts visits from the version set here
        if url is None:
            raise BenchError("patch_task needs the database URL to set the tasks' versions")
        # A new version for every wrk run, not back to 1: the PATCHes a server still had in flight
        # when the previous wrk run stopped (a thread pool's queue) land after this reset; with
        # the old version in their If-Match they miss, where with 1 again they would move rows
        # this run expects unchanged, and its first visits there would answer 412.
        first_version = next(_PATCH_VERSIONS)
        asyncio.run(_reset_versions(url, first_version))
    command = wrk_command(wrk, pinning, port, mode, ids_dir, seconds, token, first_version)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    measured = parse_wrk(result.stdout, result.stderr, result.returncode)
    wrk_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    measured["wrk_cpu_pct"] = round(100 * wrk_cpu_s / measured["seconds"], 1)
    return measured


def connection_seconds(port: int) -> float:
    """Seconds the service's connections have been checked out so far (bench/service_main.py)."""
    status, _, answer = _call(port, "GET", "/_bench/connections", {})
    if status != 200 or not isinstance(answer, dict):
        raise BenchError(f"GET /_bench/connections: {status} {str(answer)[:300]}")
    return float(answer["held_s"])


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


# --------------------------------------------------------------------------------------------
# The contract check: every server gives the same answers, or comparing them says nothing

TASK_FIELDS = frozenset(
    {"id", "project_id", "title", "description", "status", "priority", "due_date"}
    | {"created_at", "updated_at", "version", "created_by", "updated_by"}
)


def _call(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> tuple:
    connection = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        try:
            document = json.loads(raw)
        except ValueError:
            document = raw[:300]
        return response.status, {name.lower(): value for name, value in response.getheaders()}, document
    finally:
        connection.close()


def check_contract(server: Server, port: int, dataset: Dataset, headers: dict[str, str]) -> None:
    """One task, two pages (the second after the first's cursor), a create, a PATCH and its
    repeat (200, then 412), two 404s: the same answers as the service's, as the wrk runs will send
    them. Raises BenchError otherwise."""
    problems = []
    task_id, project_id, other_project = dataset.task_ids[0], dataset.project_ids[0], dataset.project_ids[-1]
    status, _, task = _call(port, "GET", f"/v1/tasks/{task_id}", headers)
    if status != 200 or not isinstance(task, dict) or set(task) != TASK_FIELDS or task["id"] != str(task_id):
        problems.append(f"GET /v1/tasks/{{id}}: {status} {str(task)[:300]}")
    newest = [f"task {number:03}" for number in range(TASKS_PER_PROJECT - 1, -1, -1)]  # as seeded
    status, _, page = _call(port, "GET", f"/v1/projects/{project_id}/tasks", headers)
    titles = [item.get("title") for item in page.get("items", [])] if isinstance(page, dict) else []
    if status != 200 or titles != newest[:20] or not page.get("next_cursor"):
        problems.append(f"GET /v1/projects/{{id}}/tasks (first page of 20): {status} {str(page)[:300]}")
    else:
        path = f"/v1/projects/{project_id}/tasks?limit=5&cursor={page['next_cursor']}"
        status, _, later = _call(port, "GET", path, headers)
        titles = [item.get("title") for item in later.get("items", [])] if isinstance(later, dict) else []
        if status != 200 or titles != newest[20:25]:
            problems.append(f"GET /v1/projects/{{id}}/tasks?limit=5&cursor=...: {status} {str(later)[:300]}")
    post_headers = headers | {"Content-Type": "application/json", "Idempotency-Key": f"wrk-check-{uuid.uuid4()}"}
    body = b'{"title": "wrk-post check", "priority": 2}'
    status, answer_headers, created = _call(port, "POST", f"/v1/projects/{other_project}/tasks", post_headers, body)
    if (
        status != 201
        or not isinstance(created, dict)
        or set(created) != TASK_FIELDS
        or created["title"] != "wrk-post check"
        or answer_headers.get("location") != f"/v1/tasks/{created['id']}"
    ):
        problems.append(f"POST /v1/projects/{{id}}/tasks: {status} {answer_headers} {str(created)[:300]}")
    if server.patches and isinstance(task, dict) and isinstance(task.get("version"), int):
        problems += _check_patch(port, task, headers)
    for path in (f"/v1/tasks/{uuid.uuid4()}", f"/v1/projects/{uuid.uuid4()}/tasks"):
        status, _, answer = _call(port, "GET", path, headers)
        if status != 404:
            problems.append(f"GET {path}: {status} instead of 404: {str(answer)[:200]}")
    if problems:
        raise BenchError(f"{server.key} does not answer as every server must:\n  " + "\n  ".join(problems))


def _check_patch(port: int, task: dict[str, Any], headers: dict[str, str]) -> list[str]:
    """PATCH the task with its current ETag (its own priority: nothing but the version changes),
    then again with the same one: 200 with the next version's ETag, then 412."""
    path, task_hex = f"/v1/tasks/{task['id']}", uuid.UUID(task["id"]).hex
    patch_headers = headers | {
        "Content-Type": "application/merge-patch+json",
        "If-Match": f'"{task_hex}.{task["version"]}"',
    }
    body = json.dumps({"priority": task["priority"]}).encode()
    problems = []
    status, answer_headers, patched = _call(port, "PATCH", path, patch_headers, body)
    if (
        status != 200
        or not isinstance(patched, dict)
        or set(patched) != TASK_FIELDS
        or patched["version"] != task["version"] + 1
        or answer_headers.get("etag") != f'"{task_hex}.{task["version"] + 1}"'
    ):
        problems.append(f"PATCH /v1/tasks/{{id}} with If-Match: {status} {answer_headers} {str(patched)[:300]}")
    status, _, answer = _call(port, "PATCH", path, patch_headers, body)
    if status != 412:
        problems.append(f"PATCH /v1/tasks/{{id}} with a stale If-Match: {status} instead of 412: {str(answer)[:200]}")
    return problems


# --------------------------------------------------------------------------------------------
# One server in one run; `import main`; one run; the profile


def bench_server(server: Server, bench: Bench, run: int) -> dict[str, Any]:
    env = server_env(bench.url, server, bench.identity)
    probe = f"/v1/tasks/{bench.dataset.task_ids[0]}"
    result: dict[str, Any] = {"label": server.label, "endpoints": {}}
    if server.cold_starts and COLD_STARTS:
        print(f"bench: run {run}: {server.key}: {COLD_STARTS} cold starts ...", flush=True)
        colds = measure_cold_starts(server, env, bench.pinning, probe, bench.logs)
        result["cold_start_ms"] = {
            "median": round(statistics.median(colds) * 1000, 1),
            "min": round(min(colds) * 1000, 1),
            "samples": [round(sample * 1000, 1) for sample in colds],
        }
    pinning, url = bench.pinning, bench.url
    token = bench.identity.token() if server.authenticated and bench.identity else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    source = SERVICE_UNDER_LOAD if server.source == "main.py" else None
    root = bench.checkouts[server.revision] if server.revision else ROOT
    process, port = start_server(server, env, pinning, bench.logs / f"{server.key}-load-{run}.log", source, root)
    try:
        first_200(process, port, probe, time.perf_counter(), headers)
        check_contract(server, port, bench.dataset, headers)
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
            if server.modes is not None and mode not in server.modes:
                continue
            print(f"bench: run {run}: {server.key}: {label}: {WARMUP_S} s warm-up, {DURATION_S} s", flush=True)
            token = bench.identity.token() if server.authenticated and bench.identity else None
            warmup = (
                run_wrk(bench.wrk, pinning, port, mode, bench.ids_dir, WARMUP_S, token=token, url=url)
                if WARMUP_S
                else {}
            )
            sessions_before = asyncio.run(_sessions_opened(url))
            held_before = connection_seconds(port) if source else None
            cpu_before, busy_before, wall_before = cpu_seconds(worker), cpu_times(), time.perf_counter()
            measured = run_wrk(bench.wrk, pinning, port, mode, bench.ids_dir, DURATION_S, token=token, url=url)
            wall = time.perf_counter() - wall_before
            if held_before is not None and measured["requests"]:
                # Requests wrk gave up on at the deadline may still hold a connection: let them end.
                time.sleep(0.2)
                held_s = connection_seconds(port) - held_before
                measured["connection_ms_per_request"] = round(1000 * held_s / measured["requests"], 4)
            worker_cpu_s = cpu_seconds(worker) - cpu_before
            measured["cpu_busy_pct"] = busy_percent(busy_before, cpu_times())
            sessions_after = asyncio.run(_sessions_opened(url))
            measured["worker_cpu_s"] = round(worker_cpu_s, 3)
            measured["worker_cpu_pct"] = round(100 * worker_cpu_s / wall, 1)
            # CPU per request: what one request costs the worker, whatever else slowed the run.
            # Throughput per CPU-second is its inverse, steadier than req/s on a noisy machine.
            requests = measured["requests"]
            measured["cpu_us_per_request"] = round(1e6 * worker_cpu_s / requests, 1) if requests else None
            measured["req_per_cpu_s"] = round(requests / worker_cpu_s, 1) if worker_cpu_s else None
            if sessions_before is not None and sessions_after is not None:
                measured["db_sessions_opened"] = sessions_after - sessions_before - 1
            # The server's CPU should be busy with the worker alone; anything more is another
            # process on it (a noisy machine), and the numbers of this run are worth less.
            other = measured["cpu_busy_pct"].get(str(pinning.server_cpu), 0) - measured["worker_cpu_pct"]
            if pinning.server_cpu is not None and other > 10:
                measured["interference_pct"] = round(other, 1)
                print(f"bench: note: other processes used {other:.0f}% of CPU {pinning.server_cpu} meanwhile")
            measured["warmup"] = {key: warmup.get(key) for key in ("rps", "p99_ms", "non_2xx", "non_2xx_samples")}
            if mode in WRITES - {"patch_task"}:
                # wrk stops sending at the deadline; requests it has given up on may still be running
                # (a sync peer's thread pool): let them finish before their rows are deleted.
                time.sleep(1)
                measured["rows_created"] = asyncio.run(_delete_posted(url, bench.dataset.project_ids))
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


def measure_imports(bench: Bench) -> dict[str, Any]:
    """`import main` over importing the libraries it ends up importing and registering one FastAPI
    route, in a fresh interpreter on the server's CPU (scripts/measure_startup.py, `make startup`):
    the second figure is what the app's own code adds."""
    env = server_env(bench.url)
    measure_startup.compile_bytecode()
    modules = measure_startup.third_party_modules(env)
    samples = []
    for _ in range(IMPORT_SAMPLES):
        try:
            timing = measure_startup.import_over_libraries(env, modules, bench.pinning.prefix(bench.pinning.server_cpu))
        except subprocess.CalledProcessError as error:
            raise BenchError(f"import main failed:\n{error.stderr[-3000:]}") from None
        samples.append(tuple(round(seconds * 1000, 1) for seconds in timing[:2]))
    return {
        "dependencies": sorted({name.partition(".")[0] for name in modules}),
        "dependencies_ms": statistics.median(sample[0] for sample in samples),
        "main_over_dependencies_ms": statistics.median(sample[1] for sample in samples),
        "samples_ms": samples,
    }


def run_once(run: int, servers: tuple[Server, ...], bench: Bench) -> dict[str, Any]:
    """One run: every server, in an order that rotates from run to run (so no server is always
    the one measured while the machine warms up or a neighbour starts), then the import timing."""
    shift = (run - 1) % len(servers)
    order = servers[shift:] + servers[:shift]
    result: dict[str, Any] = {"order": [server.key for server in order], "servers": {}}
    for server in order:
        try:
            result["servers"][server.key] = bench_server(server, bench, run)
        except BenchError as error:
            if not server.revision:
                raise
            # A yardstick from another commit is not this service: the run goes on without it.
            print(f"bench: note: run {run}: {server.key} failed, left out of this run: {error}", flush=True)
    if IMPORT_SAMPLES and any(server.key == "service" for server in servers):
        print(f"bench: run {run}: import main, {IMPORT_SAMPLES} times ...", flush=True)
        result["imports"] = measure_imports(bench)
    return result


def profile_service(bench: Bench) -> dict[str, Any]:
    """py-spy samples the service's worker (settings as deployed) under the load of each profiled endpoint."""
    py_spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if py_spy is None:
        return {"error": "py-spy is not installed (bench/requirements.txt lists it)"}
    service = next(server for server in SERVERS if server.key == "service")
    env = server_env(bench.url, service)
    process, port = start_server(service, env, bench.pinning, bench.logs / "service-profile.log")
    profiles: dict[str, Any] = {"rate_hz": PROFILE_RATE, "seconds": PROFILE_S}
    try:
        first_200(process, port, f"/v1/tasks/{bench.dataset.task_ids[0]}", time.perf_counter())
        (worker,) = children_of(process.pid)
        profiled = profiled_endpoints()
        for mode, label in ENDPOINTS:
            if mode not in profiled:
                continue
            print(f"bench: profile: {label}: py-spy on the worker for {PROFILE_S} s under load ...", flush=True)
            run_wrk(bench.wrk, bench.pinning, port, mode, bench.ids_dir, max(WARMUP_S, 1))
            # The load starts first and outlasts the recording by a second at each end.
            command = wrk_command(bench.wrk, bench.pinning, port, mode, bench.ids_dir, PROFILE_S + 2)
            load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                time.sleep(1)
                stacks = RESULTS / f"profile-{mode}.txt"
                recorded = profile_summary.record(
                    py_spy, worker, PROFILE_S, PROFILE_RATE, stacks, bench.pinning.prefix(bench.pinning.load_cpu)
                )
                stdout, stderr = load.communicate(timeout=PROFILE_S + 60)
            finally:
                if load.poll() is None:  # interrupted: stop the load too
                    load.kill()
                    load.wait()
            if mode in WRITES:  # as after each measured run: every server meets the same data
                asyncio.run(_delete_posted(bench.url, bench.dataset.project_ids))
            if "error" in recorded:
                profiles[mode] = recorded
                continue
            served = parse_wrk(stdout, stderr, load.returncode)
            profiles[mode] = profile_summary.summarize(stacks.read_text(), ROOT) | {
                "stacks_file": str(stacks.relative_to(ROOT)),
                "rps_while_sampled": served["rps"],
                "non_2xx": served["non_2xx"],
            }
        profiles["imports"] = profile_summary.import_breakdown(
            sys.executable,
            tuple(measure_startup.third_party_modules(env)),
            env,
            ROOT,
            bench.pinning.prefix(bench.pinning.server_cpu),
        )
    finally:
        stop(process)
    return profiles


# --------------------------------------------------------------------------------------------
# Report


def summarize(runs: list[dict[str, Any]], servers: tuple[Server, ...]) -> dict[str, Any]:
    modes = [mode for mode, _ in ENDPOINTS]
    keys = [server.key for server in servers]
    summary: dict[str, Any] = {
        "servers": report.medians(runs, keys, modes),
        "ratios": report.ratio_table(runs, [peer for peer in PEERS if peer in keys], modes),
        "targets": report.judge(runs),
        "auth_extra_cpu_pct": {
            mode: report.median([report.auth_extra_cpu_pct(run, mode) for run in runs]) for mode in modes
        },
    }
    imports = [run["imports"] for run in runs if "imports" in run]
    if imports:
        summary["imports"] = {
            name: report.median([entry[name] for entry in imports])
            for name in ("dependencies_ms", "main_over_dependencies_ms")
        }
    return summary


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


def severity(line: str) -> str | None:
    """A JSON log line's severity; None for anything else (a traceback, a plain-text line)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry.get("severity") if isinstance(entry, dict) else None


def collect_unusual_log_lines(logs: Path) -> dict[str, list[str]]:
    """Server output other than the service's INFO/NOTICE JSON lines: errors, tracebacks, warnings."""
    found: dict[str, list[str]] = {}
    for log in sorted(logs.glob("*.log")):
        key = log.name.split("-")[0]
        for line in log.read_text(errors="replace").splitlines():
            if not line.strip() or severity(line) in {"INFO", "NOTICE"}:
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


def check_out_revisions(servers: tuple[Server, ...], scratch: Path) -> tuple[tuple[Server, ...], dict[str, Path]]:
    """The files of each server's revision (git archive), beside the run's other scratch files; a
    server whose revision this clone lacks (a shallow clone) is left out, with a note."""
    checkouts: dict[str, Path] = {}
    kept = []
    for server in servers:
        if server.revision and server.revision not in checkouts:
            try:
                archive = subprocess.run(
                    ["git", "archive", "--format=tar", server.revision], cwd=ROOT, capture_output=True, check=False
                )
            except OSError:
                print(f"bench: note: {server.key} left out: git is not installed")
                continue
            if archive.returncode != 0:
                print(f"bench: note: {server.key} left out: this clone lacks commit {server.revision} (clone it whole)")
                continue
            directory = scratch / f"checkout-{server.revision}"
            directory.mkdir()
            subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
            checkouts[server.revision] = directory
        kept.append(server)
    return tuple(kept), checkouts


def estimated_minutes(servers: tuple[Server, ...]) -> float:
    """Rough: what the steps took on a 2-CPU machine (a server start is about a second)."""
    load = sum(
        len(ENDPOINTS if server.modes is None else server.modes) * (WARMUP_S + DURATION_S + 1.5) + 3
        for server in servers
    )
    colds = sum(server.cold_starts for server in servers) * COLD_STARTS * 1.3
    per_run = load + colds + IMPORT_SAMPLES * 1.3
    profile = (len(profiled_endpoints()) * (max(WARMUP_S, 1) + PROFILE_S + 4) + 5) if PROFILE_S else 0
    return (RUNS * per_run + profile + 20) / 60


def main() -> int:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    began = time.perf_counter()
    servers = selected_servers()
    profiled_endpoints()  # a misspelt BENCH_PROFILE stops here, not after the runs
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
        identity = start_identity() if any(server.authenticated for server in servers) else None
        servers, checkouts = check_out_revisions(servers, ids_dir)
        if not servers:
            raise BenchError("no server left to measure")
        bench = Bench(url, pinning, wrk, dataset, ids_dir, logs, identity, checkouts)
        print(
            f"bench: {RUNS} run(s) of {len(servers)} servers, {WARMUP_S} s + {DURATION_S} s per endpoint, "
            f"{COLD_STARTS} cold starts; about {estimated_minutes(servers):.0f} min in all",
            flush=True,
        )
        runs = []
        for run in range(1, RUNS + 1):
            started = time.perf_counter()
            runs.append(run_once(run, servers, bench))
            took = time.perf_counter() - started
            left = f"; about {took * (RUNS - run) / 60:.1f} min of runs left" if run < RUNS else ""
            print(f"bench: run {run} of {RUNS} took {took:.0f} s{left}", flush=True)
        if PROFILE_S and any(server.key == "service" for server in servers):
            profile = profile_service(bench)
        else:
            profile = {"error": "not profiled (BENCH_PROFILE_S=0, or the service is not among BENCH_SERVERS)"}
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
                "runs": RUNS,
                "warmup_s": WARMUP_S,
                "duration_s": DURATION_S,
                "cold_starts": COLD_STARTS,
                "import_samples": IMPORT_SAMPLES,
                "pool_size": POOL_SIZE,
                "service_source": SERVICE_SOURCE,
                "server_cpu": pinning.server_cpu,
                "load_cpu": pinning.load_cpu,
                "servers": {server.key: server.label for server in servers},
            },
            "summary": summarize(runs, servers),
            "runs": runs,
            "profile": profile,
            "server_log_lines": unusual,
        }
        results["elapsed_s"] = round(time.perf_counter() - began, 1)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
        labels = dict(ENDPOINTS)
        print()
        print("\n".join(report.render(results, labels)))
        print()
        print("\n".join(profile_summary.render(profile, {mode: labels[mode] for mode in profiled_endpoints()})))
        for key, lines in unusual.items():
            print(f"bench: {key} wrote {len(lines)} unexpected log line(s); first: {lines[0][:300]}")
        for index, run_result in enumerate(runs, 1):
            for key, data in run_result["servers"].items():
                for mode, label in ENDPOINTS:
                    samples = data["endpoints"].get(mode, {}).get("non_2xx_samples")
                    if samples:
                        print(f"bench: run {index}: {key} {label} non-2xx, first: {samples[0][:500]}")
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
