"""Where the service's worker spends its CPU, for `make bench`: py-spy stacks and `-X importtime`.

`record` attaches py-spy (a sampling profiler that reads the process from outside: the service
runs unchanged) to the worker; `summarize` turns the collapsed stacks into shares of the samples:
by function (cumulative: the share of samples with the function anywhere on the stack) and by
library (self: the share whose innermost Python frame is in it). `import_breakdown` lists what
`import main` loads beyond its libraries, with `python -X importtime`.
"""

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

# py-spy needs ptrace: root, CAP_SYS_PTRACE, or kernel.yama.ptrace_scope=0 on a default Ubuntu.
PTRACE_HINT = (
    "py-spy attaches with ptrace: run as root, or allow it for your user "
    "(sudo sysctl kernel.yama.ptrace_scope=0), or give py-spy CAP_SYS_PTRACE"
)
TRUNK_SHARE = 0.97  # functions on (nearly) every request's stack, the server loop's, say nothing

# Library of a frame, from its file's path; the first match wins.
_LIBRARIES = (
    ("/sqlalchemy/", "SQLAlchemy"),
    ("/asyncpg/", "asyncpg"),
    ("/fastapi/", "FastAPI"),
    ("/starlette/", "Starlette"),
    ("/pydantic", "pydantic"),
    ("/uvicorn", "uvicorn + httptools"),
    ("/httptools/", "uvicorn + httptools"),
    ("/functions_framework/", "functions-framework"),
    ("/jwt/", "PyJWT + cryptography"),
    ("/cryptography/", "PyJWT + cryptography"),
    ("/greenlet/", "greenlet"),
    ("/orjson", "orjson"),
    ("/logging/", "logging (stdlib)"),
    ("/json/", "json (stdlib)"),
    ("/asyncio/", "asyncio + uvloop"),
    ("/uvloop/", "asyncio + uvloop"),
    ("/gunicorn/", "gunicorn"),
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def record(py_spy: str, pid: int, seconds: int, rate: int, output: Path, prefix: list[str]) -> dict[str, Any]:
    """Sample `pid` for `seconds` into `output` (collapsed stacks); {"error": ...} if py-spy could not."""
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        *prefix,
        py_spy,
        "record",
        f"--pid={pid}",
        f"--duration={seconds}",
        f"--rate={rate}",
        "--format=raw",  # collapsed stacks: `frame;frame;... count`, also flamegraph.pl's input
        "--nolineno",  # a function's samples together, whatever line they were on
        "--full-filenames",  # the library is told by the path
        "--threads",  # each stack names its thread: requests run on the main thread, the event loop's
        f"--output={output}",
    ]
    last = ""
    for _ in range(3):  # attaching right after another tool detached sometimes fails once
        result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
        if result.returncode == 0 and output.exists():
            return {}
        last = (result.stderr or result.stdout).strip().splitlines()[:1]
        last = last[0] if last else f"exit status {result.returncode}"
    hint = f"; {PTRACE_HINT}" if "ermission" in last or "ptrace" in last.lower() else ""
    return {"error": f"py-spy could not sample the worker: {last}{hint}"}


def _short(path: str, root: Path) -> str:
    if path.startswith(str(root) + "/") and "/site-packages/" not in path:
        return path[len(str(root)) + 1 :]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest if marker == "/site-packages/" else "stdlib/" + rest.split("/", 1)[-1]
    return path


def _is_own(short_path: str) -> bool:
    return short_path == "main.py" or short_path.startswith("app/")


def _library(path: str, root: Path) -> str:
    for fragment, name in _LIBRARIES:
        if fragment in path:
            return name
    if _is_own(_short(path, root)):
        return "this service's code (app/, main.py)"
    return "other (stdlib, C calls)"


def summarize(stacks: str, root: Path, top: int = 25) -> dict[str, Any]:
    """Shares of the samples: top functions by cumulative share, libraries by self and cumulative."""
    cumulative: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    library_self: Counter[str] = Counter()
    library_cumulative: Counter[str] = Counter()
    total = other_threads = 0
    for line in stacks.splitlines():
        trace, _, count_text = line.rpartition(" ")
        if not trace or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, _, rest = trace.partition(";")
        if thread.startswith("thread ("):
            # Only the event loop's thread serves requests. py-spy can count a thread blocked in
            # C (an executor's idle worker) as busy, so the others would only blur the shares.
            if not thread.endswith(": MainThread"):
                other_threads += count
                continue
            trace = rest
        total += count
        frames = []
        for frame in trace.split(";"):
            match = _FRAME.match(frame)
            function, path = (match["function"], match["file"]) if match else (frame, "")
            frames.append((f"{function} ({_short(path, root)})", _library(path, root)))
        for name in {name for name, _ in frames}:
            cumulative[name] += count
        for library in {library for _, library in frames}:
            library_cumulative[library] += count
        self_time[frames[-1][0]] += count
        library_self[frames[-1][1]] += count
    if not total:
        return {"samples": 0, "error": "py-spy recorded no samples of the main thread (was the worker idle?)"}

    def share(count: int) -> float:
        return round(100 * count / total, 1)

    # Code run inside SQLAlchemy's greenlets is sampled as stacks of their own (rooted at the
    # greenlet), so even the server loop is on a little less than every sample.
    widest = cumulative.most_common(1)[0][1]
    trunk = [name for name, count in cumulative.most_common() if count >= TRUNK_SHARE * widest]
    # A chain of wrappers that only pass the request on (middleware, routers) shows as many
    # functions with the same share: the first of each such run stands for the rest.
    top_cumulative, previous = [], 101.0
    for name, count in cumulative.most_common():
        if name in trunk:
            continue
        if previous - share(count) < 1.0 and share(self_time[name]) < 0.5:
            continue
        top_cumulative.append({"function": name, "pct": share(count), "self_pct": share(self_time[name])})
        previous = share(count)
    own_code = [
        {"function": name, "pct": share(count), "self_pct": share(self_time[name])}
        for name, count in cumulative.most_common()
        if _is_own(name.rpartition(" (")[2].rstrip(")"))
    ]
    return {
        "samples": total,
        "other_threads_samples": other_threads,
        "trunk": trunk,
        "top_cumulative": top_cumulative[:top],
        "own_code": own_code[:15],
        "top_self": [{"function": name, "pct": share(count)} for name, count in self_time.most_common(15)],
        "libraries": [
            {"library": library, "self_pct": share(count), "cumulative_pct": share(library_cumulative[library])}
            for library, count in library_self.most_common()
        ],
    }


