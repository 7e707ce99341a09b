"""Calling this service from Python on Google Cloud, the way a client should.

    pip install requests google-auth
    python examples/client.py https://europe-west1-my-project.cloudfunctions.net/projects-api

Run it where Application Default Credentials are a service account allowed to invoke the function
(`roles/run.invoker`): on Cloud Run, Cloud Functions, GKE or Compute Engine, the runtime's
service account, through the metadata server; elsewhere, GOOGLE_APPLICATION_CREDENTIALS naming a
service account key file. (A user's `gcloud auth application-default login` credentials cannot
mint ID tokens.) What it shows:

- an ID token whose audience is the function's URL, refreshed before it expires, sent as
  `Authorization: Bearer`: Google's front end checks it, and so does the service with
  AUTH_MODE=google and AUTH_AUDIENCE set to that URL;
- a 503 (the database is briefly unavailable), a 429 (no instance free) and a dropped connection
  are retried after the `Retry-After` the answer gives, a bounded number of times;
- every POST carries an `Idempotency-Key`, the same on each retry, so a retry whose first attempt
  did succeed replays that answer instead of creating a second resource;
- lists are walked by following `next_cursor`;
- changes send `If-Match` with the ETag they were based on: a 412 means somebody changed the
  resource first, so read it again and decide, instead of overwriting their change.

`Client` needs only a base URL and, optionally, a function that returns a bearer token, so the
same code runs against `make run` (no token) and in the tests (tests/test_client.py).
"""

import email.utils
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import requests

TokenSource = Callable[[], str]
RETRIED_STATUSES = {429, 503}


def google_id_tokens(audience: str) -> TokenSource:
    """ID tokens for `audience` (the function's URL) from Application Default Credentials."""
    import google.auth.transport.requests
    import google.oauth2.id_token

    request = google.auth.transport.requests.Request()
    credentials = google.oauth2.id_token.fetch_id_token_credentials(audience, request=request)

    def token() -> str:
        if not credentials.valid:  # none yet, or expiring: google-auth counts a margin before expiry
            credentials.refresh(request)
        value: str = credentials.token
        return value

    return token


class ApiError(Exception):
    """An answer that is not a success: `status` and the service's problem document (RFC 9457)."""

    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        try:
            self.problem: dict[str, Any] = response.json()
        except ValueError:
            self.problem = {"title": response.reason, "detail": response.text[:200]}
        self.request_id = response.headers.get("X-Request-ID")
        super().__init__(f"{self.status} {self.problem.get('title')}: {self.problem.get('detail')} ({self.request_id})")


class Client:
    def __init__(
        self,
        base_url: str,
        token_source: TokenSource | None = None,
        *,
        attempts: int = 4,
        longest_wait_s: float = 30,
        timeout_s: float = 30,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_source = token_source
        self.attempts = attempts
        self.longest_wait_s = longest_wait_s
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self.sleep = sleep

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """One call, retried while the service says to come back later; a non-2xx/304 raises ApiError.

        Only safe repeats are retried: reads, and writes that a repeat cannot apply twice (a POST
        with an Idempotency-Key, a PATCH or DELETE with If-Match, a DELETE of one resource).
        """
        headers = dict(headers or {})
        repeatable = method in ("GET", "DELETE") or "Idempotency-Key" in headers or "If-Match" in headers
        for attempt in range(1, self.attempts + 1):
            if self.token_source is not None:
                headers["Authorization"] = f"Bearer {self.token_source()}"
            last = attempt == self.attempts or not repeatable
            try:
                response = self.session.request(
                    method, self.base_url + path, json=json, params=params, headers=headers, timeout=self.timeout_s
                )
            except (requests.ConnectionError, requests.Timeout):
                if last:
                    raise
                self.sleep(min(2**attempt, self.longest_wait_s))
                continue
            if response.status_code in RETRIED_STATUSES and not last:
                self.sleep(self._wait(response, attempt))
                continue
            if response.status_code >= 400:
                raise ApiError(response)
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait(self, response: requests.Response, attempt: int) -> float:
        """Seconds to wait: the answer's Retry-After (seconds or an HTTP date), else a backoff."""
        value = response.headers.get("Retry-After", "")
        if value.isdigit():
            return min(float(value), self.longest_wait_s)
        try:
            moment = email.utils.parsedate_to_datetime(value)
            return min(max((moment - datetime.now(UTC)).total_seconds(), 0.0), self.longest_wait_s)
        except (TypeError, ValueError):
            return min(2.0**attempt, self.longest_wait_s)

    def create(self, path: str, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """POST, safe to retry: one key for every attempt (pass your own to span restarts of your code)."""
        key = idempotency_key or str(uuid.uuid4())
        created: dict[str, Any] = self.request("POST", path, json=body, headers={"Idempotency-Key": key}).json()
        return created

    def read(self, path: str) -> tuple[dict[str, Any], str]:
        """The resource and its ETag, for a later If-Match."""
        response = self.request("GET", path)
        return response.json(), response.headers["ETag"]

    def update(self, path: str, changes: dict[str, Any], etag: str) -> tuple[dict[str, Any], str]:
        """PATCH (merge patch) only if the resource is still the version `etag` names; else ApiError 412."""
        response = self.request("PATCH", path, json=changes, headers={"If-Match": etag})
        return response.json(), response.headers["ETag"]

    def delete(self, path: str, etag: str | None = None) -> None:
        self.request("DELETE", path, headers={"If-Match": etag} if etag else None)

    def items(self, path: str, **query: str | int) -> Iterator[dict[str, Any]]:
        """Every item of a list, newest first, a page at a time: follows next_cursor until it is null."""
        parameters = {name: str(value) for name, value in query.items()}
        while True:
            page = self.request("GET", path, params=parameters).json()
            yield from page["items"]
            if page["next_cursor"] is None:
                return
            parameters["cursor"] = page["next_cursor"]


def main(base_url: str) -> None:
    client = Client(base_url, google_id_tokens(base_url))
    project = client.create("/v1/projects", {"name": f"example {uuid.uuid4().hex[:8]}"})
    task = client.create(f"/v1/projects/{project['id']}/tasks", {"title": "try the client"})
    task, etag = client.read(f"/v1/tasks/{task['id']}")
    task, etag = client.update(f"/v1/tasks/{task['id']}", {"status": "done"}, etag)
    print(f"task {task['id']} is {task['status']} at version {task['version']}")
    for item in client.items(f"/v1/projects/{project['id']}/tasks", limit=50):
        print(" ", item["title"], item["status"])
    client.delete(f"/v1/projects/{project['id']}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/client.py https://REGION-PROJECT.cloudfunctions.net/FUNCTION")
    main(sys.argv[1])
