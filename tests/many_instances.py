"""Many instances of the function against one PostgreSQL with few connection slots, on loopback.

Each instance is what Cloud Run starts: `functions-framework --target=api` (gunicorn, one worker)
serving `main.py`, with its own pool. The database is a private embedded PostgreSQL whose
`max_connections` is set small, logged in to as an ordinary role (not a superuser: a superuser may
take the reserved slots, an application never can). A load generator plays the front end: it
spreads a bounded mix of writes and reads over the instances, as many at once per instance as
`per_instance` says, records every answer, then the database is asked for every acknowledged
write. A sampler counts the role's sessions, to show the limit was reached.

Used by tests/test_many_instances.py (short, in the suite) and bench/scale.py (`make scale`).
"""

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import asyncpg
import httpx

from tests.function_server import FunctionServer, serve_functions
from tests.helpers import fetch, libpq_url, run_alembic
from tests.private_postgres import PrivatePostgres, private_postgres

ROLE = "app_runtime"  # an ordinary login role, owner of its database (as the schema owner would be)
SAMPLER_CONNECTIONS = 1  # the superuser's session counting the role's sessions takes one slot


@dataclass(frozen=True)
class Answer:
    instance: int
    operation: str
    status: int
    retry_after: str | None
    created: str | None  # the id of a task a 201 acknowledged
    seconds: float


@dataclass
class Phase:
    name: str
    instances: int
    answers: list[Answer] = field(default_factory=list)
    peak_sessions: int = 0  # the most sessions the role held at once
    opened_sessions: int = 0  # connections the instances opened during the phase

    @property
    def statuses(self) -> Counter[int]:
        return Counter(answer.status for answer in self.answers)

    def rate(self, status: int) -> float:
        return self.statuses[status] / max(1, len(self.answers))

    def per_instance(self) -> dict[int, Counter[int]]:
        counts: dict[int, Counter[int]] = {}
        for answer in self.answers:
            counts.setdefault(answer.instance, Counter())[answer.status] += 1
        return counts

    def summary(self) -> str:
        served = {index: counts.total() - counts[503] for index, counts in sorted(self.per_instance().items())}
        return (
            f"{self.name}: {self.instances} instances, {len(self.answers)} requests, statuses {dict(self.statuses)},"
            f" 503 rate {self.rate(503):.2%}, peak sessions {self.peak_sessions},"
            f" connections opened {self.opened_sessions}, served per instance {served}"
            + "".join(f"; no answer: {a.instance} {a.operation} {a.retry_after}" for a in self.answers if not a.status)
        )