def import_breakdown(
    python: str, dependencies: tuple[str, ...], env: dict[str, str], root: Path, prefix: list[str]
) -> dict[str, Any]:
    """What `import main` loads once its libraries are in: the modules with the most own time."""
    code = f"import {', '.join(dependencies)}\nimport sys\nsys.stderr.write('BENCH-MAIN\\n')\nimport main\n"
    command = [*prefix, python, "-X", "importtime", "-c", code]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0 or "BENCH-MAIN" not in result.stderr:
        return {"error": f"python -X importtime failed: {result.stderr[-500:]}"}
    modules = []
    for line in result.stderr.split("BENCH-MAIN", 1)[1].splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[0].strip().isdigit():
            modules.append((parts[2].strip(), int(parts[0]) / 1000, int(parts[1]) / 1000))
    by_package: Counter[str] = Counter()
    for name, own_ms, _ in modules:
        by_package[name.split(".")[0]] += own_ms
    return {
        "total_ms": round(sum(own for _, own, _ in modules), 1),
        "by_package_ms": {package: round(ms, 1) for package, ms in by_package.most_common(10)},
        "top_modules": [
            {"module": name, "self_ms": round(own, 1), "cumulative_ms": round(cumulative, 1)}
            for name, own, cumulative in sorted(modules, key=lambda module: -module[1])[:12]
        ],
        "note": "one run of python -X importtime, which itself slows imports a little",
    }


def render(profiles: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The profile part of the printed report."""
    if "error" in profiles:
        return [f"profile: {profiles['error']}"]
    lines = []
    for mode, label in labels.items():
        profile = profiles.get(mode)
        if profile is None:
            continue
        if "error" in profile:
            lines += [f"profile of {label}: {profile['error']}", ""]
            continue
        lines.append(
            f"profile of {label}: {profile['samples']} samples of the worker's main thread at {profiles['rate_hz']} Hz"
            f" over {profiles['seconds']} s ({profile['rps_while_sampled']:.0f} req/s while sampled)"
        )
        lines.append(f"  {'library':38} {'self':>6} {'cumul.':>7}")
        for row in profile["libraries"]:
            lines.append(f"  {row['library']:38} {row['self_pct']:5.1f}% {row['cumulative_pct']:6.1f}%")
        lines.append("  top functions by cumulative share (self share in brackets; left out: the server loop's")
        lines.append("  frames, under every request, and wrappers with the share of the line above):")
        for row in profile["top_cumulative"]:
            lines.append(f"  {row['pct']:5.1f}% ({row['self_pct']:4.1f}%)  {row['function'][:110]}")
        lines.append("  this service's own functions by cumulative share (self in brackets):")
        for row in profile["own_code"][:10]:
            lines.append(f"  {row['pct']:5.1f}% ({row['self_pct']:4.1f}%)  {row['function'][:110]}")
        lines.append("  top functions by self share:")
        for row in profile["top_self"][:10]:
            lines.append(f"  {row['pct']:5.1f}%  {row['function'][:110]}")
        lines.append(f"  (all stacks: {profile['stacks_file']}; flamegraph.pl or speedscope.app reads them)")
        lines.append("")
    imports = profiles.get("imports")
    if imports and "error" not in imports:
        lines.append(f"import main beyond its libraries (python -X importtime, one run): {imports['total_ms']:.0f} ms")
        packages = ", ".join(f"{name} {ms:.0f}" for name, ms in imports["by_package_ms"].items())
        lines.append(f"  by package (ms of own time): {packages}")
        for row in imports["top_modules"][:8]:
            lines.append(
                f"  {row['self_ms']:6.1f} ms own, {row['cumulative_ms']:6.1f} ms with imports  {row['module']}"
            )
    elif imports:
        lines.append(f"import breakdown: {imports['error']}")
    return lines
