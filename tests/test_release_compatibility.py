"""A rollback is safe because every migration keeps the release before it working (README, "Expand,
then contract"): the build migrates while that release still serves, and a rollback sends traffic
back to it on the new schema, since migrations are never undone.

So the release before the newest migration runs its own HTTP tests, with its own code, on a
database built by today's migrations. "The release before" is the newest commit on the first-parent
history of HEAD (the branch as it was deployed) that does not contain the head revision's file:
the first parent of the commit that brought the file onto the branch (a merge, if it came with one),
or HEAD itself while the file is not committed yet. Its code last ran on the head revision's
predecessor, it serves while `migrate` applies the head, and a rollback returns to it.

How: `git archive` of that commit into a temporary folder; its migrations/versions/ replaced by
today's, so that its own conftest builds its test database with today's revisions (its env.py, which
only connects, stays); its own dependencies installed into its own venv by uv (its uv.lock, or its
requirements-dev.txt in older layouts), as a rollback redeploys its requirements.txt; then its tests
named after its resources (tests/test_<resource>.py for each app/<resource>/routes.py, or
app/routes/<resource>.py in older layouts) run in that venv. Skipped,
saying why, without git history (a shallow clone, an upload without .git), or when the newest
migration is the first. A second test adds a contracting revision (a renamed column) and checks that
the same run then fails, so the check can fail.
"""

import io
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from tests.helpers import ROOT, uv

NOT_RESOURCES = {"__init__", "common", "health", "core"}


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=ROOT, capture_output=True, text=True)


def release_before_newest_migration() -> tuple[str, str]:
    """(commit, why that one), or a skip that says what is missing."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the release before the newest migration is read from git history")
    if git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout (an upload without .git): no history to find the release before in")
    if git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("a shallow clone lacks the history of the newest migration: run git fetch --unshallow")
    scripts = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    head = scripts.get_revision(scripts.get_current_head())
    assert head is not None and head.path is not None
    if head.down_revision is None:
        pytest.skip(f"the newest migration ({head.revision}) is the first: no earlier release had a schema")
    path = Path(head.path).resolve().relative_to(ROOT).as_posix()
    if git("cat-file", "-e", f"HEAD:{path}").returncode != 0:
        return git("rev-parse", "HEAD").stdout.strip(), f"HEAD, which lacks {path} (not committed yet)"
    added = git("log", "--first-parent", "--diff-filter=A", "--format=%H", "-1", "HEAD", "--", path).stdout.strip()
    assert added, f"git log finds no commit adding {path}"
    parent = git("rev-parse", "--verify", "--quiet", f"{added}^1")
    if parent.returncode != 0:
        pytest.skip(f"{path} came with the repository's first commit: there is no release before it")
    return parent.stdout.strip(), f"the first parent of {added[:12]}, which added {path}"


def checkout(commit: str, folder: Path) -> Path:
    """The commit's files, with today's migration revisions in place of its own."""
    archive = subprocess.run(
        ["git", "-c", "safe.directory=*", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    versions = folder / "migrations" / "versions"
    if not versions.is_dir():
        pytest.fail(f"{commit[:12]} has no migrations/versions/: it cannot be migrated to today's schema")
    for old in versions.glob("*.py"):
        old.unlink()
    for today in (ROOT / "migrations" / "versions").glob("*.py"):
        shutil.copy(today, versions / today.name)
    return folder


def resource_tests(tree: Path) -> list[str]:
    """tests/test_<resource>.py of the tree's resources, in either layout the project has had."""
    resources = {path.parent.name for path in (tree / "app").glob("*/routes.py")}
    resources |= {path.stem for path in (tree / "app" / "routes").glob("*.py")}
    found = sorted(f"tests/test_{name}.py" for name in resources - NOT_RESOURCES)
    return [name for name in found if (tree / name).is_file()]


def install(tree: Path) -> None:
    """The release's own dependencies in tree/.venv, from uv's cache when today's install shares them."""
    venv = tree / ".venv"
    if (tree / "uv.lock").is_file():
        command = [uv(), "sync", "--locked", "--quiet", "--project", str(tree), "--python", sys.executable]
    elif (tree / "requirements-dev.txt").is_file():
        subprocess.run([uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        command = [uv(), "pip", "install", "--quiet", "--python", str(venv), "-r", str(tree / "requirements-dev.txt")]
    else:
        pytest.fail(f"{tree.name} has neither uv.lock nor requirements-dev.txt: its test dependencies are unknown")
    environment = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    installed = subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, f"installing the release's dependencies failed:\n{installed.stderr[-3000:]}"


def run_old_suite(tree: Path, tests: list[str], server_url: str) -> subprocess.CompletedProcess[str]:
    """Its own conftest builds its database on the suite's server (TEST_DATABASE_URL) and drops it."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("COV_CORE_", "COVERAGE_", "PYTEST_")) and key not in {"DATABASE_URL", "PYTHONPATH"}
    }
    environment.pop("INSTANCE_CONNECTION_NAME", None)
    environment |= {"TEST_DATABASE_URL": server_url, "PYTHONPATH": str(tree)}
    python = str(tree / ".venv" / "bin" / "python")
    command = [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    return subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def release_before(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    commit, why = release_before_newest_migration()
    tree = checkout(commit, tmp_path_factory.mktemp("release-before"))
    install(tree)
    return commit, why, tree


def test_the_release_before_the_newest_migration_passes_its_http_tests_on_todays_schema(
    release_before: tuple[str, str, Path], server_url: str
) -> None:
    commit, why, tree = release_before
    tests = resource_tests(tree)
    assert tests, f"{commit[:12]} ({why}) has no tests/test_<resource>.py to run"
    result = run_old_suite(tree, tests, server_url)
    assert result.returncode == 0, (
        f"the release before the newest migration, {commit[:12]} ({why}), fails its own tests {tests} on "
        f"today's schema: a migration broke it (README, 'Expand, then contract'), so rolling back to it "
        f"would fail too.\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
    )


def test_a_contracting_migration_fails_the_check(release_before: tuple[str, str, Path], server_url: str) -> None:
    """A rename in one release is what expand-then-contract forbids: the old code then fails."""
    _, _, tree = release_before
    scripts = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    breaking = textwrap.dedent(
        f'''
        """rename projects.name in one step"""

        from alembic import op

        revision = "contract0001"
        down_revision = "{scripts.get_current_head()}"
        branch_labels = None
        depends_on = None


        def upgrade() -> None:
            op.alter_column("projects", "name", new_column_name="title")


        def downgrade() -> None:
            op.alter_column("projects", "title", new_column_name="name")
        '''
    )
    revision = tree / "migrations" / "versions" / "99990101_9999_rename.py"
    revision.write_text(breaking)
    try:
        tests = [name for name in resource_tests(tree) if name.endswith("test_projects.py")] or resource_tests(tree)
        result = run_old_suite(tree, tests, server_url)
    finally:
        revision.unlink()
    assert result.returncode != 0, result.stdout[-2000:]
    assert "1 failed" in result.stdout, result.stdout[-2000:]
    assert 'column "name" of relation "projects" does not exist' in result.stdout, result.stdout[-2000:]
