"""The smoke test of a candidate revision, at its own tag URL, before it takes any traffic.

Cloud Build runs it (cloudbuild.yaml, step `smoke-test`) between `deploy-candidate`, which deploys
the revision with `--no-traffic --tag=candidate`, and `promote`, which moves traffic to it. It
proves, in this order, on the candidate alone:

1. an anonymous call is refused (401 or 403): the function is private;
2. a read of a table answers 200: the runtime's database user may read (a 500 here is nearly
   always missing grants; /readyz, a plain SELECT 1, would still say 200);
3. a write and its delete answer 201 and 204: it may write too. The row is named
   `smoke-test <build id>` and every request carries `X-Request-ID: smoke-<build id>-<n>`, which
   the app logs and echoes, so the logs and the audit columns show it was the smoke test.

Any other answer fails the build naming the revision: traffic stays where it was. Answers that
may be transient (401/403 while a fresh invoker grant propagates, 429/502/503/504 while the first
instance starts) are retried for about a minute.

The identity token is the build's own, from the metadata server, for the audience Google's page
on custom audiences documents: the service's `*.run.app` URL (which every revision and tag of the
service accepts), not the tag URL. Only the standard library: the step's image promises Python and
nothing else (no curl).

    python scripts/smoke_test.py --candidate=candidate.env --build-id=BUILD_ID
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

TRANSIENT = {401, 403, 429, 502, 503, 504}
ATTEMPTS = 6
PAUSE_S = 10.0


class SmokeTestFailed(Exception):
    pass


def identity_token(audience: str) -> str:
    """The build's ID token from the metadata server (GCE_METADATA_HOST, as google-auth reads it)."""
    host = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
    query = urllib.parse.urlencode({"audience": audience, "format": "full"})
    request = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/instance/service-accounts/default/identity?{query}",
        headers={"Metadata-Flavor": "Google"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return str(answer.read().decode())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:300]
        raise SmokeTestFailed(f"the metadata server gave no identity token ({error.code}): {detail}") from error


def call(method: str, url: str, *, token: str | None, request_id: str, body: object = None) -> tuple[int, str]:
    headers = {"X-Request-ID": request_id}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if not url.startswith(("https://", "http://")):
        raise SmokeTestFailed(f"not an HTTP URL: {url}")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 (checked above)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        return 0, str(error)


class Smoke:
    def __init__(self, url: str, token: str, build_id: str, pause_s: float = PAUSE_S) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.build_id = build_id
        self.pause_s = pause_s
        self.sent = 0

    def request_id(self) -> str:
        self.sent += 1
        return f"smoke-{self.build_id}-{self.sent}"

    def expect(self, method: str, path: str, status: int, body: object = None) -> str:
        """`status`, retrying while the answer may be transient; anything else fails at once."""
        answer = ""
        for attempt in range(1, ATTEMPTS + 1):
            got, answer = call(method, self.url + path, token=self.token, request_id=self.request_id(), body=body)
            if got == status:
                print(f"{method} {path}: {got}")
                return answer
            print(f"attempt {attempt}: {method} {path} answered {got} {answer[:300]}")
            if got not in TRANSIENT and got != 0:
                raise SmokeTestFailed(f"{method} {path} answered {got}, expected {status}")
            time.sleep(self.pause_s)
        raise SmokeTestFailed(f"{method} {path} never answered {status}")

    def run(self) -> None:
        anonymous, _ = call("GET", self.url + "/readyz", token=None, request_id=self.request_id())
        if anonymous not in (401, 403):
            raise SmokeTestFailed(f"an anonymous GET /readyz answered {anonymous}: the function must refuse it")
        print(f"anonymous GET /readyz: {anonymous}, refused")
        self.expect("GET", "/v1/projects?limit=1", 200)
        created = self.expect(
            "POST",
            "/v1/projects",
            201,
            {"name": f"smoke-test {self.build_id}", "description": "written and deleted by the deploy's smoke test"},
        )
        project_id = json.loads(created)["id"]
        self.expect("DELETE", f"/v1/projects/{project_id}", 204)


def read_candidate(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as scripts/release.sh writes them."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", type=Path, default=Path("candidate.env"), help="from release.sh deploy")
    parser.add_argument("--build-id", required=True, help="marks the requests and the row")
    parser.add_argument("--pause-s", type=float, default=PAUSE_S, help="between attempts")
    args = parser.parse_args(argv)
    candidate = read_candidate(args.candidate)
    revision, url = candidate["REVISION"], candidate["TAG_URL"]
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    print(f"smoke test of revision {revision} at {url}")
    try:
        Smoke(url, identity_token(candidate["SERVICE_URL"]), args.build_id, args.pause_s).run()
    except SmokeTestFailed as failure:
        print(
            f"revision {revision} FAILED its smoke test: {failure}\n"
            "Traffic stays on the revision that served before; the candidate keeps its tag URL for a look.\n"
            "A 500 on a read or a write usually means that the runtime's database user\n"
            "lacks its grants (scripts/grant_roles.sh); the function's logs have the error, under the\n"
            "X-Request-IDs above."
        )
        return 1
    print(f"revision {revision} passed: it reads and writes as the runtime user")
    return 0


if __name__ == "__main__":
    sys.exit(main())
