"""Tiny random-weight models for the default handlers and TorchServe-style (``ts``) handlers,
written as real archives, plus the numbers a test expects back from them.

Each model's source is a string: it goes into the archive as ``model.py`` and is executed
here too, so expectations come from the very class the worker builds.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import textwrap
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from tests.support.models import EAGER_MODEL, TinyNet, manifest, write_archive

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Global average pooling, then a linear layer: the output depends on each channel's mean only,
# so it can be predicted exactly for any input size and for uniform images after any resize.
CLASSIFIER_MODEL = """
import torch
from torch import nn


class PooledClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))
"""

# Per 32x32 patch, 4 class scores: 224x224 in, 7x7 out; torchvision's {"out": ...} shape.
SEGMENTER_MODEL = """
import torch
from torch import nn


class PatchSegmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=32, stride=32)

    def forward(self, x):
        return {"out": self.conv(x)}
"""

# Three fixed boxes per image; their scores come from the image's channel means.
DETECTOR_MODEL = """
import torch
from torch import nn


class FixedBoxes(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("boxes", torch.tensor(
            [[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 30.0], [1.0, 2.0, 3.0, 4.0]]))
        self.register_buffer("labels", torch.tensor([1, 2, 0]))
        self.score = nn.Linear(3, 3)

    def forward(self, images):
        out = []
        for image in images:
            scores = torch.sigmoid(self.score(image.mean(dim=(1, 2))))
            out.append({"boxes": self.boxes, "labels": self.labels, "scores": scores})
        return out
"""

# Token embeddings averaged per bag (offsets), then a linear layer: model(ids, offsets).
TEXT_MODEL = """
import torch
from torch import nn


class BagOfWords(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(8, 6)
        self.fc = nn.Linear(6, 2)

    def forward(self, text, offsets):
        emb = self.embedding(text)
        marks = torch.zeros(len(text), dtype=torch.long)
        marks[offsets[1:]] = 1
        bags = marks.cumsum(0)
        pooled = torch.zeros(len(offsets), emb.shape[1]).index_add_(0, bags, emb)
        counts = torch.bincount(bags, minlength=len(offsets)).clamp(min=1).unsqueeze(1)
        return self.fc(pooled / counts)
"""

TEXT_VOCAB = {
    "<unk>": 0,
    "good": 1,
    "movie": 2,
    "bad": 3,
    "good movie": 4,
    "bad movie": 5,
    "not": 6,
    "not good": 7,
}
CLASS_LABELS = {str(i): f"class_{i}" for i in range(10)}
DETECTOR_LABELS = {"object_type_names": ["cat", "dog", "bird"]}
TEXT_LABELS = {"0": "negative", "1": ["n0001", "positive"]}


def build(source: str, seed: int = 0) -> nn.Module:
    """The one nn.Module class ``source`` defines, built with weights from ``seed``."""
    namespace: dict[str, Any] = {"__name__": "model_under_test"}
    exec(compile(textwrap.dedent(source), "<model>", "exec"), namespace)
    (model_class,) = (
        v
        for v in namespace.values()
        if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == "model_under_test"
    )
    torch.manual_seed(seed)
    model: nn.Module = model_class()
    return model.eval()


def state_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def eager_files(
    handler: str, source: str, model: nn.Module, name: str, **extra: bytes | str
) -> dict[str, bytes | str]:
    """Archive contents: model.py + weights.pt + extras, served by ``handler``."""
    files: dict[str, bytes | str] = {
        "model.py": textwrap.dedent(source),
        "weights.pt": state_bytes(model),
        **extra,
    }
    files["MAR-INF/MANIFEST.json"] = manifest(
        name, handler, serializedFile="weights.pt", modelFile="model.py"
    )
    return files


def default_handler_archive(
    store: Path,
    name: str,
    handler: str,
    source: str,
    model: nn.Module,
    **extra: bytes | str,
) -> Path:
    return write_archive(store, f"{name}.mar", eager_files(handler, source, model, name, **extra))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def solid_png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    return png(Image.new("RGB", size, color))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def normalized(color: tuple[int, int, int]) -> torch.Tensor:
    """A uniform color after ToTensor and ImageNet normalisation, per channel."""
    return torch.tensor(
        [(c / 255 - m) / s for c, m, s in zip(color, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    )


def top5(logits: torch.Tensor, labels: dict[str, str] | None = None) -> dict[str, float]:
    probs = torch.softmax(logits, dim=-1)
    values, indices = torch.topk(probs, 5)
    return {
        (labels[str(int(i))] if labels else str(int(i))): float(v)
        for v, i in zip(values, indices, strict=True)
    }


def ngram_tokens(words: list[str]) -> list[str]:
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def text_ids(tokens: list[str]) -> torch.Tensor:
    return torch.tensor([TEXT_VOCAB.get(t, 0) for t in tokens])


def vocab_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(TEXT_VOCAB), buffer)
    return buffer.getvalue()


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- TorchServe-style handlers -------------------------------------------------------------------

# A class handler written against TorchServe's modules only: subclasses ts BaseHandler, loads
# the eager TinyNet through it, and uses the util, metrics and Context names.
TS_CLASS_HANDLER = """
from ts.context import Context
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException, list_classes_from_module, map_class_to_label


class TsStyleHandler(BaseHandler):
    def initialize(self, context):
        super().initialize(context)
        self.context_class = type(context).__name__
        self.is_ts_context = isinstance(context, Context)

    def preprocess(self, data):
        body = data[0].get("body")
        if isinstance(body, (bytes, bytearray)) and bytes(body) == b"fail":
            raise PredictionException("the ts handler refused this input", 418)
        return super().preprocess(data)

    def postprocess(self, data):
        out = map_class_to_label(data.tolist(), self.mapping)
        self.context.metrics.add_metric(
            "TsStyleCalls", 1, "count", None, [Dimension("Handler", "ts")], MetricTypes.COUNTER
        )
        for idx in range(len(out)):
            self.context.set_response_header(idx, "x-ts-handler", "yes")
            self.context.set_response_status(201, "Made by ts", idx)
        return out

    def describe_handle(self):
        import sys
        return {
            "handler": type(self).__name__,
            "base": BaseHandler.__module__,
            "context": self.context_class,
            "is_ts_context": self.is_ts_context,
            "classes": [c.__name__ for c in list_classes_from_module(sys.modules[__name__])],
            "model_dir_set": bool(self.context.system_properties.get("model_dir")),
        }
"""

# Streams through both of TorchServe's import paths for the function, then returns the rest.
TS_STREAMING_HANDLER = """
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.protocol.otf_message_handler import send_intermediate_predict_response as deprecated_send


def handle(data, context):
    if data is None:
        return None
    send_intermediate_predict_response(
        ["hello "] * len(data), context.request_ids, "Intermediate Prediction success", 200,
        context,
    )
    deprecated_send(
        ["ts "] * len(data), context.request_ids, "Intermediate Prediction success", 200, context
    )
    return ["world"] * len(data)
"""


def ts_class_archive(store: Path, name: str = "tsstyle", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = TinyNet()
    return write_archive(
        store,
        f"{name}.mar",
        {
            "handler.py": textwrap.dedent(TS_CLASS_HANDLER),
            **{k: v for k, v in eager_files("handler.py", EAGER_MODEL, model, name).items()},
            "index_to_name.json": json.dumps({"0": "low", "1": "mid", "2": "high"}),
        },
    )
