"""Fuzz target: request bytes -> ``fastpath.parse_head`` against h11 reading the same bytes.

Contract: whatever the plain-request parser accepts, h11 accepts too and reads the same way
(method, target, headers with their case, the body Content-Length delimits); anything else it
declines (None), never raises. Declining is always allowed: h11 then parses the request.

Run under atheris (``python fuzz/fuzz_fastpath.py [atheris/libFuzzer flags]``) or, without it,
``python fuzz/fuzz_fastpath.py --smoke N [--seed S]`` to check N generated inputs.
"""

from __future__ import annotations

import random
import sys

import _harness
import h11

from trioserve.http.fastpath import parse_head

LIMIT = 8192

SEEDS: list[bytes] = [
    b"POST /predictions/m HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json"
    b'\r\nContent-Length: 11\r\n\r\n{"a": true}',
    b"GET /ping HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nX-Pad:  v  w \t\r\n\r\n",
    b"PUT /models/m?min_worker=2 HTTP/1.1\r\nhost:x\r\ncontent-length: 003\r\n\r\nabcGET /",
    b"DELETE /models/m/1.0 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
]


def check(data: bytes) -> None:
    head = parse_head(data, LIMIT)
    if head is None:
        return
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMIT)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise AssertionError(f"accepted a head h11 refuses ({exc}): {data!r}") from None
    assert isinstance(event, h11.Request), event
    assert head.method == event.method.decode()
    assert head.target == event.target.decode()
    assert head.headers == [(k.decode(), v.decode()) for k, v in event.headers.raw_items()]
    body = b""
    while True:
        part = conn.next_event()
        if isinstance(part, h11.Data):
            body += part.data
        elif isinstance(part, h11.EndOfMessage):
            assert body == data[head.size : head.size + head.content_length]
            return
        else:
            assert part is h11.NEED_DATA, part
            assert len(data) < head.size + head.content_length
            return


TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b",",
    b"\x00",
    b"\xff",
    b"Host: b\r\n",
    b"Content-Length: 2\r\n",
    b"Connection: close\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"HTTP/1.0",
    b"HEAD",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    return _harness.splice(rng, data, TOKENS, SEEDS)


def main(argv: list[str]) -> int:
    return _harness.main(
        argv, name="fastpath", doc=__doc__ or "", check=check, seeds=SEEDS, mutate=mutate
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
