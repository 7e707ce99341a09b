"""The connection budget: will the function's instances fit in the database's connection slots?

Cloud Build runs this before it migrates and deploys (cloudbuild.yaml, step `connection-budget`),
connected as the migrator, so that a deploy that could exhaust the instance's `max_connections`
fails before anything changes, with the numbers and the fix. It reads the limit from the server
(`SHOW max_connections`): `gcloud sql instances describe` lists only flags someone set, never the
tier's default. The sum it checks (docs/scaling.md, "The connection budget"):

    per instance   DB_POOL_SIZE + DB_MAX_OVERFLOW          (the most one instance opens)
    needed         (max instances                          (the new revision at its maximum)
                    + surge: ceil(20 % of max instances)   (Cloud Run may briefly exceed the maximum)
                    + draining: max instances              (the old revision, until Cloud Run stops it)
                    + candidate: max(1, min instances))    (a candidate that failed its smoke test keeps
                   x per instance                           its tag, and its minimum, until the next deploy)
                   + 1                                     (the migrator)
    available      max_connections - superuser_reserved_connections - reserved_connections

Usage (the build passes its substitutions; the database settings come from the environment, as
for migrations):

    python scripts/connection_budget.py --max-instances=10 --min-instances=0 --pool-size=2 --max-overflow=2
    python scripts/connection_budget.py ... --max-connections=100 --reserved=3   # offline: no database
"""

import argparse
import asyncio
import math
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Cloud Run "may, for a short period of time, create slightly more instances than the specified
# max instances value" (About instance autoscaling); Google gives no number: 20 % is our margin.
SURGE_SHARE = 0.2
MIGRATOR_CONNECTIONS = 1  # alembic, and this check, as the migrator: one connection at a time


@dataclass(frozen=True)
class Budget:
    max_instances: int
    per_instance: int  # DB_POOL_SIZE + DB_MAX_OVERFLOW
    max_connections: int
    reserved: int  # slots only superusers (and pg_use_reserved_connections) may take
    min_instances: int = 0

    @property
    def surge_instances(self) -> int:
        return surge_instances(self.max_instances)

    @property
    def needed(self) -> int:
        return needed(self.max_instances, self.per_instance, self.min_instances)

    @property
    def available(self) -> int:
        return self.max_connections - self.reserved

    @property
    def fits(self) -> bool:
        return self.needed <= self.available

    def explain(self) -> str:
        m, p, s = self.max_instances, self.per_instance, self.surge_instances
        return (
            f"{m} instances x {p} connections (DB_POOL_SIZE + DB_MAX_OVERFLOW) = {m * p}"
            f" + surge past max instances {s} x {p} = {s * p}"
            f" + the draining revision {m} x {p} = {m * p}"
            f" + an unpromoted candidate {candidate_instances(self.min_instances)} x {p}"
            f" = {candidate_instances(self.min_instances) * p}"
            f" + the migrator {MIGRATOR_CONNECTIONS}"
            f" = {self.needed} connections; the database allows {self.available}"
            f" (max_connections {self.max_connections} - {self.reserved} reserved)"
        )

    def fix(self) -> str:
        """What would fit: fewer instances, smaller pools, or more slots."""
        options = []
        fitting = [
            m
            for m in range(1, self.max_instances)
            if needed(m, self.per_instance, min(m, self.min_instances)) <= self.available
        ]
        if fitting:
            options.append(f"_MAX_INSTANCES={max(fitting)} (the most that fit with {self.per_instance} per instance)")
        fitting = [
            p
            for p in range(1, self.per_instance)
            if needed(self.max_instances, p, self.min_instances) <= self.available
        ]
        if fitting:
            options.append(f"_DB_POOL_SIZE + _DB_MAX_OVERFLOW = {max(fitting)} (the most per instance that fit)")
        slots = self.needed + self.reserved
        options.append(f"max_connections >= {slots} (a larger tier, or the max_connections flag)")
        options.append("a connection pooler in front of the database (docs/scaling.md)")
        return "; or ".join(options)


def surge_instances(max_instances: int) -> int:
    return math.ceil(max_instances * SURGE_SHARE)


def candidate_instances(min_instances: int) -> int:
    """The candidate answers only its smoke test: one instance, or its minimum if that is more."""
    return max(1, min_instances)


def needed(max_instances: int, per_instance: int, min_instances: int = 0) -> int:
    instances = max_instances + surge_instances(max_instances) + max_instances + candidate_instances(min_instances)
    return instances * per_instance + MIGRATOR_CONNECTIONS


async def fetch_row(query: str, *arguments: object) -> dict[str, object]:
    """One row, from the server the settings point at (as the migrations connect: the Cloud SQL
    connector as DB_IAM_USER, or DATABASE_URL). scripts/least_privilege.py connects through it too."""
    sys.path.insert(0, str(ROOT))
    from app.core.db.database import Database
    from app.core.settings import load_settings

    database = Database(load_settings())
    try:
        async with database.connection() as connection:
            row = await connection.fetchrow(query, *arguments)
    finally:
        await database.dispose()
    return dict(row)


async def read_limits() -> tuple[int, int]:
    """max_connections and the reserved slots, from the server the settings point at."""
    row = await fetch_row(
        "SELECT current_setting('max_connections')::int AS max_connections,"
        " current_setting('superuser_reserved_connections')::int"
        # reserved_connections exists from PostgreSQL 16 on; missing_ok gives NULL before.
        " + coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved"
    )
    return int(str(row["max_connections"])), int(str(row["reserved"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-instances", type=int, required=True)
    parser.add_argument("--min-instances", type=int, default=0, help="the candidate keeps these warm")
    parser.add_argument("--pool-size", type=int, required=True, help="DB_POOL_SIZE")
    parser.add_argument("--max-overflow", type=int, required=True, help="DB_MAX_OVERFLOW")
    parser.add_argument("--max-connections", type=int, help="the server's; read from it when omitted")
    parser.add_argument("--reserved", type=int, default=3, help="reserved slots, with --max-connections")
    arguments = parser.parse_args(argv)
    if arguments.max_instances < 1 or arguments.pool_size < 0 or arguments.max_overflow < 0:
        parser.error("--max-instances must be at least 1, the pool settings at least 0")
    if arguments.max_connections is None:
        max_connections, reserved = asyncio.run(read_limits())
    else:
        max_connections, reserved = arguments.max_connections, arguments.reserved
    per_instance = arguments.pool_size + arguments.max_overflow
    budget = Budget(arguments.max_instances, per_instance, max_connections, reserved, arguments.min_instances)
    if not budget.fits:
        print(f"connection budget exceeded: {budget.explain()}.", file=sys.stderr)
        print(f"Fix: {budget.fix()}.", file=sys.stderr)
        return 1
    print(f"connection budget: {budget.explain()}: {budget.available - budget.needed} to spare.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
