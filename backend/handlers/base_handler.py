"""``BaseHandler``: the default initialize / preprocess / inference / postprocess pipeline."""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import time
from typing import Any

import torch

from backend.context import Context

logger = logging.getLogger(__name__)


def _load_module_file(path: str) -> Any:
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import model file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _single_module_class(module: Any) -> type[torch.nn.Module]:
    classes = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, torch.nn.Module) and obj.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise ValueError(f"expected one nn.Module class in the model file, found {len(classes)}")
    return classes[0]


class BaseHandler:
    """Loads the archive's model and runs tensors through it.

    ``serializedFile`` with ``modelFile`` builds the eager model and loads its state dict;
    ``serializedFile`` alone is TorchScript; ``modelFile`` alone builds the model with its own
    initial weights (useful for examples and tests that ship no binaries).
    """

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: Any = None
        self.device: torch.device | None = None
        self.initialized = False
        self.context: Context | None = None
        self.manifest: dict[str, Any] | None = None
        self.explain = False

    def initialize(self, context: Context) -> None:
        self.context = context
        self.manifest = context.manifest
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")
        model_dir = properties["model_dir"]
        model_info = (self.manifest or {}).get("model", {})
        serialized = model_info.get("serializedFile")
        model_file = model_info.get("modelFile")
        weights = os.path.join(model_dir, serialized) if serialized else None
        if model_file:
            model_class = _single_module_class(
                _load_module_file(os.path.join(model_dir, model_file))
            )
            self.model = model_class()
            if weights:
                state = torch.load(weights, map_location=self.device, weights_only=True)
                self.model.load_state_dict(state)
        elif weights:
            self.model = torch.jit.load(  # type: ignore[no-untyped-call]
                weights, map_location=self.device
            )
        else:
            raise RuntimeError("the manifest names neither a serializedFile nor a modelFile")
        self.model.to(self.device)
        self.model.eval()
        mapping_file = os.path.join(model_dir, "index_to_name.json")
        if os.path.isfile(mapping_file):
            with open(mapping_file, encoding="utf-8") as f:
                self.mapping = json.load(f)
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        """Stack each request's ``data`` (or ``body``) value into one batch tensor.

        Values may be decoded JSON (lists of numbers) or raw bytes holding JSON.
        """
        rows = []
        for row in data:
            value = row.get("data", row.get("body")) if isinstance(row, dict) else row
            if isinstance(value, bytes | bytearray):
                value = json.loads(value)
            rows.append(torch.as_tensor(value, dtype=torch.float32))
        return torch.stack(rows).to(self.device)

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    def postprocess(self, data: Any) -> list[Any]:
        return data.tolist()  # type: ignore[no-any-return]

    def describe_handle(self) -> Any:
        return None

    def explain_handle(self, data_preprocess: Any, raw_data: list[dict[str, Any]]) -> Any:
        raise NotImplementedError("this handler does not implement explanations")

    def _is_explain(self) -> bool:
        if self.context and self.context.get_request_header(0, "explain"):
            if self.context.get_request_header(0, "explain") == "True":
                self.explain = True
                return True
        return False

    def _is_describe(self) -> bool:
        if self.context and self.context.get_request_header(0, "describe"):
            if self.context.get_request_header(0, "describe") == "True":
                return True
        return False

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        start = time.perf_counter()
        self.context = context
        if self._is_describe():
            return [self.describe_handle()]
        data_preprocess = self.preprocess(data)
        if self._is_explain():
            output = self.explain_handle(data_preprocess, data)
        else:
            output = self.postprocess(self.inference(data_preprocess))
        elapsed_ms = (time.perf_counter() - start) * 1000
        context.metrics.add_time("HandlerTime", round(elapsed_ms, 2), None, "ms")
        return output  # type: ignore[no-any-return]
