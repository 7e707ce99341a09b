"""`make migration NAME="add comments"`: autogenerate the next Alembic revision from the models.

Uses DATABASE_URL when set; otherwise the embedded PostgreSQL of `make run` (.data/postgres), which
it starts, upgrades to the current head, compares with the models, and stops again.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def main(message: str) -> int:
    env = dict(os.environ)
    if url := env.get("DATABASE_URL"):
        import database_check

        if (problem := database_check.problem(url, "set in your shell")) is not None:
            print(f"make migration: {problem}", file=sys.stderr)
            return 1
    else:
        import embedded_db

        server = embedded_db.start(ROOT / ".data" / "postgres", delete_on_exit=False)
        env["DATABASE_URL"] = embedded_db.ensure_database(server, "app")
    alembic = [str(Path(sys.executable).parent / "alembic")]
    subprocess.run([*alembic, "upgrade", "head"], cwd=ROOT, env=env, check=True)
    heads = subprocess.run([*alembic, "heads"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    number = int(heads.stdout.split()[0]) + 1 if heads.stdout.split()[0].isdigit() else None
    revision_id = ["--rev-id", f"{number:04d}"] if number else []
    subprocess.run([*alembic, "revision", "--autogenerate", *revision_id, "-m", message], cwd=ROOT, env=env, check=True)
    print("review the new file in migrations/versions/, then: make test")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].strip():
        print('usage: make migration NAME="what it changes"', file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
