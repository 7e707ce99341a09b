"""Entity tags and the conditional headers: `If-Match` guards writes, `If-None-Match` saves reads."""

import re
import uuid
from typing import Annotated, Protocol

from fastapi import Header

_ENTITY_TAG = re.compile(r'\s*(W/)?"([^"]*)"\s*(?:,|$)')

IfMatch = Annotated[str | None, Header(description="Write only if the resource still has this ETag")]
IfNoneMatch = Annotated[str | None, Header(description="Answer 304 if the resource still has this ETag")]


class Versioned(Protocol):
    id: uuid.UUID
    version: int


def entity_tag(resource: Versioned) -> str:
    """Strong tag from the version; the id makes a tag of one resource useless on another."""
    return f'"{resource.id.hex}.{resource.version}"'


def _tags(header: str) -> list[tuple[bool, str]]:
    """(weak, opaque tag) pairs; an unparseable header matches nothing."""
    tags, position = [], 0
    while position < len(header):
        match = _ENTITY_TAG.match(header, position)
        if match is None:
            return []
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return tags


def acceptable_versions(if_match: str | None, resource_id: uuid.UUID) -> frozenset[int] | None:
    """The versions a write may replace: None when unconditional (no header, or `*`)."""
    if if_match is None or if_match.strip() == "*":
        return None
    versions = set()
    for weak, tag in _tags(if_match):  # If-Match uses the strong comparison: weak tags never match
        tag_id, _, version = tag.partition(".")
        if not weak and tag_id == resource_id.hex and version.isdigit():
            versions.add(int(version))
    return frozenset(versions)


def not_modified(if_none_match: str | None, current: str) -> bool:
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(f'"{tag}"' == current for _, tag in _tags(if_none_match))  # weak comparison
