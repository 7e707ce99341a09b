"""`make rename NAME=orders-api`: give the service a new name everywhere it is written.

The current name is `[project].name` in pyproject.toml. Every tracked text file that contains it
(package metadata, the SERVICE_NAME default, cloudbuild.yaml's _FUNCTION and _RUNTIME_SA
defaults, scripts/bootstrap.sh, the docs and the tests) gets the new one.
"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VALID = re.compile(r"[a-z][a-z0-9-]{2,22}[a-z0-9]")  # a function name, and a service account id once "@" follows


def main(new: str) -> int:
    if not VALID.fullmatch(new):
        print(f"{new!r}: use 4-24 lower-case letters, digits and hyphens, starting with a letter", file=sys.stderr)
        return 2
    old = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    if new == old:
        print(f"the service is already called {old}")
        return 0
    git = ["git", "ls-files"]
    tracked = subprocess.run(git, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    pattern = re.compile(rf"(?<!\w){re.escape(old)}(?!\w)")
    changed = []
    for name in tracked.splitlines():
        path = ROOT / name
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        renamed = pattern.sub(new, text)
        if renamed != text:
            path.write_text(renamed)
            changed.append(name)
    print(f"renamed {old} to {new} in {len(changed)} files:", *changed, sep="\n  ")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: make rename NAME=new-service-name", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
