"""Cloud Logging's side of the function's log lines, offline.

How a JSON line on a Cloud Run (2nd gen function) container's stdout becomes a LogEntry: Google's
structured-logging agent lifts the special fields out of the JSON object (`severity`, `httpRequest`,
`time`, `logging.googleapis.com/trace`, ...) and keeps the rest as `jsonPayload`; the entry's
resource is the revision of the function's Cloud Run service. Then the part of the Logging query
language and of the value extractors that monitoring/metrics/ uses. Anything outside that part is
an error, not a silent match, so a filter that would not work on Google Cloud cannot pass here.
"""

import json
import operator
import re
from collections.abc import Callable
from typing import Any

# JSON field -> LogEntry field (https://cloud.google.com/logging/docs/structured-logging).
SPECIAL_FIELDS = {
    "severity": "severity",
    "httpRequest": "httpRequest",
    "time": "timestamp",
    "logging.googleapis.com/insertId": "insertId",
    "logging.googleapis.com/labels": "labels",
    "logging.googleapis.com/operation": "operation",
    "logging.googleapis.com/sourceLocation": "sourceLocation",
    "logging.googleapis.com/spanId": "spanId",
    "logging.googleapis.com/trace": "trace",
    "logging.googleapis.com/trace_sampled": "traceSampled",
}
# The LogEntry's HttpRequest message: a field it does not have would not reach Cloud Logging.
HTTP_REQUEST_FIELDS = {
    "requestMethod": str,
    "requestUrl": str,
    "requestSize": str,  # int64, which JSON carries as a string
    "status": int,
    "responseSize": str,
    "userAgent": str,
    "remoteIp": str,
    "serverIp": str,
    "referer": str,
    "latency": str,  # google.protobuf.Duration: "0.117955s"
    "cacheLookup": bool,
    "cacheHit": bool,
    "cacheValidatedWithOriginServer": bool,
    "cacheFillBytes": str,
    "protocol": str,
}
DURATION = re.compile(r"-?\d+(?:\.\d{1,9})?s")


class Unsupported(ValueError):
    """A filter or extractor outside the part of the language this emulation knows."""


def entry_from_stdout(line: str, *, project: str, service: str, revision: str) -> dict[str, Any]:
    """The LogEntry one stdout line of the function becomes."""
    payload = json.loads(line)
    assert isinstance(payload, dict), line
    entry: dict[str, Any] = {
        "logName": f"projects/{project}/logs/run.googleapis.com%2Fstdout",
        "resource": {
            "type": "cloud_run_revision",
            "labels": {"project_id": project, "service_name": service, "revision_name": revision},
        },
    }
    for json_field, entry_field in SPECIAL_FIELDS.items():
        if json_field in payload:
            entry[entry_field] = payload.pop(json_field)
    if "httpRequest" in entry:
        for name, value in entry["httpRequest"].items():
            assert name in HTTP_REQUEST_FIELDS, f"HttpRequest has no field {name}: {line}"
            assert isinstance(value, HTTP_REQUEST_FIELDS[name]), f"httpRequest.{name}: {value!r}"
        assert DURATION.fullmatch(entry["httpRequest"].get("latency", "0s")), entry["httpRequest"]
    entry["jsonPayload"] = payload
    return entry


def cloud_run_request_entry(*, project: str, service: str, status: int, latency: str) -> dict[str, Any]:
    """The request log Cloud Run itself writes for every request: httpRequest, no jsonPayload."""
    return {
        "logName": f"projects/{project}/logs/run.googleapis.com%2Frequests",
        "resource": {"type": "cloud_run_revision", "labels": {"project_id": project, "service_name": service}},
        "httpRequest": {"requestMethod": "GET", "status": status, "latency": latency},
    }


# ---- the query language: comparisons of a field path with a quoted string or a number, joined by
# AND and OR (OR binds tighter, as in Cloud Logging), grouped by parentheses.

