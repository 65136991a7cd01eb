"""The root nursery: HTTP listeners, the model registry, startup models, signals and drain."""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from trioserve.api.dispatch import make_admission, make_handler
from trioserve.api.register import RUNTIMES, RegisterParams, register
from trioserve.api.state import ServerState
from trioserve.auth import TokenAuth, start_token_auth
from trioserve.config import Address, Config
from trioserve.errors import ConfigError, ModelNotFound, ServeError
from trioserve.grpc.server import serve_grpc
from trioserve.http.connection import Admit, Handler, serve_connection
from trioserve.http.limits import ConnectionGate, Drain, Limits
from trioserve.http.routing import INFERENCE, MANAGEMENT, METRICS
from trioserve.metrics.registry import ServerMetrics
from trioserve.metrics.spec import load_spec
from trioserve.metrics.system import run_system_sampler
from trioserve.models import snapshot, store
from trioserve.models.gpu import visible_device_entries
from trioserve.models.registry import Registry

logger = logging.getLogger(__name__)

STARTED_MESSAGE = "Model server started."


@dataclass
class Running:
    """What ``serve`` reports once it is up: bound ports by API, and a way to stop it."""

    ports: dict[str, int] = field(default_factory=dict)
    state: ServerState | None = None
    shutdown: Callable[[], None] = lambda: None


def _listener_groups(config: Config) -> list[tuple[Address, frozenset[str]]]:
    """One listener per distinct address; APIs that share an address share its listener.

    Port 0 means "any free port", so two port-0 addresses are two listeners, never one.
    """
    wanted = [(config.inference_address, INFERENCE), (config.management_address, MANAGEMENT)]
    if config.enable_metrics_api:
        wanted.append((config.metrics_address, METRICS))
    groups: list[tuple[Address, set[str]]] = []
    for address, api in wanted:
        shared = next(
            (apis for addr, apis in groups if addr == address and address.port != 0), None
        )
        if shared is not None:
            shared.add(api)
        else:
            groups.append((address, {api}))
    return [(address, frozenset(apis)) for address, apis in groups]


def _ssl_context(config: Config) -> ssl.SSLContext:
    if not (config.private_key_file and config.certificate_file):
        raise ConfigError(
            "an https:// address needs private_key_file and certificate_file (PEM files)"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.certificate_file, config.private_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load certificate_file={config.certificate_file!r} with "
            f"private_key_file={config.private_key_file!r}: {exc}"
        ) from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


async def _open_listeners(
    address: Address, config: Config
) -> list[trio.abc.Listener[trio.abc.Stream]]:
    listeners: list[trio.abc.Listener[trio.abc.Stream]]
    if address.scheme == "unix":
        stale = trio.Path(address.path)
        if await stale.exists():
            await stale.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(address.path)
        sock.listen(socket.SOMAXCONN)
        listeners = [trio.SocketListener(sock)]
    else:
        host = address.host or None
        listeners = list(await trio.open_tcp_listeners(address.port, host=host))
    if address.tls:
        context = _ssl_context(config)
        return [trio.SSLListener(lst, context, https_compatible=True) for lst in listeners]
    return listeners


def _bound_port(listener: trio.abc.Listener[trio.abc.Stream]) -> int:
    inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    if isinstance(inner, trio.SocketListener) and inner.socket.family != socket.AF_UNIX:
        return int(inner.socket.getsockname()[1])
    return 0


def _remote(stream: trio.abc.Stream) -> str:
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(inner, trio.SocketStream):
        try:
            peer = inner.socket.getpeername()
        except OSError:
            return ""
        if isinstance(peer, tuple):
            return f"/{peer[0]}:{peer[1]}"
    return ""


