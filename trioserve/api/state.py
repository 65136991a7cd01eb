"""What the API functions share: the configuration, the model registry and config snapshots."""

from __future__ import annotations

import functools
import logging
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import trio

from trioserve.config import Config
from trioserve.metrics.registry import ServerMetrics
from trioserve.models.registry import Registry
from trioserve.models.snapshot import VersionState, write_snapshot
from trioserve.workflows.registry import WorkflowRegistry

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class ServerState:
    config: Config
    registry: Registry
    extract_root: Path
    hostname: str = field(default_factory=platform.node)
    startup_models: list[str] = field(default_factory=list)
    draining: bool = False  # set on SIGTERM/SIGINT: /ping answers 503 "Draining" from then on
    # Until the startup models are registered, nobody is healthy or ready: the listeners are up
    # already, and an empty registry would otherwise look healthy.
    starting: bool = False
    # Where config snapshots are written ({LOG_LOCATION|logs}/config); None: never (--ncs, and
    # in-process servers unless they ask).
    snapshot_dir: Path | None = None
    # The server's metrics (serve() makes it from the config; the default records for nobody).
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    workflows: WorkflowRegistry = field(default_factory=WorkflowRegistry)
    _snapshot_lock: trio.Lock = field(default_factory=trio.Lock, repr=False)
    _last_snapshot: dict[str, dict[str, VersionState]] | None = field(default=None, repr=False)

    def model_states(self) -> dict[str, dict[str, VersionState]]:
        """Every registered version as a snapshot records it; ``marName`` is the register url
        as given, which a restore registers again."""
        states: dict[str, dict[str, VersionState]] = {}
        # Workflows are not snapshotted (contract §2.7), so neither are their node models.
        owned = self.workflows.owned_models()
        for model in self.registry.all_versions():
            if model.name in owned:
                continue
            s = model.settings
            states.setdefault(model.name, {})[model.version] = VersionState(
                mar_name=model.url,
                default=self.registry.models[model.name].default == model.version,
                min_workers=s.min_workers,
                max_workers=s.max_workers,
                batch_size=s.batch_size,
                max_batch_delay=s.max_batch_delay,
                response_timeout=s.response_timeout,
                startup_timeout=s.startup_timeout,
                runtime_type=s.runtime,
            )
        return states

    async def snapshot(self, kind: str) -> None:
        """Write a ``kind`` config snapshot (contract §5.4) of the current models, unless
        snapshots are off. A ``snapshot`` that would record the same models as the last one
        written is skipped, so a management call that changed nothing leaves no file.

        Error handling: a write that fails is logged and the server carries on; the change it
        records has happened, and the next snapshot records it too.
        Resource handling: shielded (a short write that must finish even when the request that
        caused it is cancelled) and serialised, so files appear in the order of the changes.
        """
        directory = self.snapshot_dir
        if directory is None:
            return
        with trio.CancelScope(shield=True):
            async with self._snapshot_lock:
                models = self.model_states()
                if kind == "snapshot" and models == self._last_snapshot:
                    return
                created_ms = time.time_ns() // 1_000_000
                try:
                    path = await trio.to_thread.run_sync(
                        write_snapshot, directory, kind, created_ms, self.config, models
                    )
                except OSError as exc:
                    logger.error("could not write a config snapshot in %s: %s", directory, exc)
                    return
                self._last_snapshot = models
                logger.info("config snapshot written: %s", path)


def snapshot_after(
    route: Callable[Concatenate[ServerState, P], Awaitable[R]],
) -> Callable[Concatenate[ServerState, P], Awaitable[R]]:
    """Decorate a management route that changes models: a snapshot follows it, whether it
    answers or raises (a 500 after a scale, or a 408 after an unregister, still changed the
    registry), and :meth:`ServerState.snapshot` skips it when nothing changed."""

    @functools.wraps(route)
    async def with_snapshot(state: ServerState, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await route(state, *args, **kwargs)
        finally:
            await state.snapshot("snapshot")

    return with_snapshot