_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op>>=|<=|!=|[=:<>])|(?P<paren>[()])'
    r"|(?P<number>-?\d+(?:\.\d+)?(?![\w.]))|(?P<word>[A-Za-z_][\w.]*))"
)


def _tokens(text: str) -> list[tuple[str, str]]:
    found, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise Unsupported(f"the query language here has no token at {text[position:]!r}")
        kind = match.lastgroup
        assert kind is not None
        found.append((kind, match.group(kind)))
        position = match.end()
    return found


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.position = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise Unsupported("the filter ends in the middle of an expression")
        self.position += 1
        return token

    def conjunction(self) -> Any:
        terms = [self.disjunction()]
        while self.peek() == ("word", "AND"):
            self.take()
            terms.append(self.disjunction())
        return ("AND", terms)

    def disjunction(self) -> Any:
        terms = [self.primary()]
        while self.peek() == ("word", "OR"):
            self.take()
            terms.append(self.primary())
        return ("OR", terms)

    def primary(self) -> Any:
        kind, text = self.take()
        if (kind, text) == ("paren", "("):
            inner = self.conjunction()
            if self.take() != ("paren", ")"):
                raise Unsupported("a parenthesis is not closed")
            return inner
        if kind != "word" or text in {"AND", "OR", "NOT"}:
            raise Unsupported(f"expected a field, found {text!r} (NOT and implicit AND are not used here)")
        op_kind, op = self.take()
        value_kind, value = self.take()
        if op_kind != "op" or value_kind not in {"string", "number"}:
            raise Unsupported(f"expected `{text} OP value`, found {op!r} {value!r}")
        literal: str | float = json.loads(value) if value_kind == "string" else float(value)
        return ("CMP", text, op, literal)


def parse(text: str) -> Any:
    parser = _Parser(text)
    tree = parser.conjunction()
    if parser.peek() is not None:
        raise Unsupported(f"unexpected {parser.peek()!r} in the filter")
    return tree


def field(entry: dict[str, Any], path: str) -> Any:
    value: Any = entry
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


_NUMBER_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def _compare(value: Any, op: str, literal: str | float) -> bool:
    if isinstance(literal, str) and op not in {"=", "!=", ":"}:
        raise Unsupported(f"`{op}` on text (an ordering of severities, say) is not used here")
    if value is None:
        if op == "!=":
            raise Unsupported("`!=` on a field an entry may lack: Cloud Logging's answer is not relied on here")
        return False
    if op == ":":
        return str(literal).lower() in str(value).lower()
    if isinstance(literal, float):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise Unsupported(f"a number compared with {value!r}")
        return _NUMBER_COMPARISONS[op](float(value), literal)
    return (str(value) == literal) == (op == "=")


def _evaluate(tree: Any, entry: dict[str, Any]) -> bool:
    kind = tree[0]
    if kind == "AND":
        return all(_evaluate(term, entry) for term in tree[1])
    if kind == "OR":
        return any(_evaluate(term, entry) for term in tree[1])
    _, path, op, literal = tree
    return _compare(field(entry, path), op, literal)


def matches(filter_text: str, entry: dict[str, Any]) -> bool:
    return _evaluate(parse(filter_text), entry)


def fields_of(filter_text: str) -> set[str]:
    """The field paths a filter reads."""

    def walk(tree: Any) -> set[str]:
        if tree[0] == "CMP":
            return {tree[1]}
        return set().union(*(walk(term) for term in tree[1]))

    return walk(parse(filter_text))


def extract(extractor: str, entry: dict[str, Any]) -> float:
    """A distribution metric's value: EXTRACT(field); a Duration is read in seconds."""
    match = re.fullmatch(r"EXTRACT\(([\w.]+)\)", extractor.strip())
    if match is None:
        raise Unsupported(f"only EXTRACT(field) is used here, not {extractor!r}")
    value = field(entry, match[1])
    if isinstance(value, str) and DURATION.fullmatch(value):
        return float(value[:-1])
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise Unsupported(f"{match[1]} is {value!r}, not a number or a duration")
