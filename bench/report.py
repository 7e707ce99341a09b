"""`make bench`'s figures: per run, ratios and targets; over the runs, medians; the printed report.

A target compares two servers measured in the same run (a ratio, so a slower or busier machine
moves both); each run gives its own ratio, and the median of the runs' ratios is what is judged.
"""

import statistics
from collections.abc import Callable
from typing import Any

ENDPOINT_NAMES = {
    "get_task": "GET one task",
    "list_tasks": "list tasks",
    "create_task": "POST task, keyed",
    "create_task_unkeyed": "POST task, no key",
    "patch_task": "PATCH task, If-Match",
}
Run = dict[str, Any]


def _endpoint(run: Run, server: str, mode: str) -> dict[str, Any] | None:
    data = run["servers"].get(server)
    return data["endpoints"].get(mode) if data else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def rps_ratio(run: Run, mode: str, peer: str, server: str = "service") -> float | None:
    ours, theirs = _endpoint(run, server, mode), _endpoint(run, peer, mode)
    return _ratio(ours["rps"], theirs["rps"]) if ours and theirs else None


def p99_ratio(run: Run, mode: str, peer: str) -> float | None:
    ours, theirs = _endpoint(run, "service", mode), _endpoint(run, peer, mode)
    return _ratio(ours["p99_ms"], theirs["p99_ms"]) if ours and theirs else None


def cpu_ratio(run: Run, mode: str, peer: str) -> float | None:
    """Requests per CPU-second, ours over theirs: above 1 means cheaper requests."""
    ours, theirs = _endpoint(run, "service", mode), _endpoint(run, peer, mode)
    return _ratio(ours["req_per_cpu_s"], theirs["req_per_cpu_s"]) if ours and theirs else None


def cold_ratio(run: Run, peer: str) -> float | None:
    ours, theirs = run["servers"].get("service"), run["servers"].get(peer)
    if not ours or not theirs or "cold_start_ms" not in ours or "cold_start_ms" not in theirs:
        return None
    return _ratio(ours["cold_start_ms"]["median"], theirs["cold_start_ms"]["median"])


def auth_extra_cpu_pct(run: Run, mode: str) -> float | None:
    """How much more worker CPU a request costs with authentication on than in the headline row."""
    plain, authenticated = _endpoint(run, "service", mode), _endpoint(run, "service_auth", mode)
    if not plain or not authenticated or not plain["cpu_us_per_request"]:
        return None
    return round(100 * (authenticated["cpu_us_per_request"] / plain["cpu_us_per_request"] - 1), 1)


def _worker_rss_mib(run: Run) -> float | None:
    service = run["servers"].get("service")
    return round(service["rss_kib"]["worker"] / 1024, 1) if service else None


def _import_overhead_ms(run: Run) -> float | None:
    imports = run.get("imports")
    return imports["main_over_dependencies_ms"] if imports else None


# A keyed create's connection time when it took five round trips (BEGIN, claim, INSERT, store,
# COMMIT): the median of three quiet `make bench` runs of that code on 2026-12-07 (docs/benchmarks.md).
# The same code runs in every `make bench` as the `five_trips` server, the yardstick of the same run.
KEYED_CREATE_CONNECTION_MS_BEFORE = 8.69


def _connection_ms(run: Run, mode: str, server: str = "service") -> float | None:
    ours = _endpoint(run, server, mode)
    held = ours.get("connection_ms_per_request") if ours else None
    return float(held) if held is not None else None


def _connection_vs_five_trips(run: Run) -> float | None:
    return _ratio(_connection_ms(run, "create_task"), _connection_ms(run, "create_task", "five_trips"))


