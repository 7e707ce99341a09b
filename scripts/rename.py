"""`make rename NAME=orders-api`: give the service your name in every place that carries it.

From the one name come all the others (`Names.of`):

    service   orders-api            package, SERVICE_NAME default, function, runtime service account
    migrator  orders-api-migrator   the service account that runs migrations and builds, one per service
    instance  orders-api-db         the Cloud SQL instance scripts/bootstrap.sh creates
    title     Orders API            the OpenAPI title and the docs' headings

The current names are read from the repository (pyproject.toml, cloudbuild.yaml's defaults, the
OpenAPI title), so renaming twice works. Every text file of the checkout that carries one of them
gets the new one, and the few places that describe the service in words (the `app` package's
docstring, the service accounts' display names) are rewritten. Standard library only: it needs no
.venv. A name that would make an invalid Google Cloud resource name is refused before anything is
written.
"""

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIGRATOR_SUFFIX = "-migrator"
INSTANCE_SUFFIX = "-db"
# Service account ids are 6-30 characters: the runtime's is the name, the migrator's the name + suffix.
SHORTEST, LONGEST = 6, 30 - len(MIGRATOR_SUFFIX)
NAME = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")
# Not the tail of a longer name ("x-y-db", "x.migrator"); after "=", ":", ":-", "/", "`" is fine.
WHOLE = r"(?<![\w.])(?<!\w-)"
# Folders a copy of the checkout may hold that are not the project's text (used only without git).
NOT_SOURCE = {".git", ".venv", ".uv", ".data", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


@dataclass(frozen=True)
class Names:
    service: str
    migrator: str
    instance: str
    title: str

    @classmethod
    def of(cls, service: str) -> "Names":
        words = [word.upper() if word == "api" else word.capitalize() for word in service.split("-")]
        return cls(service, service + MIGRATOR_SUFFIX, service + INSTANCE_SUFFIX, " ".join(words))


def problems(name: str) -> list[str]:
    """Why `name` cannot be used, in words; empty when it can."""
    if not NAME.fullmatch(name):
        return [
            "use lower-case letters, digits and hyphens, starting with a letter and not ending with a hyphen"
            " (Cloud Functions, service account and Cloud SQL names allow nothing else)"
        ]
    found = []
    if len(name) < SHORTEST:
        found.append(f"use at least {SHORTEST} characters: the runtime's service account id is the name itself")
    if len(name) > LONGEST:
        found.append(
            f"use at most {LONGEST} characters: the migrator's service account id, {name}{MIGRATOR_SUFFIX}, may have 30"
        )
    return found


def current_names(root: Path) -> Names:
    """The names the checkout carries now."""
    service = tomllib.loads((root / "pyproject.toml").read_text())["project"]["name"]
    cloudbuild = (root / "cloudbuild.yaml").read_text()
    instance = _one(r"^\s*_INSTANCE:\s*(\S+)\s*$", cloudbuild, "cloudbuild.yaml (_INSTANCE)")
    migrator = _one(r"^\s*_MIGRATOR_SA:\s*([^@\s]+)@", cloudbuild, "cloudbuild.yaml (_MIGRATOR_SA)")
    titles = [title for path in sorted((root / "app").rglob("*.py")) for title in _fastapi_titles(path.read_text())]
    if len(titles) != 1:
        raise LookupError(f"expected one FastAPI(title=...) under app/ (the OpenAPI title), found {titles}")
    return Names(service, migrator, instance, titles[0])


def _fastapi_titles(source: str) -> list[str]:
    return [
        keyword.value.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "FastAPI"
        for keyword in node.keywords
        if keyword.arg == "title" and isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str)
    ]


def _one(pattern: str, text: str, where: str) -> str:
    found = re.findall(pattern, text, flags=re.MULTILINE)
    if len(found) != 1:
        raise LookupError(f"expected one match of {pattern!r} in {where}, found {len(found)}")
    value: str = found[0]
    return value


