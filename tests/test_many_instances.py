"""Many instances, one small PostgreSQL: within the connection budget nothing fails; at twice the
budget nothing is a 500, nothing acknowledged is lost, every 503 says when to retry, no instance
is starved, and every instance serves again once the load drops.

Four real function processes (tests/many_instances.py) against a private PostgreSQL with 12
connection slots: 3 reserved, 1 for the test's own sampler, 8 for the role the instances log in
as, an ordinary one. Pools of 2 + 2 (the build's defaults): 2 instances fill the 8 slots, 4 want
twice as many. DB_POOL_IDLE_S is 2 s here so that the lending of spare connections shows within
seconds; `make scale` runs the same at the defaults, for longer, and reports the 503 rate.
"""

import asyncio

from tests.many_instances import Phase, cluster

INSTANCES = 2  # within the budget; twice as many past it
POOL_SIZE, MAX_OVERFLOW = 2, 2
IN_FLIGHT = 8  # requests at once per instance: more than its pool, so every instance wants all of it


def assert_only_2xx_and_503_with_retry_after(phase: Phase) -> None:
    unexpected = {
        status: count for status, count in phase.statuses.items() if not (200 <= status < 300 or status == 503)
    }
    assert not unexpected, f"{phase.summary()}; unexpected: {unexpected}"
    assert all(answer.retry_after == "5" for answer in phase.answers if answer.status == 503), phase.summary()


def test_twice_the_budget_slows_down_instead_of_failing() -> None:
    slots = INSTANCES * (POOL_SIZE + MAX_OVERFLOW)
    with cluster(
        slots + 3 + 1, DB_POOL_SIZE=str(POOL_SIZE), DB_MAX_OVERFLOW=str(MAX_OVERFLOW), DB_POOL_IDLE_S="2"
    ) as instances:
        assert instances.slots == slots
        instances.add_instances(2 * INSTANCES)  # started together; the second half idles, unconnected
        everyone = instances.servers
        instances.servers = everyone[:INSTANCES]
        within = asyncio.run(instances.run("within the budget", 4, IN_FLIGHT))
        instances.servers = everyone
        twice = asyncio.run(instances.run("twice the budget", 8, IN_FLIGHT))
        recovered = instances.recovery_seconds(timeout_s=20)
        stored = asyncio.run(instances.stored_task_ids())

    print(within.summary(), twice.summary(), f"recovered after {recovered}", sep="\n")
    assert set(within.statuses) <= {200, 201}, within.summary()
    assert within.peak_sessions == slots, "the load never filled the slots: the test proves nothing"
    assert_only_2xx_and_503_with_retry_after(twice)
    assert twice.peak_sessions == slots
    served = twice.per_instance()
    starved = [index for index in range(2 * INSTANCES) if not served.get(index, {}).keys() & {200, 201}]
    assert not starved, f"instances {starved} served nothing: {twice.summary()}"
    acknowledged = {answer.created for phase in (within, twice) for answer in phase.answers if answer.created}
    assert acknowledged, "no write was acknowledged"
    assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged writes are missing"
    assert None not in recovered, f"instances still refused once the load stopped: {recovered}"
