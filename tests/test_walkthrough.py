"""docs/adding-a-resource.md, executed, so the walk-through cannot drift from the code it teaches.

It is followed the way a new user follows it: on a copy of the checkout, first renamed by
scripts/rename.py to a name found nowhere in the repository, which then gets every block of the page
whose fence carries an instruction, in page order:

- ```python new=PATH      writes PATH, which must not exist yet;
- ```markdown append=PATH adds the block at the end of PATH, after a blank line;
- ```diff edit=PATH       hunks separated by `@@` lines; in each, the ` ` and `-` lines must occur in
                          PATH exactly once, as whole lines, and are replaced by the ` ` and `+` lines;
- ```sh run               runs its `make migration NAME=...` against a fresh database (no other
                          command is allowed).

Then the copy must hold the generated migration, pass `make lint` (ruff check, ruff format --check,
mypy strict, over the whole copy), and pass the page's tests, the migration round trip, the check of
docs/api.md against the served OpenAPI and the tests that go over every route (conventions, header
properties), run as a nested pytest against this session's PostgreSQL server. Meanwhile the copy's
scripts/run_local.py (`make run`) migrates the page's database and serves it: a project, a task and
a comment are created over HTTP and the comment read back, then Ctrl-C must stop the script and all
it started, and free the port.

A repository where someone has followed the page (committed or not, with or without history)
already holds its files: the copy first takes them out again (`unapply`), so the page is tested
from the state it starts from. Only when that cannot be done because the files were changed since
is the test skipped, saying so; on a repository that never followed the page, any mismatch fails.
"""

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx
import pytest

from tests.function_server import free_port
from tests.helpers import ROOT, unique, unused_name
from tests.local_run import run_local, stop_with_ctrl_c, wait_until_serving

sys.path.insert(0, str(ROOT / "scripts"))
import rename  # scripts/ is not a package

DOC = ROOT / "docs" / "adding-a-resource.md"
DOC_TESTS = "tests/test_comments.py"
# The page's tests, the migration round trip (the models' schema exactly, and the new migration must also
# downgrade), the contract, and the tests that go over every route (so they must take the new one unedited).
NESTED_TESTS = [
    DOC_TESTS,
    "tests/test_reports.py",  # the page's join and aggregate
    "tests/test_migrations.py::test_upgrade_check_downgrade_upgrade_round_trip",
    "tests/test_api_doc.py",
    "tests/test_conventions.py",
    "tests/test_header_properties.py",
]
MIN_PASSED = 79  # what these collect today: fewer means tests were lost
NESTED_EXAMPLES = "100"  # Hypothesis examples per property in the nested run: every route is drawn, in less time
BIN = Path(sys.executable).parent
TIMEOUT_S = 300
MIGRATION_CREATES = re.compile(r'op\.create_table\(\s*"comments",')


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, for messages
    action: str  # new, append, edit or run
    target: str  # a path in the repository; empty for run
    text: str

    def where(self) -> str:
        return f"{DOC.name}:{self.line} ({' '.join(filter(None, [self.action, self.target]))})"


def instruction_blocks(markdown: str) -> list[Block]:
    """The fenced blocks whose info string has an instruction after the language; the rest illustrate."""
    blocks: list[Block] = []
    opened: tuple[int, list[str]] | None = None
    body: list[str] = []
    for number, line in enumerate(markdown.splitlines(keepends=True), start=1):
        if opened is None:
            if line.startswith("```"):
                opened, body = (number, line[3:].split()[1:]), []
        elif line.rstrip() == "```":
            start, words = opened
            if words:
                assert len(words) == 1, f"{DOC.name}:{start}: one instruction per block, not {words}"
                action, _, target = words[0].partition("=")
                assert action in {"new", "append", "edit", "run"}, f"{DOC.name}:{start}: unknown {words[0]!r}"
                assert (action == "run") == (not target), f"{DOC.name}:{start}: {words[0]!r} needs a path, or none"
                path = PurePosixPath(target)
                assert not path.is_absolute() and ".." not in path.parts, f"{DOC.name}:{start}: {target} escapes"
                blocks.append(Block(start, action, target, "".join(body)))
            opened = None
        else:
            body.append(line)
    assert opened is None, f"{DOC.name}:{opened[0]}: the block is never closed"
    return blocks