# (what, value in one run, comparison, limit, unit)
Target = tuple[str, Callable[[Run], float | None], str, float, str]
TARGETS: list[Target] = [
    ("GET one task req/s >= 1.5x the Flask peer's", lambda r: rps_ratio(r, "get_task", "flask"), ">=", 1.5, "x"),
    (
        "GET one task req/s >= 2.5x the full-stack peer's",
        lambda r: rps_ratio(r, "get_task", "fullstack"),
        ">=",
        2.5,
        "x",
    ),
    ("GET one task req/s >= 1.0x the lean peer's", lambda r: rps_ratio(r, "get_task", "lean"), ">=", 1.0, "x"),
    ("GET one task p99 <= 6x the limit's (asyncpg peer)", lambda r: p99_ratio(r, "get_task", "asyncpg"), "<=", 6, "x"),
    ("list tasks req/s >= 1.3x the Flask peer's", lambda r: rps_ratio(r, "list_tasks", "flask"), ">=", 1.3, "x"),
    ("list tasks req/s >= 0.8x the lean peer's", lambda r: rps_ratio(r, "list_tasks", "lean"), ">=", 0.8, "x"),
    (
        "POST, no key: req/s >= 1.5x the Flask peer's",
        lambda r: rps_ratio(r, "create_task_unkeyed", "flask"),
        ">=",
        1.5,
        "x",
    ),
    (
        "POST, no key: req/s >= 1.0x the lean peer's",
        lambda r: rps_ratio(r, "create_task_unkeyed", "lean"),
        ">=",
        1.0,
        "x",
    ),
    ("POST, keyed: req/s >= 1.3x the Flask peer's", lambda r: rps_ratio(r, "create_task", "flask"), ">=", 1.3, "x"),
    ("POST, keyed: req/s >= 1.0x the lean peer's", lambda r: rps_ratio(r, "create_task", "lean"), ">=", 1.0, "x"),
    ("PATCH, If-Match: req/s >= 1.3x the Flask peer's", lambda r: rps_ratio(r, "patch_task", "flask"), ">=", 1.3, "x"),
    ("cold start <= 1.0x the lean peer's", lambda r: cold_ratio(r, "lean"), "<=", 1.0, "x"),
    (
        "POST, keyed: connection ms/request <= 0.5x five round trips' (five_trips, same run)",
        _connection_vs_five_trips,
        "<=",
        0.5,
        "x",
    ),
    (
        f"POST, keyed: connection ms/request <= half of {KEYED_CREATE_CONNECTION_MS_BEFORE} (five trips, recorded)",
        lambda r: _connection_ms(r, "create_task"),
        "<=",
        KEYED_CREATE_CONNECTION_MS_BEFORE / 2,
        "ms",
    ),
    ("import main <= 60 ms over its libraries + a route", _import_overhead_ms, "<=", 60, "ms"),
    ("worker RSS after the load <= 120 MiB", _worker_rss_mib, "<=", 120, "MiB"),
    ("auth on: GET one task CPU/request <= +15 %", lambda r: auth_extra_cpu_pct(r, "get_task"), "<=", 15, "%"),
    ("auth on: list tasks CPU/request <= +15 %", lambda r: auth_extra_cpu_pct(r, "list_tasks"), "<=", 15, "%"),
    ("auth on: POST task CPU/request <= +15 %", lambda r: auth_extra_cpu_pct(r, "create_task"), "<=", 15, "%"),
]


def median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 3) if present else None


def judge(runs: list[Run]) -> list[dict[str, Any]]:
    """Every target: each run's value, their median, and whether the median meets the limit."""
    judged = []
    for name, value_of, comparison, limit, unit in TARGETS:
        values = [value_of(run) for run in runs]
        middle = median(values)
        passed = None if middle is None else (middle >= limit if comparison == ">=" else middle <= limit)
        judged.append(
            {"target": name, "per_run": values, "median": middle, "limit": limit, "unit": unit, "pass": passed}
        )
    return judged


