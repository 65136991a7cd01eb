"""The gRPC servers (contract §4): grpclib on a trio-asyncio loop inside trioserve's nursery.

One entry point, :func:`serve_grpc`, started by ``trioserve.server.serve`` right after the HTTP
listeners: the inference service on ``grpc_inference_address:grpc_inference_port`` and the
management service on ``grpc_management_address:grpc_management_port`` (port 0: any free port,
reported back), TLS when ``enable_grpc_ssl``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import weakref
from dataclasses import dataclass, field
from typing import cast

import trio
import trio_asyncio
from grpclib.protocol import H2Protocol
from grpclib.server import Server

from trioserve import auth as token_auth
from trioserve.api.state import ServerState
from trioserve.config import Config
from trioserve.errors import ConfigError
from trioserve.grpc.auth import require_key
from trioserve.grpc.bridge import Bridge
from trioserve.grpc.inference import InferenceService
from trioserve.grpc.management import ManagementService
from trioserve.grpc.oip import OpenInferenceService

logger = logging.getLogger(__name__)
Service = InferenceService | ManagementService | OpenInferenceService

# After the drain (bounded by the caller's deadline), grpclib's close() cancels what still runs;
# this bounds the wait for those calls to unwind.
CLOSE_GRACE_S = 5.0
# An aborted connection is lost within a few loop turns; this bounds that wait all the same.
ABORT_WAIT_S = 1.0
INFERENCE = "grpc_inference"
MANAGEMENT = "grpc_management"


@dataclass
class GrpcRunning:
    """What :func:`serve_grpc` reports once up: the bound port of each server that listens
    (one that could not bind is missing), and how to start its drain."""

    ports: dict[str, int] = field(default_factory=dict)
    stop: trio.Event = field(default_factory=trio.Event)

    async def stop_when_cancelled(self) -> None:
        """Run beside the HTTP listeners: when they are cancelled, gRPC starts draining."""
        try:
            await trio.sleep_forever()
        finally:
            self.stop.set()


def grpc_ssl_context(config: Config) -> ssl.SSLContext:
    """TLS for both gRPC servers from ``certificate_file`` / ``private_key_file`` (PEM).

    Raises:
        ConfigError: the files are not set or cannot be loaded.
    """
    cert, key = config.certificate_file, config.private_key_file
    if not (cert and key):
        raise ConfigError(
            "enable_grpc_ssl=true needs private_key_file and certificate_file (PEM files)"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"enable_grpc_ssl: cannot load certificate_file={cert!r} with "
            f"private_key_file={key!r}: {exc}"
        ) from exc
    context.set_alpn_protocols(["h2"])  # gRPC is HTTP/2 only
    return context


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on the first address ``host`` resolves to. Its protocol is set
    explicitly (IPPROTO_TCP): grpclib turns on TCP_NODELAY only for such sockets, and without
    it Nagle's algorithm adds tens of milliseconds to every small reply."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock


class _Protocol(H2Protocol):
    """grpclib's protocol, holding its transport until the connection is lost. Closing a
    transport only starts its end: unsent bytes are flushed and a TLS connection waits for the
    peer's close_notify (asyncio allows 30 s), on the loop. Should the loop end first, the
    transport and its socket are left to the garbage collector (an "unclosed transport"
    ResourceWarning), so a shutdown waits for ``lost`` and aborts what is still open."""

    def __init__(self, made: H2Protocol) -> None:
        super().__init__(made.handler, made.config, made.h2_config)
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's: it has abort()
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self.transport = None
            if not self.lost.done():
                self.lost.set_result(None)


class _Server(Server):
    """grpclib's Server, remembering its connections: its ``close()`` stops listening and
    cancels the calls but leaves the connections open, and a shutdown must close them. Its
    ``wait_closed()`` does not wait for them either: asyncio's ``Server.wait_closed()`` returns
    at once once the listener is closed (Python before 3.12.1)."""

    def __init__(self, services: list[Service]) -> None:
        super().__init__(services)
        self._protocols: weakref.WeakSet[_Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        # grpclib's factory registers the connection's handler; ours keeps its transport.
        protocol = _Protocol(super()._protocol_factory())
        self._protocols.add(protocol)
        return protocol

    def close_connections(self) -> None:
        for protocol in list(self._protocols):
            processor = getattr(protocol, "processor", None)  # set once connected
            if processor is not None:
                processor.close("Server closed")

    async def wait_connections_lost(self) -> None:
        lost = [p.lost for p in self._protocols if p.transport is not None]
        if lost:
            await asyncio.wait(lost)

    async def abort_connections(self) -> None:
        """Drop the connections still open, unsent bytes and all, and wait until each is."""
        aborted = []
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.abort()
                aborted.append(protocol.lost)
        if aborted:
            # Lost within a few loop turns: abort() only schedules connection_lost.
            await asyncio.wait(aborted, timeout=ABORT_WAIT_S)


async def _start(server: _Server, sock: socket.socket, context: ssl.SSLContext | None) -> None:
    await server.start(sock=sock, ssl=context)


async def _drain(servers: list[_Server], bridge: Bridge) -> None:
    """Stop accepting, then wait for the calls in flight (asyncio side)."""
    for server in servers:
        listener = getattr(server, "_server", None)  # grpclib keeps the asyncio.Server there
        if isinstance(listener, asyncio.AbstractServer):
            listener.close()
    await bridge.calls.drain()


async def _close(servers: list[_Server]) -> None:
    """Cancel the calls, close the connections and wait for both; when the caller's grace runs
    out first (a TLS peer that never answers close_notify), abort the connections left, so no
    transport outlives the loop."""
    for server in servers:
        server.close()
        server.close_connections()
    try:
        for server in servers:
            await server.wait_closed()
            await server.wait_connections_lost()
    finally:
        for server in servers:
            await server.abort_connections()


async def serve_grpc(
    state: ServerState,
    auth: token_auth.TokenAuth | None = None,
    *,
    task_status: trio.TaskStatus[GrpcRunning] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve both gRPC APIs until ``GrpcRunning.stop`` is set, then drain and close. With
    ``auth``, every call needs its server's key (contract §0.6).

    Error handling: bad TLS files raise ConfigError before ``started`` (the start fails); a
    server that cannot bind is logged and left out (the rest of trioserve runs on); a failure
    after the start is logged with its traceback and ends gRPC only.
    Resource handling: the drain waits for calls in flight for as long as the caller's cancel
    scope allows (``serve`` gives it the HTTP drain deadline); grpclib's ``close()`` then cancels
    the rest and the connections are closed, within CLOSE_GRACE_S; any connection still open
    then is aborted, so that none outlives the loop.
    """
    config = state.config
    context = grpc_ssl_context(config) if config.enable_grpc_ssl else None
    running = GrpcRunning()
    started = False
    try:
        async with trio_asyncio.open_loop() as loop:
            bridge = Bridge(
                loop,
                max_request_size=config.max_request_size,
                max_response_size=config.max_response_size,
            )
            servers: list[_Server] = []
            wanted = (
                (INFERENCE, config.grpc_inference_address, config.grpc_inference_port),
                (MANAGEMENT, config.grpc_management_address, config.grpc_management_port),
            )
            for api, host, port in wanted:
                try:
                    sock = _bind(host, port)
                except OSError as exc:
                    logger.error("%s not served: cannot listen on %s:%d: %s", api, host, port, exc)
                    continue
                services: list[Service] = (
                    [InferenceService(state, bridge), OpenInferenceService(state, bridge)]
                    if api == INFERENCE
                    else [ManagementService(state, bridge)]
                )
                try:
                    server = await trio_asyncio.aio_as_trio(_make_server, loop=loop)(services)
                    if auth is not None:
                        kind = token_auth.INFERENCE if api == INFERENCE else token_auth.MANAGEMENT
                        require_key(server, auth, kind)
                    await trio_asyncio.aio_as_trio(_start, loop=loop)(server, sock, context)
                except BaseException:
                    sock.close()
                    raise
                servers.append(server)
                running.ports[api] = int(sock.getsockname()[1])
                logger.info("%s listening on %s:%d", api, host, running.ports[api])
            started = True
            task_status.started(running)
            try:
                await running.stop.wait()
                await trio_asyncio.aio_as_trio(_drain, loop=loop)(servers, bridge)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE_S):
                    await trio_asyncio.aio_as_trio(_close, loop=loop)(servers)
    except Exception:
        if not started:
            raise
        logger.exception("the gRPC servers failed; gRPC is no longer served")


async def _make_server(services: list[Service]) -> _Server:
    # Built on the loop: grpclib's Server binds itself to the running loop.
    return _Server(services)
