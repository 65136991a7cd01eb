"""Handler helpers TorchServe keeps in ``ts.handler_utils`` (``utils`` and ``timer``); inside
workers these names are reachable under those module names."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from backend.streaming import (
    send_intermediate_predict_response as send_intermediate_predict_response,
)

F = TypeVar("F", bound=Callable[..., Any])


def import_class(class_name: str, module_prefix: str | None = None) -> Any:
    """The class named ``module.Class`` (or ``Class`` under ``module_prefix``).

    Raises:
        ImportError: no module given, or the module has no such class.
    """
    if not class_name:
        raise ImportError("class name is not defined")
    module_name, _, name = class_name.rpartition(".")
    if module_prefix:
        target = f"{module_prefix}.{module_name}" if module_name else module_prefix
    elif module_name:
        target = module_name
    else:
        raise ImportError("module name is not defined.")
    found = getattr(importlib.import_module(target), name, None)
    if found is None:
        raise ImportError(f"class:{name} not found in module:{module_name}.")
    return found


def _profiling(handler: Any) -> bool:
    context = getattr(handler, "context", None)
    config = getattr(context, "model_yaml_config", None) or {}
    section = config.get("handler") if isinstance(config, dict) else None
    return isinstance(section, dict) and bool(section.get("profile"))


def timed(func: F) -> F:
    """Time a handler method as ``ts_handler_<name>`` (ms) when model-config.yaml says
    ``handler: {profile: true}``; otherwise just call it."""

    @wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _profiling(self):
            return func(self, *args, **kwargs)
        start = time.perf_counter()
        result = func(self, *args, **kwargs)
        elapsed_ms = (time.perf_counter() - start) * 1000
        self.context.metrics.add_time("ts_handler_" + func.__name__, elapsed_ms)
        return result

    return wrapper  # type: ignore[return-value]