def _on_connection(
    handler: Handler, limits: Limits, drain: Drain, admit: Admit, gate: ConnectionGate
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    async def on_connection(stream: trio.abc.Stream) -> None:
        await serve_connection(stream, handler, limits, _remote(stream), drain, admit, gate)

    return on_connection


async def _load_startup_models(state: ServerState) -> None:
    """Restore the models of a config snapshot when the configuration holds one, else load
    ``load_models``; then write the ``startup`` snapshot.

    Raises:
        ConfigError: a snapshot's model cannot be restored (the start fails; see
            :func:`_restore_models`). A ``load_models`` entry that fails is logged and skipped.
    """
    if state.config.model_snapshot is not None:
        await _restore_models(state, state.config.model_snapshot)
    else:
        await _load_models(state)
    await state.snapshot("startup")


async def _load_models(state: ServerState) -> None:
    config = state.config
    spec = (config.load_models or "").strip()
    if not spec or spec.lower() == "standalone":
        return
    if config.model_store is None:
        logger.error("load_models is set but there is no model_store; no model loaded")
        return
    entries: list[tuple[str | None, str]] = []
    if spec.lower() == "all":
        entries = [(None, path.name) for path in store.store_entries(config.model_store)]
    else:
        for item in spec.split(","):
            token = item.strip()
            if not token:
                continue
            name, sep, url = token.partition("=")
            entries.append((name.strip(), url.strip()) if sep else (None, token))
    for given_name, url in entries:
        params = RegisterParams(url=url, model_name=given_name, synchronous=False)
        try:
            model, _, _ = await register(state, params, at_startup=True)
        except ServeError as exc:
            logger.error("failed to load model %s at startup: %s", url, exc.message)
            continue
        state.startup_models.append(model.name)
        logger.info("loading model %s version %s from %s", model.name, model.version, url)


def _restore_source(mar_name: str, model_store: str, where: str) -> tuple[str, bool]:
    """The url to register a snapshot's ``marName`` from, and whether it is the model store's
    copy of a download (which a restore reuses rather than download again).

    Raises:
        ConfigError: a local archive is missing, naming ``where`` and the file looked for.
    """
    if store.is_remote(mar_name):
        parsed = urllib.parse.urlparse(mar_name)
        copy = os.path.basename(urllib.parse.unquote(parsed.path))  # where fetch put it
        return (copy, True) if copy and (Path(model_store) / copy).is_file() else (mar_name, False)
    try:
        store.resolve_local(mar_name, model_store)  # what register resolves it to, checked early
    except ModelNotFound:
        missing = mar_name if Path(mar_name).is_absolute() else str(Path(model_store) / mar_name)
        raise ConfigError(f"cannot restore {where}: archive not found: {missing}") from None
    return mar_name, False


async def _restore_models(state: ServerState, model_snapshot: dict[str, Any]) -> None:
    """Register every version a config snapshot records from ``model_store/{marName}`` with its
    saved workers, batching and timeouts, then its saved default version (contract §5.4).

    Every archive is checked before any worker starts, and any failure stops the start: a
    partial restore would write a startup snapshot without the missing models and so lose them
    for every later restart.

    Raises:
        ConfigError: naming the snapshot, the model, the version and the cause.
    """
    config = state.config
    source = f"config snapshot {config.config_file or '(model_snapshot)'}"
    plan = snapshot.restore_plan(model_snapshot, source)
    if not plan:
        logger.info("%s has no models", source)
        return
    if config.model_store is None:
        raise ConfigError(f"cannot restore {source}: there is no model_store")
    sources = {
        (name, version): _restore_source(
            saved.mar_name, config.model_store, f"model {name} version {version} from {source}"
        )
        for name, versions in plan.items()
        for version, saved in versions.items()
    }
    for name, versions in plan.items():
        for version, saved in versions.items():
            where = f"model {name} version {version} from {source}"
            url, reused_download = sources[(name, version)]
            runtime = saved.runtime_type if saved.runtime_type in RUNTIMES else None
            params = RegisterParams(
                url=url,
                model_name=name,
                runtime=runtime,
                batch_size=saved.batch_size,
                max_batch_delay=saved.max_batch_delay,
                initial_workers=saved.min_workers,
                response_timeout=saved.response_timeout,
                startup_timeout=saved.startup_timeout,
            )
            try:
                model, _, _ = await register(state, params)
            except ServeError as exc:
                raise ConfigError(f"cannot restore {where}: {exc.message}") from exc
            if model.version != version:
                raise ConfigError(
                    f"cannot restore {where}: {saved.mar_name} now holds version {model.version}"
                )
            if reused_download:
                model.url, model.downloaded = saved.mar_name, True
            low = model.settings.min_workers if saved.min_workers is None else saved.min_workers
            high = max(low, saved.max_workers if saved.max_workers is not None else low)
            if (model.settings.min_workers, model.settings.max_workers) != (low, high):
                model.scale(low, high)  # model-config.yaml workers win at register, not here
            logger.info("restored model %s version %s from %s", name, version, saved.mar_name)
        default = next((v for v, saved in versions.items() if saved.default), None)
        if default is not None:
            state.registry.set_default(name, default)
        state.startup_models.append(name)


async def _wait_for_signals(cancel: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("received %s: draining", signal.Signals(signum).name)
            cancel()
            return


async def serve(
    config: Config,
    *,
    handle_signals: bool = True,
    snapshot_dir: Path | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until SIGTERM/SIGINT (or ``Running.shutdown``), then drain and stop.

    Config snapshots are written into ``snapshot_dir`` (None: none are): after startup, after
    each management change and, after a clean drain, on the way out.

    Error handling: a listener that cannot bind raises (the start fails); a model that fails to
    load at startup is logged and skipped; a snapshot's model that cannot be restored raises
    ConfigError (the start fails).
    """
    metrics = _server_metrics(config)  # before anything else: a bad metrics_config stops here
    store.warn_if_permissive(config.allowed_urls)
    auth: TokenAuth | None = None
    if not config.disable_token_authorization:
        auth = start_token_auth(config.token_expiration_min, Path.cwd())
    extract_root = Path(tempfile.mkdtemp(prefix="trioserve-models-"))
    running = Running()
    listen_scope = trio.CancelScope()
    running.shutdown = listen_scope.cancel
    async with trio.open_nursery() as root:
        registry = Registry(root, config.initial_worker_port)
        registry.gpus(config.number_of_gpu)  # counts the GPUs and says once how many are used
        state = ServerState(
            config, registry, extract_root, snapshot_dir=snapshot_dir, metrics=metrics
        )
        metrics.watch(registry.all_versions)
        if not config.disable_system_metrics:
            root.start_soon(
                partial(
                    run_system_sampler,
                    metrics,
                    config.metric_time_interval,
                    visible_gpus=visible_device_entries(os.environ),
                    number_of_gpu=registry.gpus(config.number_of_gpu).number_of_gpu,
                )
            )
        running.state = state
        # Nothing is healthy or ready until the startup models are registered: the listeners
        # accept connections from the moment they are bound, before gRPC and the models.
        state.starting = True
        limits = Limits.from_config(config)
        drain = Drain()
        async with trio.open_nursery() as connections:
            with listen_scope:
                async with trio.open_nursery() as listeners_nursery:
                    for address, apis in _listener_groups(config):
                        handler = make_handler(state, apis, auth)
                        admit = make_admission(state, apis, auth)
                        gate = ConnectionGate(limits.max_connections)  # one per listener
                        listeners = await _open_listeners(address, config)
                        port = _bound_port(listeners[0]) if listeners else 0
                        for api in apis:
                            running.ports[api] = port
                        listeners_nursery.start_soon(
                            partial(
                                trio.serve_listeners,
                                _on_connection(handler, limits, drain, admit, gate),
                                listeners,
                                handler_nursery=connections,
                            )
                        )
                    # gRPC lives beside the connections: it drains with them, under their
                    # deadline, once the listeners are cancelled.
                    grpc = await connections.start(partial(serve_grpc, state, auth))
                    running.ports.update(grpc.ports)
                    listeners_nursery.start_soon(grpc.stop_when_cancelled)
                    if handle_signals:
                        listeners_nursery.start_soon(_wait_for_signals, listen_scope.cancel)
                    try:
                        await _load_startup_models(state)
                    finally:
                        state.starting = False
                    logger.info(STARTED_MESSAGE)
                    print(STARTED_MESSAGE, flush=True)
                    task_status.started(running)
            # Listeners are closed: idle connections close now, busy ones finish their request
            # within a bounded time.
            state.draining = True
            drain.begin()
            connections.cancel_scope.deadline = trio.current_time() + config.drain_timeout
            await _drain_models(state)
        # Every connection is done and every model still registered: what a restart restores.
        await state.snapshot("shutdown")
        root.cancel_scope.cancel()
    import shutil

    shutil.rmtree(extract_root, ignore_errors=True)
    if auth is not None:
        auth.remove()  # its keys die with this server


def _server_metrics(config: Config) -> ServerMetrics:
    """The server's metrics, from ``metrics_config`` (or the built-in YAML) and the mode.

    Raises:
        ConfigError: the metrics YAML cannot be read or is malformed.
    """
    return ServerMetrics(
        load_spec(config.metrics_config),
        mode=config.metrics_mode,
        auto_detect=config.model_metrics_auto_detect,
    )


async def _drain_models(state: ServerState) -> None:
    with trio.move_on_after(state.config.drain_timeout):
        for model in state.registry.all_versions():
            await model.drain()
