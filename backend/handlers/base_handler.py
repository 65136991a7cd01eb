"""``BaseHandler``: the default initialize / preprocess / inference / postprocess pipeline
(contract §7.6); inside workers also ``ts.torch_handler.base_handler.BaseHandler``."""

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
from backend.util import PredictionException, check_valid_pt2_backend, load_label_mapping

logger = logging.getLogger(__name__)

# Where ENABLE_TORCH_PROFILER traces go unless the handler sets profiler_args itself.
PROFILER_TRACE_DIR = "/tmp/pytorch_profiler"


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


def pick_device(gpu_id: int | None) -> torch.device:
    """``cuda:{gpu_id}`` when CUDA is there and the worker has a GPU, else xpu or mps (with a
    GPU id), else the CPU."""
    if gpu_id is not None:
        if torch.cuda.is_available():
            return torch.device(f"cuda:{gpu_id}")
        xpu = getattr(torch, "xpu", None)
        if xpu is not None and xpu.is_available():
            return torch.device(f"xpu:{gpu_id}")
        if torch.backends.mps.is_available():
            return torch.device("mps")
    return torch.device("cpu")


def _target(value: Any) -> int:
    """The ``target`` input of an explanation request as a class index (default 0)."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    try:
        return int(str(value).strip()) if value not in (None, "") else 0
    except ValueError:
        raise PredictionException(f"target must be a class index, got {value!r}", 400) from None


class BaseHandler:
    """Loads the archive's model and runs tensors through it.

    ``serializedFile`` with ``modelFile`` builds the eager model and loads its state dict;
    ``serializedFile`` alone is TorchScript (or ONNX, for a ``.onnx`` file, when onnxruntime
    is installed); ``modelFile`` alone builds the model with its own initial weights (useful
    for examples and tests that ship no binaries).
    """

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: Any = None
        self.device: torch.device | None = None
        self.initialized = False
        self.context: Context | None = None
        self.manifest: dict[str, Any] | None = None
        self.model_pt_path: str | None = None
        self.model_yaml_config: dict[str, Any] = {}
        self.map_location: str | None = None
        self.explain = False
        self.target = 0
        self.profiler_args: dict[str, Any] = {}

    # -- loading ----------------------------------------------------------------------------
    def initialize(self, context: Context) -> None:
        self.context = context
        self.manifest = context.manifest
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        properties = context.system_properties
        self.device = pick_device(properties.get("gpu_id"))
        self.map_location = self.device.type
        model_dir = properties["model_dir"]
        model_info = (self.manifest or {}).get("model", {})
        serialized = model_info.get("serializedFile")
        model_file = model_info.get("modelFile")
        self.model_pt_path = os.path.join(model_dir, serialized) if serialized else None
        if model_file:
            self.model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
        elif self.model_pt_path and self.model_pt_path.endswith(".onnx"):
            self.model = self._load_onnx_model(self.model_pt_path)
        elif self.model_pt_path:
            self.model = self._load_torchscript_model(self.model_pt_path)
        else:
            raise RuntimeError("the manifest names neither a serializedFile nor a modelFile")
        if isinstance(self.model, torch.nn.Module):
            self.model.to(self.device)
            self.model.eval()
            self._maybe_compile()
        self.mapping = load_label_mapping(os.path.join(model_dir, "index_to_name.json"))
        self.initialized = True

    def _load_pickled_model(
        self, model_dir: str, model_file: str, model_pt_path: str | None
    ) -> torch.nn.Module:
        path = os.path.join(model_dir, model_file)
        if not os.path.isfile(path):
            raise RuntimeError(f"Missing the model file {model_file}")
        model = _single_module_class(_load_module_file(path))()
        if model_pt_path:
            state = torch.load(model_pt_path, map_location=self.device, weights_only=True)
            model.load_state_dict(state)
        return model

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        return torch.jit.load(model_pt_path, map_location=self.device)  # type: ignore[no-untyped-call]

    def _load_onnx_model(self, model_pt_path: str) -> Any:
        try:
            import onnxruntime  # type: ignore[import-not-found]
        except ImportError:
            raise RuntimeError(
                f"{os.path.basename(model_pt_path)} is an ONNX model: install onnxruntime"
            ) from None
        providers = ["CPUExecutionProvider"]
        if self.device is not None and self.device.type == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        return onnxruntime.InferenceSession(model_pt_path, providers=providers)

    def _maybe_compile(self) -> None:
        """``pt2`` in model-config.yaml: a backend name or ``torch.compile`` options."""
        options = self.model_yaml_config.get("pt2")
        if options is None:
            return
        if isinstance(options, str):
            options = {"backend": options}
        if not isinstance(options, dict):
            raise ValueError("pt2 should be str or dict")
        if "backend" in options and not check_valid_pt2_backend(options["backend"]):
            return
        try:
            self.model = torch.compile(self.model, **options)
        except Exception:
            logger.warning("torch.compile(%s) failed; serving uncompiled", options, exc_info=True)

    # -- the pipeline -------------------------------------------------------------------------
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
        if not isinstance(self.model, torch.nn.Module) and hasattr(self.model, "get_inputs"):
            feed = {self.model.get_inputs()[0].name: data.detach().cpu().numpy()}
            return torch.as_tensor(self.model.run(None, feed)[0])
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    def postprocess(self, data: Any) -> list[Any]:
        return data.tolist()  # type: ignore[no-any-return]

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        """Describe, explain or predict one batch; records ``HandlerTime``."""
        start = time.perf_counter()
        self.context = context
        if os.environ.get("ENABLE_TORCH_PROFILER"):
            output = self._infer_with_profiler(data)
        elif self._is_describe():
            output = [self.describe_handle()]
        else:
            data_preprocess = self.preprocess(data)
            if self._is_explain():
                output = self.explain_handle(data_preprocess, data)
            else:
                output = self.postprocess(self.inference(data_preprocess))
        elapsed_ms = (time.perf_counter() - start) * 1000
        context.metrics.add_time("HandlerTime", round(elapsed_ms, 2), None, "ms")
        return output  # type: ignore[no-any-return]

    def _infer_with_profiler(self, data: list[dict[str, Any]]) -> Any:
        """The pipeline under ``torch.profiler``; the trace goes to
        ``PROFILER_TRACE_DIR/<model name>`` unless ``profiler_args`` says otherwise."""
        from torch.profiler import ProfilerActivity, profile, record_function

        if not self.profiler_args:
            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(ProfilerActivity.CUDA)
            self.profiler_args = {"activities": activities, "record_shapes": True}
        if "on_trace_ready" not in self.profiler_args:
            name = ((self.manifest or {}).get("model") or {}).get("modelName", "")
            self.profiler_args["on_trace_ready"] = torch.profiler.tensorboard_trace_handler(
                os.path.join(PROFILER_TRACE_DIR, name)
            )
        with profile(**self.profiler_args) as prof:
            with record_function("preprocess"):
                data_preprocess = self.preprocess(data)
            if self._is_explain():
                with record_function("explain"):
                    output = self.explain_handle(data_preprocess, data)
            else:
                with record_function("inference"):
                    output = self.inference(data_preprocess)
                with record_function("postprocess"):
                    output = self.postprocess(output)
        logger.info(prof.key_averages().table(sort_by="cpu_time_total", row_limit=10))
        return output

    # -- describe and explain -----------------------------------------------------------------
    def describe_handle(self) -> Any:
        """What ``GET /models/{m}?customized=true`` shows as ``customizedMetadata``."""
        return None

    def explain_handle(self, data_preprocess: Any, raw_data: list[dict[str, Any]]) -> Any:
        """Explain the first request: its ``data``/``body`` and ``target`` (default 0) go to
        :meth:`get_insights` with the preprocessed batch."""
        inputs: Any = None
        target = 0
        row = raw_data[0] if raw_data else None
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = _target(row.get("target"))
        self.target = target
        return self.get_insights(data_preprocess, inputs, target)

    def get_insights(self, tensor_data: Any, raw_data: Any, target: int = 0) -> Any:
        raise PredictionException(
            f"{type(self).__name__} does not support explanations: it has no get_insights", 503
        )

    def _is_explain(self) -> bool:
        if self.context and self.context.get_request_header(0, "explain") == "True":
            self.explain = True
            return True
        return False

    def _is_describe(self) -> bool:
        return bool(self.context and self.context.get_request_header(0, "describe") == "True")
