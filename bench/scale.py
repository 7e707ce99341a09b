"""`make scale`: the 503 rate of many instances against too few connection slots (docs/scaling.md).

The harness of tests/test_many_instances.py, at the service's defaults and for longer: a private
PostgreSQL whose ordinary role has exactly the slots INSTANCES instances of pools
DB_POOL_SIZE + DB_MAX_OVERFLOW need (the budget), then:

1. within the budget: INSTANCES instances, IN_FLIGHT requests at once each (a third writes, a
   third lists, a third reads one task), WITHIN_S seconds;
2. twice the budget: twice as many instances, the same load per instance, TWICE_S seconds;
3. the load stops: seconds until each instance answers a read with 200 again.

Then every acknowledged write is looked up. Prints one line per phase and the verdict against
the aim: 0 errors within the budget; at twice the budget under 1 % 503, no 500, 0 lost writes,
no instance starved (every one served); every instance serving again. Writes
bench/results/scale.json. Everything listens on 127.0.0.1 and stops on the way out.

    make scale
    SCALE_INSTANCES=3 SCALE_TWICE_S=20 DB_POOL_IDLE_S=30 make scale   # other shapes or settings
    BENCH_POOL=asyncpg make scale   # the instances on asyncpg's own pool (bench/asyncpg_pool.py)
"""

import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import service_source  # noqa: E402
from tests.many_instances import cluster  # noqa: E402

INSTANCES = int(os.environ.get("SCALE_INSTANCES", "5"))
IN_FLIGHT = int(os.environ.get("SCALE_IN_FLIGHT", "8"))
WITHIN_S = float(os.environ.get("SCALE_WITHIN_S", "20"))
TWICE_S = float(os.environ.get("SCALE_TWICE_S", "40"))
# The instances' settings: the build's pool (cloudbuild.yaml), anything else from the environment.
POOL_SETTINGS = {
    name: os.environ.get(name, default) for name, default in (("DB_POOL_SIZE", "2"), ("DB_MAX_OVERFLOW", "2"))
}
if "DB_POOL_IDLE_S" in os.environ:
    POOL_SETTINGS["DB_POOL_IDLE_S"] = os.environ["DB_POOL_IDLE_S"]
RESERVED, SAMPLER = 3, 1
SOURCE = service_source()  # BENCH_POOL=asyncpg: the instances on asyncpg's own pool


def main() -> int:
    per_instance = int(POOL_SETTINGS["DB_POOL_SIZE"]) + int(POOL_SETTINGS["DB_MAX_OVERFLOW"])
    started = time.monotonic()
    with cluster(INSTANCES * per_instance + RESERVED + SAMPLER, SOURCE, **POOL_SETTINGS) as instances:
        print(f"scale: {instances.slots} slots for the role, instances of {SOURCE} with {POOL_SETTINGS}", flush=True)
        instances.add_instances(2 * INSTANCES)
        everyone = instances.servers
        instances.servers = everyone[:INSTANCES]
        within = asyncio.run(instances.run("within the budget", WITHIN_S, IN_FLIGHT))
        print(within.summary(), flush=True)
        instances.servers = everyone
        twice = asyncio.run(instances.run("twice the budget", TWICE_S, IN_FLIGHT))
        print(twice.summary(), flush=True)
        recovered = instances.recovery_seconds(timeout_s=90)
        stored = asyncio.run(instances.stored_task_ids())
    acknowledged = {answer.created for phase in (within, twice) for answer in phase.answers if answer.created}
    lost = len(acknowledged - stored)
    served = [
        sum(n for status, n in twice.per_instance().get(i, {}).items() if 200 <= status < 300)
        for i in range(2 * INSTANCES)
    ]
    errors = {status: n for status, n in twice.statuses.items() if not (200 <= status < 300 or status == 503)}
    checks = {
        "within the budget: no error": set(within.statuses) <= {200, 201},
        "twice the budget: under 1 % 503": twice.rate(503) < 0.01,
        "twice the budget: no 500, no unanswered request": not errors,
        "no acknowledged write lost": lost == 0,
        "no instance starved": min(served) > 0,
        "every instance serving again": None not in recovered,
    }
    print(f"recovered (s after the load stopped): {[None if r is None else round(r, 2) for r in recovered]}")
    print(f"acknowledged writes {len(acknowledged)}, lost {lost}; run took {time.monotonic() - started:.0f} s")
    for check, passed in checks.items():
        print(f"  {'PASS' if passed else 'MISS'}  {check}")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": POOL_SETTINGS
        | {"source": SOURCE, "instances": INSTANCES, "in_flight": IN_FLIGHT, "slots": INSTANCES * per_instance},
        "phases": [
            {
                "name": phase.name,
                "instances": phase.instances,
                "requests": len(phase.answers),
                "statuses": dict(phase.statuses),
                "rate_503": phase.rate(503),
                "peak_sessions": phase.peak_sessions,
                "connections_opened": phase.opened_sessions,
            }
            for phase in (within, twice)
        ],
        "served_per_instance_at_twice": served,
        "recovered_s": recovered,
        "acknowledged": len(acknowledged),
        "lost": lost,
        "checks": checks,
    }
    (results / "scale.json").write_text(json.dumps(report, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