def medians(runs: list[Run], server_keys: list[str], modes: list[str]) -> dict[str, Any]:
    """Per server: each endpoint's figures, cold start and memory, as the median over the runs."""
    summary: dict[str, Any] = {}
    for key in server_keys:
        present = [run["servers"][key] for run in runs if key in run["servers"]]
        endpoints = {}
        for mode in modes:
            rows = [server["endpoints"][mode] for server in present if mode in server["endpoints"]]
            if not rows:  # a server measured on some endpoints only
                continue
            endpoints[mode] = {
                metric: median([row.get(metric) for row in rows])
                for metric in (
                    "rps",
                    "p50_ms",
                    "p99_ms",
                    "cpu_us_per_request",
                    "req_per_cpu_s",
                    "worker_cpu_pct",
                    "db_sessions_opened",
                    "connection_ms_per_request",
                )
            }
            endpoints[mode]["non_2xx"] = sum(row["non_2xx"] for row in rows)
            endpoints[mode]["socket_errors"] = sum(sum(row["socket_errors"].values()) for row in rows)
            endpoints[mode]["disturbed_runs"] = sum(1 for row in rows if row.get("interference_pct"))
        colds = [server["cold_start_ms"]["median"] for server in present if "cold_start_ms" in server]
        summary[key] = {
            "endpoints": endpoints,
            "cold_start_ms": median(list(colds)),
            "rss_mib": {
                name: median([(server["rss_kib"][name] or 0) / 1024 or None for server in present])
                for name in ("worker", "worker_pss", "master")
            },
        }
    return summary


def ratio_table(runs: list[Run], peers: list[str], modes: list[str]) -> dict[str, dict[str, float | None]]:
    """Service over each peer, median of the runs' ratios: req/s, p99, req per CPU-second, cold start."""
    table: dict[str, dict[str, float | None]] = {}
    for peer in peers:
        row: dict[str, float | None] = {}
        for mode in modes:
            row[f"{mode}_rps"] = median([rps_ratio(run, mode, peer) for run in runs])
            row[f"{mode}_p99"] = median([p99_ratio(run, mode, peer) for run in runs])
            row[f"{mode}_req_per_cpu_s"] = median([cpu_ratio(run, mode, peer) for run in runs])
        row["cold_start"] = median([cold_ratio(run, peer) for run in runs])
        table[peer] = row
    return table


def _cell(value: float | None, width: int, unit: str = "x", digits: int = 2) -> str:
    return f"{'-' if value is None else f'{value:.{digits}f}{unit}':>{width}}"


def _target_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:+.1f} %"
    return f"{value:.1f} {unit}"


