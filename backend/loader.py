"""Finds a handler's entry point from its handler string (contract §7.1)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from backend.context import Context

DEFAULT_HANDLER_PACKAGE = "backend.handlers"
Entry = Callable[[list[dict[str, Any]] | None, Context], Any]


@dataclass
class LoadedHandler:
    entry: Entry
    service: Any  # the handler instance for class entries, None for function entries


def _split(handler: str) -> tuple[str, str | None]:
    module, _, function = handler.partition(":")
    module = os.path.basename(module)
    if module.endswith(".py"):
        module = module[:-3]
    return module, function or None


def _import(module_name: str, model_dir: str) -> ModuleType:
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)
    local = os.path.join(model_dir, module_name + ".py")
    if os.path.exists(local) or os.path.isdir(os.path.join(model_dir, module_name)):
        return importlib.import_module(module_name)
    default = f"{DEFAULT_HANDLER_PACKAGE}.{module_name}"
    try:
        return importlib.import_module(default)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != default and not default.startswith(missing + "."):
            raise  # a default handler is there but misses a package of its own: say which
        return importlib.import_module(module_name)


def load_handler(handler: str, model_dir: str, context: Context) -> LoadedHandler:
    """Import the handler module and initialise its entry point.

    Raises:
        ValueError: the module has neither the named function nor exactly one handler class.
        Anything the handler's own initialisation raises.
    """
    if not handler:
        raise ValueError("no handler given in the manifest or the registration")
    module_name, function_name = _split(handler)
    module = _import(module_name, model_dir)
    function = getattr(module, function_name or "handle", None)
    if function is not None and inspect.isfunction(function):
        function(None, context)
        return LoadedHandler(function, None)
    if function_name:
        raise ValueError(f"module {module_name} has no function {function_name}")
    # dict.fromkeys: a class bound to two names (an alias) is still one class.
    classes = list(
        dict.fromkeys(
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__ == module.__name__
        )
    )
    if len(classes) != 1:
        raise ValueError(
            f"expected exactly one handler class in module {module_name}, found {len(classes)}"
        )
    service: Any = classes[0]()
    initialize = getattr(service, "initialize", None)
    if initialize is not None:
        initialize(context)
    return LoadedHandler(service.handle, service)