def _hunks(block: Block) -> list[tuple[str, str]]:
    """(old, new) text pairs of an edit block."""
    hunks: list[tuple[str, str]] = []
    old: list[str] = []
    new: list[str] = []
    for line in [*block.text.splitlines(keepends=True), "@@\n"]:
        if line.startswith("@@"):
            if old or new:
                assert old != new, f"{block.where()}: a hunk that changes nothing"
                hunks.append(("".join(old), "".join(new)))
            old, new = [], []
            continue
        marker, content = (line[0], line[1:]) if line.strip() else (" ", "\n")
        assert marker in " -+", f"{block.where()}: a diff line starts with {marker!r}: {line!r}"
        if marker in " -":
            old.append(content)
        if marker in " +":
            new.append(content)
    assert hunks, f"{block.where()}: no hunk"
    return hunks


def _whole_lines(lines: str, text: str) -> list[re.Match[str]]:
    return list(re.finditer("^" + re.escape(lines), text, flags=re.MULTILINE))


def apply(block: Block, repository: Path) -> Path:
    path = repository / block.target
    if block.action == "new":
        assert not path.exists(), f"{block.where()}: refusing to overwrite an existing file"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text)
        return path
    assert path.is_file(), f"{block.where()}: no such file"
    text = path.read_text()
    if block.action == "append":
        path.write_text(text.rstrip("\n") + "\n\n" + block.text)
        return path
    for old, new in _hunks(block):
        found = _whole_lines(old, text)
        assert len(found) == 1, f"{block.where()}: these lines occur {len(found)} times, not once:\n{old}"
        text = text[: found[0].start()] + new + text[found[0].end() :]
    path.write_text(text)
    return path


def unapply(blocks: list[Block], repository: Path) -> bool:
    """Take out what following the page added (files, appended sections, edits, migration); whether there was any."""
    found = False
    for block in reversed(blocks):  # last applied, first taken out: blocks may build on earlier ones
        path = repository / block.target
        if block.action == "new" and path.exists():
            path.unlink()
            found = True
        elif block.action == "append":
            text = path.read_text().rstrip()
            if text.endswith(added := block.text.rstrip()):
                path.write_text(text.removesuffix(added).rstrip("\n") + "\n")
                found = True
        elif block.action == "edit":
            text = path.read_text()
            for old, new in _hunks(block):
                undone = text.replace(new, old)
                if text.count(new) == 1 and len(_whole_lines(old, undone)) == 1:  # applying it again would work
                    text, found = undone, True
            path.write_text(text)
    for migration in (repository / "migrations" / "versions").glob("*.py"):
        if MIGRATION_CREATES.search(migration.read_text()):
            migration.unlink()
            found = True
    return found


def migration_names(block: Block) -> list[str]:
    """The NAME of each `make migration NAME=...` line of a run block (the only command allowed)."""
    names = []
    for line in block.text.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            assert words[:2] == ["make", "migration"] and len(words) == 3, f"{block.where()}: not allowed: {line}"
            assert words[2].startswith("NAME="), f"{block.where()}: {line}"
            names.append(words[2].removeprefix("NAME="))
    return names


