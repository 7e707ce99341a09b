"""`make replay`: every gcloud call the deploy tests make, replayed through the released Google Cloud CLI.

Runs the tests that drive the deploy scripts and the builds through the stand-in gcloud with
FAKE_GCLOUD_RECORD set, so that it writes each call (and a copy of each file a call names) to
.replay/, then hands them to gcloud_replay.py (GCLOUD_REPLAY), which parses each distinct call
shape with the CLI unpacked in GCLOUD_SDK, offline, and checks both build configs. Fails when the
CLI refuses a call or a config, or when its release is not the one cloudbuild.yaml pins
(_GCLOUD_VERSION). Not part of `make test`: it needs the CLI, which is large.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / ".replay"
TESTS = ["tests/test_cloudbuild.py", "tests/test_deploy_scripts.py", "tests/test_rollback.py", "tests/test_alerts.py"]


def main() -> int:
    sdk = Path(os.environ.get("GCLOUD_SDK", ".gcloud-sdk"))  # the Makefile passes its default
    tool = Path(os.environ.get("GCLOUD_REPLAY", ROOT.parent / "shared" / "tools" / "gcloud_replay.py"))
    if not (sdk / "VERSION").is_file() or not tool.is_file():
        sys.exit(
            f"make replay needs the Google Cloud CLI unpacked in GCLOUD_SDK ({sdk}) and gcloud_replay.py in"
            f" GCLOUD_REPLAY ({tool}): docs/operations.md, 'Bumping the pinned images'"
        )
    shutil.rmtree(RECORDED, ignore_errors=True)
    RECORDED.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "WORKERS"}
    recorded = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        cwd=ROOT,
        env=environment | {"FAKE_GCLOUD_RECORD": str(RECORDED)},
    )
    if recorded.returncode != 0:
        return recorded.returncode
    calls = RECORDED / "calls.jsonl"
    print(f"{sum(1 for _ in calls.open())} gcloud calls recorded in {calls.relative_to(ROOT)}", flush=True)
    failed = subprocess.run([sys.executable, str(tool), "check", str(sdk), str(calls), "cloudbuild.yaml"], cwd=ROOT)
    empty = RECORDED / "none.jsonl"
    empty.write_text("")
    failed_test_build = subprocess.run(
        [sys.executable, str(tool), "check", str(sdk), str(empty), "cloudbuild-test.yaml"], cwd=ROOT
    )
    release = (sdk / "VERSION").read_text().strip()
    pinned = str(yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())["substitutions"]["_GCLOUD_VERSION"])
    print(f"Google Cloud CLI release replayed: {release}; cloudbuild.yaml pins google-cloud-cli:{pinned}-slim")
    if release != pinned:
        print(f"the pinned release {pinned} is not the replayed {release}: bump _GCLOUD_VERSION or replay {pinned}")
        return 1
    return failed.returncode or failed_test_build.returncode


if __name__ == "__main__":
    sys.exit(main())
