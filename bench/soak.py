"""`make soak`: 60 s at 64 connections, reads and writes mixed, against the function as in production.

Passes when every response is a 2xx (no socket error, no timeout) and the worker's memory is flat:
its resident size at the end is within SOAK_RSS_GROWTH_PCT (default 10 %) of what it was after
the first fifth of the run (the warm-up that fills caches and the pool). Loopback only, bounded in
time (SOAK_S, default 60), and every process it starts is stopped on the way out.
"""

import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import run as bench

SOAK_S = int(os.environ.get("SOAK_S", "60"))
CONNECTIONS = int(os.environ.get("SOAK_CONNECTIONS", "64"))
RSS_GROWTH_PCT = float(os.environ.get("SOAK_RSS_GROWTH_PCT", "10"))


def sample_rss(pid: int, samples: list[tuple[float, int]], stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.wait(1.0):
        samples.append((time.monotonic() - started, bench.memory_kib(pid)["VmRSS"]))


def main() -> int:
    bench.CONNECTIONS = CONNECTIONS
    pinning = bench.choose_pinning()
    scratch = tempfile.TemporaryDirectory(prefix="soak-")
    ids_dir = Path(scratch.name)
    dataset = None
    try:
        wrk = bench.ensure_wrk()
        url, _ = bench.prepare_database()
        bench.migrate(url)
        dataset = asyncio.run(bench._seed(url))
        (ids_dir / "tasks.txt").write_text("\n".join(map(str, dataset.task_ids)) + "\n")
        (ids_dir / "projects.txt").write_text("\n".join(map(str, dataset.project_ids)) + "\n")
        service = next(server for server in bench.SERVERS if server.key == "service")
        process, port = bench.start_server(service, bench.server_env(url), pinning, ids_dir / "service.log")
        bench.first_200(process, port, f"/v1/tasks/{dataset.task_ids[0]}", time.perf_counter())
        (worker,) = bench.children_of(process.pid)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(worker, samples, stop), daemon=True)
        sampler.start()
        print(f"soak: {SOAK_S} s at {CONNECTIONS} connections (70 % get, 20 % list, 10 % create) ...", flush=True)
        result = bench.run_wrk(wrk, pinning, port, "mixed", ids_dir, SOAK_S)
        stop.set()
        sampler.join()
        after_warmup = next(rss for at, rss in samples if at >= SOAK_S / 5)
        final, peak = samples[-1][1], max(rss for _, rss in samples)
        growth = 100 * (final - after_warmup) / after_warmup
        errors = sum(result["socket_errors"].values())
        print(f"soak: {result['requests']} requests, {result['rps']:.0f}/s, p99 {result['p99_ms']:.1f} ms")
        print(f"soak: non-2xx {result['non_2xx']}, socket errors {errors} {result['socket_errors']}")
        print(f"soak: worker RSS {after_warmup / 1024:.1f} MiB after warm-up, {final / 1024:.1f} at the end")
        print(f"soak: peak {peak / 1024:.1f} MiB, growth {growth:+.1f} %")
        for sample in result["non_2xx_samples"]:
            print(f"soak: non-2xx: {sample[:300]}")
        ok = result["non_2xx"] == 0 and errors == 0 and growth <= RSS_GROWTH_PCT
        print("soak: PASS" if ok else "soak: FAIL")
        return 0 if ok else 1
    except bench.BenchError as error:
        print(f"soak: {error}", file=sys.stderr)
        return 1
    finally:
        bench.stop_all()
        scratch.cleanup()


if __name__ == "__main__":
    sys.exit(main())