def copy_checkout(destination: Path) -> Path:
    """The files git would commit now (tracked, plus untracked ones not ignored); the mypy cache, to save time."""
    if (git := shutil.which("git")) is not None and (ROOT / ".git").exists():
        listing = [git, "-c", "safe.directory=*", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        names = subprocess.run(listing, cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
        for name in filter(None, names):
            source = ROOT / name
            if source.is_file():  # a tracked file may be deleted in the working tree
                (destination / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination / name)
    else:  # a source upload without .git (Cloud Build): the tree less what .gitignore names
        skip = shutil.ignore_patterns(
            ".git", ".venv", ".data", "__pycache__", "*.pyc", ".*_cache", ".hypothesis", ".coverage"
        )
        shutil.copytree(ROOT, destination, ignore=skip)
    with contextlib.suppress(OSError):  # only a head start: mypy ignores what it cannot use (or is being written)
        shutil.copytree(ROOT / ".mypy_cache", destination / ".mypy_cache", ignore_dangling_symlinks=True)
    return destination


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def test_unapply_takes_out_exactly_what_the_page_puts_in(tmp_path: Path) -> None:
    blocks = instruction_blocks(DOC.read_text())
    for target in {block.target for block in blocks if block.action in ("edit", "append")}:
        (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / target, tmp_path / target)
    followed = unapply(blocks, tmp_path)  # the page's own state, should this checkout have followed it
    before = {path: path.read_text() for path in tmp_path.rglob("*") if path.is_file()}
    try:
        for block in blocks:
            if block.action != "run":
                apply(block, tmp_path)
    except AssertionError as mismatch:
        if followed:
            pytest.skip(f"this repository followed the page and has changed its files since: {mismatch}")
        raise
    assert unapply(blocks, tmp_path)
    assert {path: path.read_text() for path in tmp_path.rglob("*") if path.is_file()} == before


def _created(client: httpx.Client, url: str, body: dict[str, str]) -> httpx.Response:
    response = client.post(url, json=body)
    assert response.status_code == 201, response.text
    return response


def comment_over_http(port: int, title: str) -> None:
    """A comment on a task of a project, created and read back from the copy's server, as a client would."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert client.get("/openapi.json").json()["info"]["title"] == title  # the copy serves, as renamed
        project = _created(client, "/v1/projects", {"name": unique("walkthrough")}).json()
        task = _created(client, f"/v1/projects/{project['id']}/tasks", {"title": "Review"}).json()
        created = _created(client, f"/v1/tasks/{task['id']}/comments", {"body": "Looks good"})
        read = client.get(created.headers["location"])
    assert (read.status_code, read.json()) == (200, created.json())
    assert (read.json()["task_id"], read.json()["body"]) == (task["id"], "Looks good")


def test_the_walkthrough_on_a_renamed_copy_migrates_lints_types_passes_its_tests_and_serves_a_comment(
    tmp_path: Path, create_database: Callable[[], str], server_url: str
) -> None:
    repository = copy_checkout(tmp_path / "repository")
    versions = repository / "migrations" / "versions"
    followed = unapply(instruction_blocks(DOC.read_text()), repository)
    name = unused_name()
    assert f" to {name} " in _run([sys.executable, "scripts/rename.py", name], repository)
    blocks = instruction_blocks((repository / DOC.relative_to(ROOT)).read_text())  # the page as renamed
    existing_migrations = set(versions.glob("*.py"))
    database_url = create_database()
    migration_env = os.environ | {"DATABASE_URL": database_url}  # the test's database, not .data/postgres
    migration_env.pop("INSTANCE_CONNECTION_NAME", None)
    changed: set[Path] = set()
    for block in blocks:
        if block.action == "run":
            for migration_name in migration_names(block):
                _run([sys.executable, "scripts/new_migration.py", migration_name], repository, migration_env)
            continue
        try:
            changed.add(apply(block, repository))
        except AssertionError as mismatch:
            if followed:  # the user's copies of the page's files have moved on since they followed it
                pytest.skip(f"this repository followed the page and has changed its files since: {mismatch}")
            raise
    assert repository / DOC_TESTS in changed, f"the page does not write {DOC_TESTS}"

    # Types are checked (the slowest step without a cache) while the rest runs: mypy reads app/ and main.py only.
    mypy = subprocess.Popen([BIN / "mypy"], cwd=repository, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        (migration,) = set(versions.glob("*.py")) - existing_migrations
        assert MIGRATION_CREATES.search(migration.read_text()), migration.read_text()
        port = free_port()
        # `make run` applies the new migration to its database, then serves; it starts while the tests run.
        with run_local(repository, PORT=str(port), DATABASE_URL=database_url) as server:
            _run([str(BIN / "ruff"), "check", "--no-cache", "."], repository)
            _run([str(BIN / "ruff"), "format", "--check", "--no-cache", "."], repository)

            pytest_env = os.environ | {"TEST_DATABASE_URL": server_url, "HYPOTHESIS_MAX_EXAMPLES": NESTED_EXAMPLES}
            for variable in ("DATABASE_URL", "INSTANCE_CONNECTION_NAME", "PYTEST_ADDOPTS"):
                pytest_env.pop(variable, None)
            tests = [sys.executable, "-m", "pytest", *NESTED_TESTS, "-q", "-p", "no:cacheprovider"]
            output = _run(tests, repository, pytest_env)
            passed = re.search(r"(\d+) passed", output)
            assert passed is not None and int(passed.group(1)) >= MIN_PASSED, output[-3000:]

            wait_until_serving(server)
            comment_over_http(port, rename.Names.of(name).title)
            stop_with_ctrl_c(server, port)

        typed, _ = mypy.communicate(timeout=TIMEOUT_S)
    finally:
        if mypy.poll() is None:
            mypy.kill()
            mypy.wait()
    assert mypy.returncode == 0, typed
