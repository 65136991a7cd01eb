"""The plain request, parsed without h11 (sans-IO).

h11 costs 70 to 100 µs to read a small request and write its answer here, against ~14 µs
for this path: a sixth of a small prediction's time in the frontend. Nearly every request a
model server sees is the same plain shape: a complete head in one read, a request line and
``name: value`` lines with CRLFs, HTTP/1.1, one Host, at most one Content-Length, nothing that
changes the framing or the connection. :func:`parse_head` parses
exactly that subset and says None to anything else, which h11 then parses as before. So it
only ever accepts what h11 accepts, and reads it the same way (names keep their case; values
lose the optional whitespace around them): tests/unit/test_fastpath.py checks both against
each other, and fuzz/fuzz_fastpath.py keeps checking.

Left to h11: HEAD (its response has no body but a length), HTTP/1.0, ``Connection`` asking for
anything but keep-alive, ``Transfer-Encoding``, ``Expect``, ``Upgrade``, repeated or missing
Host, repeated Content-Length, bare LFs, folded lines, control bytes or non-ASCII bytes anywhere,
a lowercase or unusual method, and heads over the size limit or not yet complete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_REQUEST_LINE = re.compile(rb"(GET|POST|PUT|DELETE|OPTIONS|PATCH) ([\x21-\x7e]+) HTTP/1\.1")
# RFC 9110 field: a token, a colon, optional whitespace, a value of visible ASCII with inner
# runs of SP/HTAB, optional whitespace.
_HEADER = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?)[ \t]*"
)
# Headers that change how the request is framed or the connection handled: h11 decides.
_H11_ONLY = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"te", b"http2-settings"})


@dataclass(slots=True)
class PlainHead:
    """A request head :func:`parse_head` accepted."""

    method: str
    target: str
    headers: list[tuple[str, str]]  # names with the client's case
    content_length: int
    size: int  # bytes of the head, its blank line included


def parse_head(buffer: bytes | bytearray, max_head_bytes: int) -> PlainHead | None:
    """The plain request head at the start of ``buffer``, or None: not plain, not complete, or
    larger than ``max_head_bytes`` (h11 then takes the request, and says what is wrong)."""
    end = buffer.find(b"\r\n\r\n", 0, max_head_bytes)
    if end < 0 or end + 4 > max_head_bytes:
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None:
        return None
    headers: list[tuple[str, str]] = []
    hosts = 0
    length: int | None = None
    for line in lines[1:]:
        field = _HEADER.fullmatch(line)
        if field is None:
            return None
        name, value = field.group(1), field.group(2)
        lowered = name.lower()
        if lowered == b"host":
            hosts += 1
        elif lowered == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif lowered == b"connection":
            if any(t.strip().lower() != b"keep-alive" for t in value.split(b",")):
                return None
        elif lowered in _H11_ONLY:
            return None
        headers.append((name.decode("ascii"), value.decode("ascii")))
    if hosts != 1:
        return None
    return PlainHead(
        method=request.group(1).decode("ascii"),
        target=request.group(2).decode("ascii"),
        headers=headers,
        content_length=length or 0,
        size=end + 4,
    )
