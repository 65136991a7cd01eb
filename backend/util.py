"""Helpers handler code imports; inside workers also reachable as ``ts.utils.util``
(contract §7.4, §7.6)."""

from __future__ import annotations

import enum
import inspect
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from functools import wraps
from types import ModuleType
from typing import Any, TypeVar
from warnings import warn

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class PredictionException(Exception):
    """Raised by a handler to fail its whole batch with a chosen status code and message."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code

    def __str__(self) -> str:
        return f"message : error_code => {self.message} : {self.error_code}"


class PT2Backend(enum.StrEnum):
    """The ``torch.compile`` backends a model-config.yaml ``pt2`` section may name."""

    EAGER = "eager"
    AOT_EAGER = "aot_eager"
    INDUCTOR = "inductor"
    NVFUSER = "nvfuser"
    AOT_NVFUSER = "aot_nvfuser"
    AOT_CUDAGRAPHS = "aot_cudagraphs"
    OFI = "ofi"
    FX2TRT = "fx2trt"
    ONNXRT = "onnxrt"
    IPEX = "ipex"
    TORCHXLA_TRACE_ONCE = "torchxla_trace_once"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"


def check_valid_pt2_backend(backend: str) -> bool:
    if backend in {member.value for member in PT2Backend}:
        return True
    logger.warning("%s is not a supported backend", backend)
    return False


def list_classes_from_module(module: ModuleType, parent_class: type | None = None) -> list[type]:
    """The classes ``module`` itself defines (not those it imports), optionally only the
    subclasses of ``parent_class``."""
    classes = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
    ]
    if parent_class is not None:
        return [c for c in classes if issubclass(c, parent_class)]
    return classes


def load_label_mapping(mapping_file_path: str) -> dict[str, str] | None:
    """``index_to_name.json`` as ``{class index: label}``; None when the file is absent.

    Accepts ``{"0": "cat"}``, ``{"0": ["n02123045", "cat"]}`` (the last element is the label)
    and the older ``{"object_type_names": ["cat", ...]}``.

    Raises:
        ValueError: the file is not one of those shapes.
    """
    if not os.path.isfile(mapping_file_path):
        logger.info("%r is missing: outputs name class indices, not labels", mapping_file_path)
        return None
    with open(mapping_file_path, encoding="utf-8") as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict):
        raise ValueError('index->name JSON mapping should be in "class": "label" format.')
    names = mapping.get("object_type_names")
    if isinstance(names, list):
        return {str(k): str(v) for k, v in enumerate(names)}
    out: dict[str, str] = {}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) and value else value
        if not isinstance(label, str):
            raise ValueError("labels in index->name mapping must be either str or List[str]")
        out[str(key)] = label
    return out


def map_class_to_label(
    probs: list[list[Any]],
    mapping: Mapping[str, str] | None = None,
    lbl_classes: Iterable[Iterable[Any]] | None = None,
) -> list[dict[str, Any]]:
    """One ``{label: probability}`` dict per row of ``probs``; classes default to the column
    indices, labels to the class index as a string when there is no mapping."""
    if not isinstance(probs, list):
        raise TypeError("Convert classes to list before doing mapping")
    if mapping is not None and not isinstance(mapping, Mapping):
        raise TypeError("Mapping must be a dict")
    if lbl_classes is None:
        width = len(probs[0]) if probs else 0
        lbl_classes = itertools.repeat(range(width), len(probs))
    return [
        {
            (mapping[str(cls)] if mapping is not None else str(cls)): prob
            for cls, prob in zip(classes, row, strict=False)
        }
        for classes, row in zip(lbl_classes, probs, strict=False)
    ]


def get_yaml_config(yaml_file_path: str) -> Any:
    import yaml

    with open(yaml_file_path, encoding="utf-8") as file:
        return yaml.safe_load(file)


def deprecated(
    version: str, replacement: str = "", klass: type[Warning] = PendingDeprecationWarning
) -> Callable[[F], F]:
    """Mark a function deprecated: each call warns with ``klass``."""

    def deprecator(func: F) -> F:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            warn(
                f"{func.__name__} is deprecated in {version} and moved to {replacement}",
                klass,
                stacklevel=2,
            )
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deprecator