@dataclass
class Cluster:
    postgres: PrivatePostgres
    url: str  # the role's URL: what every instance connects with
    slots: int  # sessions an ordinary role can have at once (max_connections - reserved - sampler)
    stack: ExitStack
    instance_env: dict[str, str]
    source: str = "main.py"  # what each instance serves (bench/asyncpg_pool.py for the pool's A/B)
    servers: list[FunctionServer] = field(default_factory=list)
    project_id: str = ""
    task_ids: list[str] = field(default_factory=list)

    def add_instances(self, count: int) -> None:
        self.servers += self.stack.enter_context(
            serve_functions(count, self.url, source=self.source, **self.instance_env)
        )
        if not self.project_id:  # through the API, as a client would: one project, a few tasks to read
            api = self.servers[0].base_url
            project = httpx.post(f"{api}/v1/projects", json={"name": "load"}, timeout=30).json()
            self.project_id = project["id"]
            for number in range(5):
                task = httpx.post(
                    f"{api}/v1/projects/{self.project_id}/tasks", json={"title": f"t{number}"}, timeout=30
                )
                self.task_ids.append(task.json()["id"])

    async def run(self, name: str, seconds: float, per_instance: int) -> Phase:
        """Load every instance for `seconds`, `per_instance` requests in flight at each."""
        phase = Phase(name, len(self.servers))
        before = await self._sessions_opened()
        sampler = asyncio.create_task(self._sample(phase))
        deadline = time.monotonic() + seconds
        # The server closes a keep-alive connection idle for 2 s (gunicorn's keepalive); a client
        # that sent a request on it at that moment would get no answer: reuse them for 1 s at most.
        limits = httpx.Limits(max_connections=per_instance, max_keepalive_connections=per_instance, keepalive_expiry=1)
        clients = [httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) for server in self.servers]
        try:
            workers = [
                self._worker(index, client, deadline, phase, worker)
                for index, client in enumerate(clients)
                for worker in range(per_instance)
            ]
            await asyncio.gather(*workers)
        finally:
            sampler.cancel()
            for client in clients:
                await client.aclose()
        phase.opened_sessions = await self._sessions_opened() - before
        return phase

    async def _worker(self, index: int, client: httpx.AsyncClient, deadline: float, phase: Phase, worker: int) -> None:
        operations = itertools.cycle(["write", "list", "read"])
        for _ in range(worker):  # workers start at different points of the mix
            next(operations)
        while time.monotonic() < deadline:
            operation = next(operations)
            started = time.monotonic()
            try:
                response = await self._request(client, operation, worker)
            except httpx.TransportError as error:  # no answer at all: recorded as status 0
                phase.answers.append(Answer(index, operation, 0, repr(error), None, time.monotonic() - started))
                continue
            created = response.json()["id"] if response.status_code == 201 else None
            retry_after = response.headers.get("retry-after")
            phase.answers.append(
                Answer(index, operation, response.status_code, retry_after, created, time.monotonic() - started)
            )

    async def _request(self, client: httpx.AsyncClient, operation: str, worker: int) -> httpx.Response:
        if operation == "write":
            path = f"/v1/projects/{self.project_id}/tasks"
            return await client.post(path, json={"title": f"load-{uuid.uuid4().hex[:12]}"})
        if operation == "list":
            return await client.get(f"/v1/projects/{self.project_id}/tasks", params={"limit": 20})
        return await client.get(f"/v1/tasks/{self.task_ids[worker % len(self.task_ids)]}")

    async def _sample(self, phase: Phase) -> None:
        connection = await asyncpg.connect(libpq_url(self.postgres.superuser_url))
        try:
            while True:
                sessions = await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'", ROLE
                )
                phase.peak_sessions = max(phase.peak_sessions, sessions)
                await asyncio.sleep(0.1)
        finally:
            await connection.close()

    async def _sessions_opened(self) -> int:
        rows = await fetch(self.postgres.superuser_url, "SELECT sum(sessions) FROM pg_stat_database")
        return int(rows[0][0])

    async def stored_task_ids(self) -> set[str]:
        rows = await fetch(self.url, "SELECT id::text FROM tasks WHERE project_id = $1", self.project_id)
        return {row["id"] for row in rows}

    def recovery_seconds(self, timeout_s: float) -> list[float | None]:
        """Per instance, once the load has stopped: seconds until it answers a read with 200."""
        started = time.monotonic()
        recovered: list[float | None] = [None] * len(self.servers)
        while time.monotonic() - started < timeout_s and None in recovered:
            for index, server in enumerate(self.servers):
                if recovered[index] is None:
                    response = httpx.get(f"{server.base_url}/v1/projects", params={"limit": 1}, timeout=30)
                    if response.status_code == 200:
                        recovered[index] = time.monotonic() - started
            time.sleep(0.2)
        return recovered


@contextmanager
def cluster(max_connections: int, source: str = "main.py", **instance_env: str) -> Iterator[Cluster]:
    """A private PostgreSQL with `max_connections`, the schema, one project with a few tasks."""
    with ExitStack() as stack:
        postgres = stack.enter_context(private_postgres("pytest-scale-pg-"))
        postgres.configure(max_connections=max_connections)
        asyncio.run(_create_role(postgres.superuser_url))
        url = postgres.database("scale", owner=ROLE)
        run_alembic(url, "upgrade", "head")
        reserved = asyncio.run(_reserved(postgres.superuser_url))
        slots = max_connections - reserved - SAMPLER_CONNECTIONS
        environment = {"LOG_LEVEL": "WARNING"} | instance_env
        yield Cluster(postgres, url, slots, stack, environment, source)


async def _create_role(superuser_url: str) -> None:
    connection = await asyncpg.connect(libpq_url(superuser_url))
    try:
        await connection.execute(f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    finally:
        await connection.close()


async def _reserved(superuser_url: str) -> int:
    rows = await fetch(
        superuser_url,
        "SELECT current_setting('superuser_reserved_connections')::int"
        " + coalesce(current_setting('reserved_connections', true)::int, 0)",
    )
    return int(rows[0][0])
