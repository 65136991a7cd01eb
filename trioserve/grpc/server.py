"""The gRPC servers (contract §4): grpcio's asyncio server, on a loop in a thread of its own,
inside trioserve's nursery.

One entry point, :func:`serve_grpc`, started by ``trioserve.server.serve`` right after the HTTP
listeners: the inference services on ``grpc_inference_address:grpc_inference_port`` and the
management service on ``grpc_management_address:grpc_management_port`` (port 0: any free port,
reported back), TLS when ``enable_grpc_ssl``. grpcio's C core speaks HTTP/2 (flow control,
keepalive, TCP_NODELAY); the calls' work runs in trio (bridge.py).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import trio

from trioserve import auth as token_auth
from trioserve.api.state import ServerState
from trioserve.config import Config
from trioserve.errors import ConfigError
from trioserve.grpc import inference, management, oip
from trioserve.grpc.auth import require_key
from trioserve.grpc.bridge import Bridge
from trioserve.grpc.loop import LoopThread
from trioserve.grpc.methods import generic_handlers

logger = logging.getLogger(__name__)

# Once the drain is over (bounded by the caller's deadline), what still runs is aborted; this
# bounds the wait for those calls to unwind.
CLOSE_GRACE_S = 5.0
# grpcio refuses inbound messages over its own limit with its own text; it is set this far over
# max_request_size, so that the bridge refuses the common oversized message with the text
# TorchServe's server gives, and no message far over the limit is buffered whole.
RECEIVE_SLACK = 1 << 20
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


def grpc_credentials(config: Config) -> grpc.ServerCredentials:
    """TLS for both gRPC servers from ``certificate_file`` / ``private_key_file`` (PEM), checked
    by loading them as Python's TLS would (grpcio only says "failed to bind" for a bad pair).

    Raises:
        ConfigError: the files are not set or cannot be loaded.
    """
    cert, key = config.certificate_file, config.private_key_file
    if not (cert and key):
        raise ConfigError(
            "enable_grpc_ssl=true needs private_key_file and certificate_file (PEM files)"
        )
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"enable_grpc_ssl: cannot load certificate_file={cert!r} with "
            f"private_key_file={key!r}: {exc}"
        ) from exc
    return grpc.ssl_server_credentials([pair])


def server_options(config: Config) -> list[tuple[str, int]]:
    receive_limit = min(config.max_request_size + RECEIVE_SLACK, 2**31 - 1)
    return [
        # A port already taken must fail to bind, not be shared with the other listener.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", receive_limit),
        ("grpc.max_send_message_length", -1),  # the bridge applies max_response_size
    ]


def address(host: str, port: int) -> str:
    """grpcio's ``host:port``, with an IPv6 literal in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


async def _start(
    handlers: Sequence[grpc.GenericRpcHandler],
    where: str,
    credentials: grpc.ServerCredentials | None,
    options: list[tuple[str, int]],
) -> tuple[grpc.aio.Server, int]:
    """A started server and its bound port (on the gRPC loop: grpcio binds its servers to the
    running loop).

    Raises:
        OSError: the address cannot be bound.
    """
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers(handlers)
    try:
        if credentials is None:
            port = server.add_insecure_port(where)
        else:
            port = server.add_secure_port(where, credentials)
    except RuntimeError as exc:  # grpcio's "Failed to bind to address ..."
        raise OSError(str(exc)) from None
    if not port:  # older grpcio reported a failed bind as port 0
        raise OSError(f"failed to bind to address {where}")
    await server.start()
    return server, port


async def _stop(servers: list[grpc.aio.Server]) -> None:
    """Stop every server now: listening ends, calls still running are aborted; returns when
    their handlers have ended."""
    await asyncio.gather(*(server.stop(None) for server in servers))


def _handlers(
    api: str, state: ServerState, bridge: Bridge, auth: token_auth.TokenAuth | None
) -> list[grpc.GenericRpcHandler]:
    kind = token_auth.INFERENCE if api == INFERENCE else token_auth.MANAGEMENT
    check = require_key(auth, kind) if auth is not None else None
    if api == MANAGEMENT:
        service = management.ManagementService(state, bridge)
        return generic_handlers(service, management.DESCRIPTOR, bridge, check=check)
    return [
        *generic_handlers(
            inference.InferenceService(state, bridge), inference.DESCRIPTOR, bridge, check=check
        ),
        *generic_handlers(
            oip.OpenInferenceService(state, bridge),
            oip.DESCRIPTOR,
            bridge,
            check=check,
            names=(oip.TORCHSERVE_NAME,),
        ),
    ]


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
    Resource handling: the drain refuses new calls and waits for those in flight for as long as
    the caller's cancel scope allows (``serve`` gives it the HTTP drain deadline); what still
    runs then is aborted, within CLOSE_GRACE_S; the gRPC thread ends before this returns.
    """
    config = state.config
    credentials = grpc_credentials(config) if config.enable_grpc_ssl else None
    options = server_options(config)
    running = GrpcRunning()
    started = False
    thread = LoopThread()
    thread.start()
    try:
        async with trio.open_nursery() as calls:
            bridge = Bridge(
                thread,
                calls,
                max_request_size=config.max_request_size,
                max_response_size=config.max_response_size,
            )
            servers: list[grpc.aio.Server] = []
            wanted = (
                (INFERENCE, config.grpc_inference_address, config.grpc_inference_port),
                (MANAGEMENT, config.grpc_management_address, config.grpc_management_port),
            )
            try:
                for api, host, port in wanted:
                    handlers = _handlers(api, state, bridge, auth)
                    try:
                        server, bound = await thread.run(
                            _start(handlers, address(host, port), credentials, options)
                        )
                    except OSError as exc:
                        logger.error(
                            "%s not served: cannot listen on %s:%d: %s", api, host, port, exc
                        )
                        continue
                    servers.append(server)
                    running.ports[api] = bound
                    logger.info("%s listening on %s:%d", api, host, bound)
                started = True
                task_status.started(running)
                await running.stop.wait()
                # New calls are refused UNAVAILABLE while those in flight finish (grpcio's own
                # stop would cancel newly arriving calls instead); then grpcio stops.
                await thread.run(bridge.drain())
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE_S):
                    await thread.run(_stop(servers))
                # Every handler has ended, so no trio side is awaited any more.
                calls.cancel_scope.cancel()
    except Exception:
        if not started:
            raise
        logger.exception("the gRPC servers failed; gRPC is no longer served")
    finally:
        with trio.CancelScope(shield=True):
            await thread.close()