def render(results: dict[str, Any], endpoint_labels: dict[str, str]) -> list[str]:
    settings, summary = results["settings"], results["summary"]
    servers: dict[str, Any] = summary["servers"]
    runs = len(results["runs"])
    load_cpu = settings["load_cpu"]
    on_load_cpu = "wrk" if settings["database"] == "DATABASE_URL" else "wrk + PostgreSQL"
    lines = [
        f"{runs} run(s); per endpoint and server: {settings['warmup_s']} s warm-up, {settings['duration_s']} s "
        f"measured; wrk 1 thread, {settings['connections']} connections; server on CPU {settings['server_cpu']}, "
        f"{on_load_cpu} on CPU {load_cpu}",
        f"every figure below is the median of the {runs} run(s); CPU/req = worker CPU time over the measured "
        "run / requests;",
        "new conns = database connections the server opened during the measured run (pool churn);",
        "conn ms/req = the service's connections' checked-out time over the measured run / requests",
        "",
    ]
    header = (
        f"{'endpoint':29} {'server':12} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU/req':>9}"
        f" {'worker CPU':>10} {'new conns':>9} {'conn ms/req':>11} {'non-2xx':>7} {'disturbed':>9}"
    )
    lines += [header, "-" * len(header)]
    for mode, label in endpoint_labels.items():
        printed = 0
        for key in servers:
            if mode not in servers[key]["endpoints"]:
                continue
            index, printed = printed, printed + 1
            row = servers[key]["endpoints"][mode]
            cpu = "-" if row["cpu_us_per_request"] is None else f"{row['cpu_us_per_request']:.0f} us"
            connections = row["db_sessions_opened"]
            held = row.get("connection_ms_per_request")
            lines.append(
                f"{label if index == 0 else '':29} {key:12} {row['rps'] or 0:7.0f} {row['p50_ms'] or 0:7.1f}"
                f" {row['p99_ms'] or 0:7.1f} {cpu:>9} {row['worker_cpu_pct'] or 0:9.0f}%"
                f" {'-' if connections is None else f'{connections:.0f}':>9}"
                f" {'-' if held is None else f'{held:.3f}':>11} {row['non_2xx']:7d}"
                f" {row['disturbed_runs']:>5d}/{runs}"
            )
    lines.append("")
    header = f"{'':29} {'server':12} {'cold start':>11} {'worker RSS':>11} {'worker PSS':>11} {'master RSS':>11}"
    lines += [header, f"{'':29} {'-' * (len(header) - 30)}"]
    for key, data in servers.items():
        cold = "-" if data["cold_start_ms"] is None else f"{data['cold_start_ms']:.0f} ms"
        memory = {name: "-" if value is None else f"{value:.1f} MiB" for name, value in data["rss_mib"].items()}
        lines.append(
            f"{'':29} {key:12} {cold:>11} {memory['worker']:>11} {memory['worker_pss']:>11} {memory['master']:>11}"
        )
    lines.append(
        f"{'':29} (cold start: spawn to the first 200 of GET /v1/tasks/{{id}}, median of "
        f"{settings['cold_starts']} per run; memory after the load)"
    )
    if summary.get("imports"):
        imports = summary["imports"]
        lines.append(
            f"import main: its libraries and one FastAPI route {imports['dependencies_ms']:.0f} ms, then main "
            f"{imports['main_over_dependencies_ms']:.0f} ms more (medians, {settings['import_samples']} per run)"
        )
    lines.append("")
    ratios = summary["ratios"]
    peers = list(ratios)
    lines.append(f"{'this service / peer (median of the runs)':44}" + "".join(f" {'vs ' + peer:>12}" for peer in peers))
    for mode, label in endpoint_labels.items():
        for metric, name in (("rps", "req/s"), ("p99", "p99"), ("req_per_cpu_s", "req/CPU-s")):
            cells = "".join(" " + _cell(ratios[peer][f"{mode}_{metric}"], 12) for peer in peers)
            lines.append(f"{label + ' ' + name:44}{cells}")
    lines.append(f"{'cold start':44}" + "".join(" " + _cell(ratios[peer]["cold_start"], 12) for peer in peers))
    if "service_auth" in servers and "service" in servers:
        extra = summary["auth_extra_cpu_pct"]
        cells = ", ".join(
            f"{ENDPOINT_NAMES[mode]} {_target_value(extra[mode], '%')}" for mode in endpoint_labels if mode in extra
        )
        lines.append(f"authentication on (service_auth / service), CPU per request: {cells}")
    lines.append("")
    disturbed = sum(row["disturbed_runs"] for data in servers.values() for row in data["endpoints"].values())
    measured = sum(len(data["endpoints"]) for data in servers.values()) * runs
    lines.append(f"targets: the median of {runs} run(s) counts; each run's value in brackets")
    if disturbed:
        lines.append(
            f"(other processes shared the server's CPU in {disturbed} of {measured} measured runs: run again on a "
            "quiet machine before trusting a PASS or a FAIL; CPU per request is the steadier figure)"
        )
    for check in summary["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[check["pass"]]
        per_run = " ".join(_target_value(value, check["unit"]) for value in check["per_run"])
        lines.append(
            f"  {verdict}  {check['target']:50} {_target_value(check['median'], check['unit']):>10}  [{per_run}]"
        )
    return lines
