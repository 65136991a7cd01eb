"""Model names, their versions and default versions; the nursery every version runs in."""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field

import trio

from trioserve.errors import Conflict, InvalidModelVersion, ModelNotFound, ModelVersionNotFound
from trioserve.models.gpu import GpuAssigner, count_visible_gpus, gpus_to_use, log_gpus
from trioserve.models.model import ModelVersion

logger = logging.getLogger(__name__)


def _version_key(version: str) -> tuple[tuple[int, object], ...]:
    """Order versions numerically where they are numbers ("1.10" after "1.9")."""
    parts: list[tuple[int, object]] = []
    for piece in version.replace("-", ".").split("."):
        parts.append((0, int(piece)) if piece.isdigit() else (1, piece))
    return tuple(parts)


@dataclass
class ModelEntry:
    name: str
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    default: str = ""

    def sorted_versions(self) -> list[ModelVersion]:
        return [self.versions[v] for v in sorted(self.versions, key=_version_key)]


class Registry:
    def __init__(self, nursery: trio.Nursery, initial_worker_port: int = 9000) -> None:
        self._nursery = nursery
        self.models: dict[str, ModelEntry] = {}
        self._ids = itertools.count(initial_worker_port)
        # (name, version) pairs whose add() is starting their nursery: taken, though not yet
        # reachable, so a concurrent register of the same pair is refused instead of
        # overwriting (and leaking) this one.
        self._adding: set[tuple[str, str]] = set()
        self._gpus: GpuAssigner | None = None

    def gpus(self, number_of_gpu: int | None) -> GpuAssigner:
        """The server-wide GPU assigner (contract §8.4), shared by every model. Made on the first
        call, which counts the visible GPUs and logs how many are used; later calls return it
        (``number_of_gpu`` is the server's config value, the same on every call)."""
        if self._gpus is None:
            visible = count_visible_gpus(os.environ)
            used = gpus_to_use(number_of_gpu, visible)
            log_gpus(used, visible)
            self._gpus = GpuAssigner(used)
        return self._gpus

    def next_worker_id(self) -> int:
        # Worker ids are never reused, so logs and metrics keep naming one worker.
        return next(self._ids)

    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFound(f"Model not found: {name}")
        key = version if version else entry.default
        found = entry.versions.get(key)
        if found is None:
            raise ModelVersionNotFound(f"Model version: {version} does not exist for model: {name}")
        return found

    def check_free(self, name: str, version: str) -> None:
        entry = self.models.get(name)
        taken = entry is not None and version in entry.versions
        if taken or (name, version) in self._adding:
            raise Conflict(f"Model version {version} is already registered for model {name}")

    async def add(self, model: ModelVersion) -> None:
        """Start the version's nursery and make it reachable; the first version becomes default."""
        self.check_free(model.name, model.version)
        key = (model.name, model.version)
        self._adding.add(key)
        try:
            await self._nursery.start(model.run)
        finally:
            self._adding.discard(key)
        entry = self.models.setdefault(model.name, ModelEntry(model.name))
        entry.versions[model.version] = model
        if not entry.default:
            entry.default = model.version

    def remove(self, name: str, version: str | None) -> ModelVersion:
        """Make a version unreachable (the caller drains and stops it)."""
        model = self.resolve(name, version)
        entry = self.models[name]
        if model.version == entry.default and len(entry.versions) > 1:
            raise InvalidModelVersion(f"Cannot remove default version for model {name}")
        del entry.versions[model.version]
        if not entry.versions:
            del self.models[name]
        return model

    def discard(self, model: ModelVersion) -> None:
        """Make ``model`` unreachable if it still is, without :meth:`remove`'s default rule: a
        registration that failed goes even when it is the default. The earliest registered of
        the remaining versions becomes the default then."""
        entry = self.models.get(model.name)
        if entry is None or entry.versions.get(model.version) is not model:
            return
        del entry.versions[model.version]
        if not entry.versions:
            del self.models[model.name]
        elif entry.default == model.version:
            entry.default = next(iter(entry.versions))

    def set_default(self, name: str, version: str) -> None:
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFound(f"Model not found: {name}")
        if version not in entry.versions:
            raise ModelVersionNotFound(f"Model version {version} does not exist for model {name}")
        entry.default = version

    def defaults(self) -> list[ModelVersion]:
        """The default version of every model, sorted by name."""
        return [self.models[n].versions[self.models[n].default] for n in sorted(self.models)]

    def all_versions(self) -> list[ModelVersion]:
        return [v for n in sorted(self.models) for v in self.models[n].sorted_versions()]
