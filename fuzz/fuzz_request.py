"""Fuzz target: raw bytes from the network -> h11 -> Request -> routing and body inputs.

Contract (STYLE "Fuzz contract"): any bytes either parse or raise a ``ServeError`` (an h11
``RemoteProtocolError``, which the connection loop answers with 400, counts as one); nothing else
escapes, and feeding the bytes whole or one at a time gives the same outcome. The same bytes are
also fed straight to ``body_inputs`` as a multipart and as a url-encoded body.

Run under atheris (``python fuzz/fuzz_request.py [atheris/libFuzzer flags]``) or, without it,
``python fuzz/fuzz_request.py --smoke N [--seed S]`` to check N generated inputs.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable
from typing import Any

import _harness
import h11

from trioserve.errors import ServeError
from trioserve.http.connection import MAX_HEAD_BYTES
from trioserve.http.request import Request, body_inputs
from trioserve.http.routing import INFERENCE, MANAGEMENT, METRICS, route

BOUNDARY = "fuzzBoundary"
APIS = frozenset({INFERENCE, MANAGEMENT, METRICS})

_MULTIPART = (
    b'--fuzzBoundary\r\nContent-Disposition: form-data; name="data"; filename="a"\r\n'
    b"Content-Type: image/png\r\n\r\n\x89PNG\r\n"
    b'--fuzzBoundary\r\nContent-Disposition: form-data; name="data"\r\n\r\nv\r\n'
    b"--fuzzBoundary--\r\n"
)
SEEDS: list[bytes] = [
    b"GET /ping HTTP/1.1\r\nHost: h\r\n\r\n",
    b"OPTIONS / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /models?url=m.mar&initial_workers=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"PUT /predictions/m%20x/1.0/v1/completions/ HTTP/1.1\r\nHost: h\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /predictions/m HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n\r\n7\r\na=1&b=2\r\n0\r\n\r\n",
    b"POST /predictions/m HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n"
    b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n%s"
    % (len(_MULTIPART), BOUNDARY.encode(), _MULTIPART),
    b'--fuzzBoundary\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n--fuzzBoundary--',
    b"a=1&b=%FF&c",
]


def _request_outcome(
    method: bytes, target: bytes, raw: list[tuple[bytes, bytes]], body: bytes
) -> Any:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    request = Request(method.decode("ascii"), target.decode("latin-1"), headers, body)
    request.header("content-type")
    request.param("url")
    routed: object
    try:
        found = route(APIS, request.method, request.segments)
        routed = (found.name, tuple(sorted(found.params.items())))
    except ServeError as exc:
        routed = exc.type_name
    try:
        inputs: Any = tuple(body_inputs(request))
    except ServeError as exc:
        inputs = exc.type_name
    return ("request", request.method, request.segments, routed, inputs)


def feed_http(chunks: Iterable[bytes]) -> Any:
    """The outcome of one request read off ``chunks`` (then EOF) by a server-side h11."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    head: h11.Request | None = None
    body = bytearray()
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Request):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    raw = list(head.headers.raw_items())
                    return _request_outcome(head.method, head.target, raw, bytes(body))
                else:  # ConnectionClosed or PAUSED: nothing (more) to serve
                    return ("closed",)
    except h11.RemoteProtocolError:
        return ("400",)
    return ("incomplete",)


def feed_body(data: bytes, content_type: str) -> Any:
    request = Request("POST", "/predictions/m", [("Content-Type", content_type)], data)
    try:
        return tuple(body_inputs(request))
    except ServeError as exc:
        return exc.type_name


def check(data: bytes) -> None:
    whole = feed_http([data])
    if len(data) <= MAX_HEAD_BYTES:
        # h11 bounds only an *incomplete* head, so past the bound the split can matter.
        one_by_one = feed_http(data[i : i + 1] for i in range(len(data)))
        assert whole == one_by_one, (data, whole, one_by_one)
    feed_body(data, f"multipart/form-data; boundary={BOUNDARY}")
    feed_body(data, "application/x-www-form-urlencoded")


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randint(0, len(out))
        if op == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.choice([b"\r\n", b"%", b"--", b";", b"\x00", rng.randbytes(3)])
        elif op == 2:
            del out[at : at + rng.randint(1, 8)]
        elif op == 3 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 16)]
        else:
            del out[at:]
    return bytes(out)


def generate(rng: random.Random, pool: list[bytes]) -> bytes:
    if rng.random() < 0.1:
        return rng.randbytes(rng.randint(0, 256))
    return mutate(rng, rng.choice(pool))


def main(argv: list[str]) -> int:
    return _harness.main(
        argv,
        name="request",
        doc=__doc__ or "",
        check=check,
        seeds=SEEDS,
        mutate=mutate,
        generate=generate,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
