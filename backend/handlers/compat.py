"""Make TorchServe's ``ts`` module names resolve inside worker processes.

Handlers written for TorchServe import ``ts.torch_handler.base_handler``, ``ts.context``,
``ts.utils.util`` and friends. The worker calls :func:`install` at start: when no real ``ts``
is importable, a meta-path finder answers those names with trioserve's own modules, so
``ts.torch_handler.base_handler.BaseHandler`` *is* ``backend.handlers.base_handler.BaseHandler``
(one class, one module object, under two names). Nothing is written to site-packages and the
frontend never calls this: outside workers, ``import ts`` fails as it always did.

Only the names in ``ALIASES`` and the packages above them exist; any other ``ts.*`` name is a
plain ModuleNotFoundError naming it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

TS_VERSION = "0.12.0"

# ts module -> the module that serves it.
ALIASES: dict[str, str] = {
    "ts.context": "backend.context",
    "ts.torch_handler": "backend.handlers",
    "ts.utils.util": "backend.util",
    "ts.handler_utils.utils": "backend.handler_utils",
    "ts.handler_utils.timer": "backend.handler_utils",
    "ts.protocol.otf_message_handler": "backend.streaming",
    "ts.metrics.dimension": "backend.metric_types",
    "ts.metrics.metric_type_enum": "backend.metric_types",
    "ts.metrics.metric_cache_errors": "backend.metric_types",
}
# Every module under ts.torch_handler is the default handler of the same name.
PREFIXES: dict[str, str] = {"ts.torch_handler.": "backend.handlers."}
# Empty packages that only hold the aliases.
PACKAGES = frozenset({"ts", "ts.utils", "ts.handler_utils", "ts.protocol", "ts.metrics"})


# The loaders and the finder are plain classes with the methods importlib calls: deriving from
# importlib.abc's would import importlib.resources (tempfile, shutil, zipfile, ...: about 1 MiB)
# into every worker.


class _PackageLoader:
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default: an empty module, with ``__path__`` from the spec

    def exec_module(self, module: ModuleType) -> None:
        module.__doc__ = "trioserve's stand-in for TorchServe's ts package (worker only)."
        if module.__name__ == "ts":
            module.__dict__["__version__"] = TS_VERSION


class _AliasLoader:
    """Hands out the target module itself, leaving its own ``__spec__`` as it was."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._own_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias's spec on the shared module; put its own back
        # so reload() and tools reading __spec__ keep seeing the real name.
        if self._own_spec is not None:
            module.__spec__ = self._own_spec


class TsFinder:
    """Finds the ``ts`` names trioserve provides (a meta path finder)."""

    def invalidate_caches(self) -> None:
        """Nothing is cached (importlib.invalidate_caches calls this)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "ts" and not fullname.startswith("ts."):
            return None
        if fullname in PACKAGES:
            loader = cast("Loader", _PackageLoader())
            return importlib.machinery.ModuleSpec(fullname, loader, is_package=True)
        real = alias_target(fullname)
        if real is None:
            return None
        try:
            found = importlib.util.find_spec(real)
        except ModuleNotFoundError:  # a parent package of ``real`` does not exist
            return None
        if found is None:
            return None
        is_package = found.submodule_search_locations is not None
        alias = cast("Loader", _AliasLoader(real))
        return importlib.machinery.ModuleSpec(fullname, alias, is_package=is_package)


def alias_target(name: str) -> str | None:
    """The module that serves ``ts`` module ``name``, or None when it is not provided."""
    if name in ALIASES:
        return ALIASES[name]
    for prefix, replacement in PREFIXES.items():
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    return None


_FINDER = TsFinder()


def install() -> bool:
    """Provide the ``ts`` names in this process unless a real ``ts`` is importable.

    Returns whether trioserve's names are in place (True also when already installed).
    """
    if _FINDER in sys.meta_path:
        return True
    if importlib.util.find_spec("ts") is not None:
        return False
    sys.meta_path.insert(0, _FINDER)
    return True


def installed() -> bool:
    return _FINDER in sys.meta_path


def uninstall() -> None:
    """Remove the finder and forget the ``ts`` modules it provided (for tests)."""
    if _FINDER not in sys.meta_path:
        return
    sys.meta_path.remove(_FINDER)
    for name in [n for n in sys.modules if n == "ts" or n.startswith("ts.")]:
        del sys.modules[name]
