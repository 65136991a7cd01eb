"""What one HTTP client may cost: the limits and deadlines of the connection loop, the cap on
concurrent connections per listener, and the drain signal.

h11 has no clocks and bounds only an incomplete head, so every other bound is ours. Each default
below is the one ``Config`` ships (``http_*`` keys, docs/limits.md); ``Limits.from_config`` is
how ``server.serve`` passes the configured values in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from trioserve.errors import ServeError, ServiceUnavailable
from trioserve.http.response import COMMON_HEADERS, JSON, dump_json

if TYPE_CHECKING:
    from trioserve.config import Config

# Node and Tomcat both cap request heads at 8-16 KiB by default; 64 KiB allows large cookies
# and long model URLs in query strings while keeping one connection's head buffer small.
MAX_HEAD_BYTES = 64 * 1024
READ_CHUNK = 64 * 1024
# A client gets this long to send a complete request head once it has started one: a head is
# one packet for any real client, so this only ever stops a trickle (slowloris).
HEAD_TIMEOUT_S = 10.0
# An idle keep-alive connection is closed after this long (a pooled client reconnects).
IDLE_TIMEOUT_S = 30.0
# A request body gets this long, plus the time it earns at MIN_BODY_RATE for every byte that
# arrives: a 6.5 MB body may take 30 s + 6.5 MB / 16 KiB/s, a trickle gets 30 s in all.
BODY_TIMEOUT_S = 30.0
# 128 kbit/s: slower than any link a real upload comes over, faster than a connection-holder
# wants to pay for (1000 held connections cost it 16 MB/s).
MIN_BODY_RATE = 16 * 1024
# Every WRITE_SLICE bytes of a response must be taken by the client within this long; one that
# stops reading is dropped as soon as the socket buffers are full and a slice waits this long.
WRITE_TIMEOUT_S = 30.0
WRITE_SLICE = 64 * 1024
# Per listener. Each connection may hold its head buffer plus one body (max_request_size);
# ``ulimit -n`` must allow this many sockets per listener, plus workers and gRPC.
MAX_CONNECTIONS = 1000
# As nginx's keepalive_requests: a long-lived connection is recycled now and then, so a
# load balancer rebalances and per-connection state never grows without end.
MAX_REQUESTS_PER_CONNECTION = 1000
# After our EOF, wait this long for the peer's before closing anyway.
CLOSE_DRAIN_S = 2.0
# A connection over the cap gets its 503 (TLS handshake included) within this long, or is cut.
REFUSE_TIMEOUT_S = 2.0
# What a refused connection may still send us while its 503 goes out; read and dropped.
REFUSE_DRAIN_BYTES = 64 * 1024

TOO_MANY_CONNECTIONS = "Too many open connections; please retry later."


@dataclass(frozen=True)
class Limits:
    """The per-connection bounds; times are seconds."""

    max_request_size: int
    max_header_bytes: int = MAX_HEAD_BYTES
    header_timeout: float = HEAD_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S
    keepalive_timeout: float = IDLE_TIMEOUT_S
    write_timeout: float = WRITE_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    max_requests_per_connection: int = MAX_REQUESTS_PER_CONNECTION

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(
            max_request_size=config.max_request_size,
            max_header_bytes=config.http_max_header_bytes,
            header_timeout=config.http_header_timeout,
            body_timeout=config.http_body_timeout,
            keepalive_timeout=config.http_keepalive_timeout,
            write_timeout=config.http_write_timeout,
            max_connections=config.http_max_connections,
            max_requests_per_connection=config.http_max_requests_per_connection,
        )


class Drain:
    """Tells every connection of a server that it is shutting down: idle keep-alive connections
    close at once, busy ones finish the request in hand, answer it with ``connection: close``
    and then close."""

    def __init__(self) -> None:
        self.draining = False
        self._idle: set[trio.CancelScope] = set()

    def begin(self) -> None:
        self.draining = True
        for scope in self._idle:
            scope.cancel()


class ConnectionGate:
    """Counts one listener's open connections against ``limit``. A connection past it is
    answered 503 and closed (:func:`refuse_connection`) rather than left unaccepted: a client
    learns at once that it should retry, and the listen backlog never fills with clients that
    would time out there."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def try_enter(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1


def _refusal_bytes(error: ServeError) -> bytes:
    """A whole ``connection: close`` error response, written before any request is read (h11
    cannot send a response to a request it has not seen)."""
    body = dump_json(error.body())
    headers = [
        ("x-request-id", str(uuid.uuid4())),
        *COMMON_HEADERS,
        ("content-type", JSON),
        ("content-length", str(len(body))),
        ("connection", "close"),
    ]
    head = f"HTTP/1.1 {error.code} Service Unavailable\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (head + "\r\n").encode("latin-1") + body


async def refuse_connection(stream: trio.abc.Stream) -> None:
    """Answer a connection over the cap with 503 ServiceUnavailableException and close it.

    Resource handling: everything (TLS handshake, the send, reading what the client already sent
    so the close does not reset the 503 away) happens within REFUSE_TIMEOUT_S and at most
    REFUSE_DRAIN_BYTES; the stream is closed in every case.
    """
    try:
        with trio.move_on_after(REFUSE_TIMEOUT_S):
            await stream.send_all(_refusal_bytes(ServiceUnavailable(TOO_MANY_CONNECTIONS)))
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            drained = 0
            while drained < REFUSE_DRAIN_BYTES:
                data = await stream.receive_some(READ_CHUNK)
                if not data:
                    break
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)
