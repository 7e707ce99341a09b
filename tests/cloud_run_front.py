"""Google's front end of a private Cloud Run service, and the build's metadata server, over the
stand-in gcloud's state (tests/fake_gcloud.py).

The front end routes as Cloud Run does: the service URL follows the traffic split, a tag URL
reaches its revision. It admits a caller only with an identity token whose audience is the
service's URL (what Google's page on custom audiences documents: the `*.run.app` URL of the
receiving service, for every URL of it) and `run.routes.invoke`, then forwards to the revision's
upstream: a real function server, or canned statuses. With the stand-in's `function_uri` set to
`FrontEnd.url`, the service URL is `<url>/s/<service>` and a tag URL `<url>/t/<tag>/<service>`.

The metadata server gives the build's identity (FAKE account) an identity token for any
audience, when it may mint one for itself (`iam.serviceAccounts.getOpenIdToken`).
"""

import base64
import http.client
import http.server
import json
import random
import threading
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from tests import fake_gcloud, iam_model


def identity_token(member: str, audience: str) -> str:
    claims = json.dumps({"sub": member, "aud": audience}).encode()
    return fake_gcloud.TOKEN_PREFIX + base64.urlsafe_b64encode(claims).decode()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, answer = owner.answer(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_DELETE = do_PATCH = _any

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def __enter__(self) -> "_Server":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class FrontEnd(_Server):
    """`upstreams`: revision name -> a function server's base URL, or a list of statuses the
    revision answers authorized calls with (the last repeats). A revision with none answers 503."""

    def __init__(self, state_file: Path, upstreams: dict[str, str | list[int]]) -> None:
        super().__init__()
        self.state_file = state_file
        self.upstreams = upstreams
        self.served: list[tuple[str, str, str, int]] = []  # revision, method, path, status
        self.lock = threading.Lock()

    def state(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.state_file.read_text())
        return loaded

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        parts = path.split("/", 4)  # "", "s", service, rest  or  "", "t", tag, service, rest
        state = self.state()
        if len(parts) >= 3 and parts[1] == "s":
            name, rest, tag = parts[2].split("?")[0], path[len(f"/s/{parts[2]}") :], None
        elif len(parts) >= 4 and parts[1] == "t":
            tag, name = parts[2], parts[3].split("?")[0]
            rest = path[len(f"/t/{tag}/{name}") :]
        else:
            return 404, {}, b"no such URL"
        service = state["functions"].get(name)
        if service is None:
            return 404, {}, b"no such service"
        member = "allUsers"
        authorization = headers.get("Authorization", "")
        if authorization:
            claims = fake_gcloud.read_identity_token(authorization.removeprefix("Bearer "))
            if claims is None or claims["aud"] != f"{self.url}/s/{name}":
                return 401, {}, b"Unauthorized: the token's audience is not this service's URL"
            member = claims["sub"]
        if not iam_model.holds(state, member, "run.routes.invoke", "function"):
            return 403, {}, b"Forbidden: your client does not have permission to get this URL"
        if tag is not None:
            revision = service.get("tags", {}).get(tag)
            if revision is None:
                return 404, {}, b"no such tag"
        else:
            shares = service["traffic"]
            revision = random.choices(list(shares), weights=list(shares.values()))[0]
        status, answer_headers, answer = self._forward(revision, method, rest or "/", headers, body)
        with self.lock:
            self.served.append((revision, method, rest, status))
        return status, answer_headers, answer

    def _forward(
        self, revision: str, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        upstream = self.upstreams.get(revision)
        if upstream is None:
            return 503, {}, b"no instance of this revision"
        if isinstance(upstream, list):
            with self.lock:
                calls = sum(1 for served in self.served if served[0] == revision)
            status = upstream[min(calls, len(upstream) - 1)]
            if status == 201:
                return 201, {"Content-Type": "application/json"}, json.dumps({"id": str(uuid.uuid4())}).encode()
            if status == 200 and method == "POST":  # a canned 200 stands for success
                return 201, {"Content-Type": "application/json"}, json.dumps({"id": str(uuid.uuid4())}).encode()
            if status == 200 and method == "DELETE":
                return 204, {}, b""
            return status, {"Content-Type": "application/json"}, b'{"items": [], "next_cursor": null}'
        target = urllib.parse.urlsplit(upstream)
        connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
        forwarded = {k: v for k, v in headers.items() if k.lower() not in {"authorization", "host", "connection"}}
        connection.request(method, path, body=body or None, headers=forwarded)
        answer = connection.getresponse()
        content = answer.read()
        kept = {k: v for k, v in answer.getheaders() if k.lower() in {"content-type", "x-request-id", "location"}}
        connection.close()
        return answer.status, kept, content

    def revisions_served(self, method: str = "GET") -> list[str]:
        with self.lock:
            return [revision for revision, called, _, _ in self.served if called == method]


class MetadataServer(_Server):
    """The build's metadata server: an identity token for the build's own service account."""

    def __init__(self, state_file: Path, account: str) -> None:
        super().__init__()
        self.state_file = state_file
        self.account = account
        self.host = self.url.removeprefix("http://")

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if headers.get("Metadata-Flavor") != "Google":
            return 403, {}, b"Missing Metadata-Flavor:Google header."
        target = urllib.parse.urlsplit(path)
        if target.path != "/computeMetadata/v1/instance/service-accounts/default/identity":
            return 404, {}, b"not found"
        audience = urllib.parse.parse_qs(target.query).get("audience", [""])[0]
        state = json.loads(self.state_file.read_text())
        email = self.account.removeprefix("serviceAccount:")
        if not iam_model.holds(state, self.account, "iam.serviceAccounts.getOpenIdToken", email):
            return 403, {}, f"Permission 'iam.serviceAccounts.getOpenIdToken' denied on {email}".encode()
        return 200, {}, identity_token(self.account, audience).encode()