def substitution(old: Names, new: Names) -> Callable[[str], str]:
    """Replaces each old name, as a whole word, by its new one, in one pass (a new name may contain an old one)."""
    replacements = {
        # Only as an account (before "@"): "the migrator" in prose stays.
        WHOLE + re.escape(old.migrator) + "(?=@)": new.migrator,
        WHOLE + re.escape(old.instance) + r"(?!\w)": new.instance,
        # Names made from the service's, such as SERVICE-migrator, follow it.
        WHOLE + re.escape(old.service) + r"(?!\w)": new.service,
        re.escape(old.title): new.title,
    }
    patterns = list(replacements)
    combined = re.compile("|".join(f"({pattern})" for pattern in patterns))

    def replace(match: re.Match[str]) -> str:
        return replacements[patterns[match.lastindex - 1]] if match.lastindex else match[0]

    return lambda text: combined.sub(replace, text)


# Places that describe the service in words rather than carry a name: (path, pattern, new text).
# Each pattern must match exactly once; the group is replaced.
def described(new: Names) -> list[tuple[str, str, str]]:
    return [
        ("app/__init__.py", r'\A"""([^:\n]+):', new.title),
        ("scripts/bootstrap.sh", r'ensure_service_account "\$RUNTIME_SA" "([^"]*)"', f"{new.title} (runtime)"),
        (
            "scripts/bootstrap.sh",
            r'ensure_service_account "\$MIGRATOR_SA" "([^"]*)"',
            f"{new.title} migrations and deploys (Cloud Build)",
        ),
    ]


def text_files(root: Path) -> Iterator[Path]:
    """The checkout's files: what git would commit (tracked or new, not ignored), else the whole tree."""
    listing = ["git", "-c", "safe.directory=*", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    try:
        names = subprocess.run(listing, cwd=root, capture_output=True, check=True).stdout.decode().split("\0")
        paths = [root / name for name in names if name]
    except (OSError, subprocess.CalledProcessError):  # no git, or not a repository (a downloaded archive)
        paths = [path for path in root.rglob("*") if not NOT_SOURCE & set(path.relative_to(root).parts)]
    for path in paths:
        if path.is_file() and not path.is_symlink():
            yield path


def rename(root: Path, name: str) -> list[str]:
    """Rewrite the checkout at `root` to `name`; the changed files, relative to `root`."""
    old, new = current_names(root), Names.of(name)
    rewrite = substitution(old, new)
    updated: dict[Path, str] = {}
    for path in text_files(root):
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if (renamed := rewrite(text)) != text:
            updated[path] = renamed
    for relative, pattern, replacement in described(new):
        path = root / relative
        text = updated.get(path, path.read_text())
        found = list(re.finditer(pattern, text))
        if len(found) != 1:
            raise LookupError(f"{relative}: expected one match of {pattern!r}, found {len(found)}")
        start, end = found[0].span(1)
        updated[path] = text[:start] + replacement + text[end:]
    for path, text in updated.items():  # nothing is written until every place was found
        if path.read_text() != text:
            path.write_text(text)
    return sorted(str(path.relative_to(root)) for path, text in updated.items())


def main(arguments: list[str]) -> int:
    if len(arguments) != 1 or not arguments[0]:
        print("usage: make rename NAME=your-service (6 to 21 lower-case letters, digits and hyphens)", file=sys.stderr)
        return 2
    name = arguments[0]
    if refused := problems(name):
        print(f"{name!r} cannot be the service's name:", *refused, sep="\n  ", file=sys.stderr)
        return 2
    try:
        old = current_names(ROOT)
        if old.service == name:
            print(f"the service is already called {name}")
            return 0
        changed = rename(ROOT, name)
    except LookupError as error:
        print(f"rename: {error}; nothing was changed", file=sys.stderr)
        return 1
    new = Names.of(name)
    print(f"renamed {old.service} to {name} in {len(changed)} files:", *changed, sep="\n  ")
    print(
        f"\nservice and runtime service account: {new.service}\nmigrator service account: {new.migrator}"
        f"\nCloud SQL instance: {new.instance}\nOpenAPI title: {new.title}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
