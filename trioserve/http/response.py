"""Sans-IO response values and the headers every response carries (contract §0.2, §0.3)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from trioserve.errors import ServeError

JSON = "application/json"
COMMON_HEADERS: tuple[tuple[str, str], ...] = (
    ("Pragma", "no-cache"),
    # TorchServe's value keeps its stray semicolon; caches read it the same either way.
    ("Cache-Control", "no-cache; no-store, must-revalidate, private"),
    ("Expires", "Thu, 01 Jan 1970 00:00:00 UTC"),
)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    reason: str | None = None  # None: the standard phrase for the status


@dataclass
class StreamingResponse:
    """A chunked response: head from the first chunk, then the rest as they come."""

    status: int
    chunks: AsyncIterator[bytes]
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    reason: str | None = None


def dump_json(value: object) -> bytes:
    """Pretty JSON as TorchServe writes it: 2-space indent, no ASCII escaping, final newline."""
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def json_response(value: object, status: int = 200) -> Response:
    return Response(status, dump_json(value), JSON)


def status_response(text: str, status: int = 200) -> Response:
    return json_response({"status": text}, status)


def error_response(error: ServeError) -> Response:
    return json_response(error.body(), error.code)
