"""The plain-request path against h11: what it accepts, h11 reads the same way; what it
writes, h11 would have written byte for byte."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioserve.http.fastpath import PlainHead, parse_head
from trioserve.http.framing import head_bytes, response_head
from trioserve.http.response import Response, StreamingResponse

LIMIT = 8192


def h11_reading(data: bytes) -> tuple[h11.Request, bytes | None] | None:
    """What h11 makes of ``data``: the request and its body (None while incomplete), or None
    if it refuses the request."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMIT)
    conn.receive_data(data)
    try:
        event = conn.next_event()
        if not isinstance(event, h11.Request):
            return None
        body = b""
        while True:
            part = conn.next_event()
            if isinstance(part, h11.Data):
                body += part.data
            elif isinstance(part, h11.EndOfMessage):
                return event, body
            elif part is h11.NEED_DATA:
                return event, None
            else:
                return None
    except h11.RemoteProtocolError:
        return None


def assert_same_reading(data: bytes) -> PlainHead | None:
    head = parse_head(data, LIMIT)
    if head is None:
        return None
    reading = h11_reading(data)
    assert reading is not None, f"accepted what h11 refuses: {data!r}"
    event, body = reading
    assert head.method == event.method.decode()
    assert head.target == event.target.decode()
    assert head.headers == [(k.decode(), v.decode()) for k, v in event.headers.raw_items()]
    if body is None:
        assert len(data) < head.size + head.content_length
    else:
        assert data[head.size : head.size + head.content_length] == body
    return head


PLAIN = (
    b"POST /predictions/m HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b'Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{"a": true}'
)


def test_a_plain_request_is_read_as_h11_reads_it() -> None:
    head = assert_same_reading(PLAIN)
    assert head is not None
    assert head.content_length == 11
    assert head.headers[0] == ("Host", "127.0.0.1:8080")


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad:   spaced  value \t\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost:\r\nConnection: keep-alive\r\n\r\n",
        b"DELETE /models/m/1.0?x=%20y HTTP/1.1\r\nhost: a\r\nCONTENT-LENGTH: 0\r\n\r\n",
        b"PUT /models/m HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n1234567",
    ],
)
def test_other_plain_requests(data: bytes) -> None:
    assert assert_same_reading(data) is not None


@pytest.mark.parametrize(
    "data",
    [
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: folded\r\n  more\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n",  # incomplete
        b"GET /" + b"a" * LIMIT + b" HTTP/1.1\r\nHost: a\r\n\r\n",  # over the limit
    ],
)
def test_anything_else_is_left_to_h11(data: bytes) -> None:
    assert parse_head(data, LIMIT) is None


_TOKEN = st.text("abcXYZ-019!#", min_size=1, max_size=6)
_VALUE = st.text(' \tab:;/"=,%\x7f\x01\r\n\xe9', max_size=8)


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "get"]),
    target=st.text("/abc?=&%#\x01 ", min_size=1, max_size=8),
    headers=st.lists(st.tuples(_TOKEN, _VALUE), max_size=4),
    host=st.sampled_from([[], ["a"], ["a", "b"]]),
    length=st.one_of(st.none(), st.integers(0, 5), st.sampled_from(["x", "1 ", " 2", "01"])),
    separator=st.sampled_from([": ", ":", " : ", ":\t"]),
)
def test_whatever_it_accepts_h11_reads_the_same(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    host: list[str],
    length: int | str | None,
    separator: str,
) -> None:
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"Host{separator}{h}" for h in host]
    lines += [f"{k}{separator}{v}" for k, v in headers]
    body = b""
    if length is not None:
        lines.append(f"Content-Length: {length}")
        body = b"x" * (length if isinstance(length, int) else 0)
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    assert_same_reading(data)


def h11_head_bytes(response: Response | StreamingResponse, length: int | None, keep: bool) -> bytes:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.next_event()
    conn.next_event()
    return conn.send(response_head(response, "rid", length, keep)) or b""


async def _no_chunks():  # type: ignore[no-untyped-def]
    yield b""


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize(
    "response",
    [
        Response(200, b"{}", "application/json"),
        Response(201, b"ok", None, [("X-Custom", "v 1"), ("Content-Length", "99")], "Made"),
        Response(204),
        Response(304, b""),
        Response(404, b"{}", "application/json"),
        Response(507, b"x", None, [], "Bad\x01reason"),
        Response(599, b""),
    ],
)
def test_heads_are_the_bytes_h11_writes(response: Response, keep: bool) -> None:
    length = len(response.body)
    assert head_bytes(response, "rid", length, keep) == h11_head_bytes(response, length, keep)


@pytest.mark.parametrize("status", [200, 204, 500])
@pytest.mark.parametrize("keep", [True, False])
def test_streamed_heads_are_the_bytes_h11_writes(status: int, keep: bool) -> None:
    response = StreamingResponse(status, _no_chunks(), "text/plain")
    assert head_bytes(response, "rid", None, keep) == h11_head_bytes(response, None, keep)


@pytest.mark.parametrize(
    "headers", [[("X-Bad", "a\r\nInjected: 1")], [("Bad Name", "v")], [("X", "\x00")]]
)
def test_heads_h11_refuses_are_refused(headers: list[tuple[str, str]]) -> None:
    response = Response(200, b"", None, headers)
    with pytest.raises(ValueError, match="cannot go on the wire"):
        head_bytes(response, "rid", 0, True)
    with pytest.raises((h11.LocalProtocolError, ValueError)):
        h11_head_bytes(response, 0, True)
