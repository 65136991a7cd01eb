"""Builds real model archives for tests: handlers as source, torch models with random weights."""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

ECHO_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    out = []
    for row in data:
        value = row.get("data", row.get("body"))
        out.append(bytes(value) if isinstance(value, bytearray) else value)
    return out
"""

# Reports what the handler received: types, batch size, headers.
INSPECT_HANDLER = """
import json, os, time

def handle(data, context):
    if data is None:
        return None
    out = []
    for idx, row in enumerate(data):
        delay = context.get_request_header(idx, "x-sleep")
        if delay:
            time.sleep(float(delay))
        out.append({
            "batch_size": len(data),
            "types": {k: type(v).__name__ for k, v in row.items()},
            "values": {k: (v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else v)
                       for k, v in row.items()},
            "request_id": context.get_request_id(idx),
            "headers": {k: v for k, v in context.get_all_request_header(idx).items()
                        if isinstance(v, str)},
            "pid": os.getpid(),
        })
        ct = context.get_request_header(idx, "x-response-type")
        if ct:
            context.set_response_content_type(idx, ct)
        status = context.get_request_header(idx, "x-response-status")
        if status:
            context.set_response_status(int(status), "Custom", idx)
    return out
"""

FAILING_HANDLER = """
import os, sys

class PredictionException(Exception):
    def __init__(self, message, error_code=500):
        super().__init__(message)
        self.message = message
        self.error_code = error_code

def handle(data, context):
    if data is None:
        return None
    body = data[0].get("body")
    text = bytes(body).decode() if isinstance(body, (bytes, bytearray)) else str(body)
    if text == "raise":
        raise ValueError("handler blew up")
    if text == "oom":
        raise MemoryError()
    if text == "custom":
        from backend.util import PredictionException as PE
        raise PE("custom failure", 418)
    if text == "notlist":
        return "oops"
    if text == "short":
        return []
    if text == "badtype":
        return [object()]
    if text == "exit":
        sys.stderr.write("about to exit\\n")
        sys.stderr.flush()
        os._exit(3)
    return ["ok"] * len(data)
"""

DESCRIBE_HANDLER = """
from trioserve.handler import BaseHandler

class Describing(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.initialized = True

    def describe_handle(self):
        return {"data1": "1", "data2": "2"}

    def preprocess(self, data):
        return data

    def inference(self, data):
        return data

    def postprocess(self, data):
        return ["described?"] * len(data)
"""

BROKEN_INIT_HANDLER = """
class Broken:
    def initialize(self, context):
        raise RuntimeError("cannot load weights")

    def handle(self, data, context):
        return data
"""


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)


def torchscript_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream, but it is what existing .mar files contain.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(TinyNet().eval())
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def manifest(name: str | None, handler: str, version: str = "1.0", **model: str) -> bytes:
    section: dict[str, str] = {"handler": handler, "modelVersion": version}
    if name is not None:
        section["modelName"] = name
    section.update(model)
    return json.dumps(
        {
            "createdOn": "01/12/2026 00:00:00",
            "runtime": "python",
            "model": section,
            "archiverVersion": "0.12.0",
        }
    ).encode()


def write_archive(
    store: Path,
    filename: str,
    files: dict[str, bytes | str],
    *,
    fmt: str = "mar",
) -> Path:
    """Write ``files`` as a .mar (zip), .tar.gz (top dir) or directory into ``store``."""
    data = {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}
    target = store / filename
    if fmt == "mar":
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, content in data.items():
                zf.writestr(name, content)
    elif fmt == "tgz":
        top = filename.removesuffix(".tar.gz")
        with tarfile.open(target, "w:gz") as tf:
            for name, content in data.items():
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    else:
        for name, content in data.items():
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return target


def handler_archive(
    store: Path,
    name: str,
    source: str,
    *,
    version: str = "1.0",
    fmt: str = "mar",
    config_yaml: str | None = None,
    filename: str | None = None,
) -> Path:
    files: dict[str, bytes | str] = {"handler.py": textwrap.dedent(source)}
    extra: dict[str, str] = {}
    if config_yaml is not None:
        files["model-config.yaml"] = config_yaml
        extra["configFile"] = "model-config.yaml"
    files["MAR-INF/MANIFEST.json"] = manifest(name, "handler.py", version, **extra)
    suffix = {"mar": ".mar", "tgz": ".tar.gz", "dir": ""}[fmt]
    return write_archive(store, filename or f"{name}{suffix}", files, fmt=fmt)


def torchscript_archive(store: Path, name: str, *, version: str = "1.0", seed: int = 0) -> Path:
    """A TorchScript model served by the default BaseHandler."""
    files: dict[str, bytes | str] = {
        "model.pt": torchscript_bytes(seed),
        "MAR-INF/MANIFEST.json": manifest(name, "base_handler", version, serializedFile="model.pt"),
    }
    return write_archive(store, f"{name}.mar", files)


EAGER_MODEL = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return torch.softmax(self.linear(x), dim=-1)
"""


def eager_archive(store: Path, name: str, *, version: str = "1.0", seed: int = 0) -> Path:
    """An eager model (model file + state dict) served by the default BaseHandler."""
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(TinyNet().state_dict(), buffer)
    files: dict[str, bytes | str] = {
        "model.py": EAGER_MODEL,
        "weights.pt": buffer.getvalue(),
        "MAR-INF/MANIFEST.json": manifest(
            name, "base_handler", version, serializedFile="weights.pt", modelFile="model.py"
        ),
    }
    return write_archive(store, f"{name}.mar", files)


def expected_probs(values: list[float], seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    net = TinyNet().eval()
    with torch.no_grad():
        return [float(x) for x in net(torch.tensor(values))]


# -- handlers for tests/integration/test_workers.py -------------------------------------------

# A module whose one handler class counts its initialisations in a class attribute; the imported
# class (OrderedDict) must not count as a second handler class (contract §7.1).
COUNTING_CLASS_HANDLER = """
import os
from collections import OrderedDict


class Counting:
    inits = 0

    def __init__(self):
        self.handled = 0

    def initialize(self, context):
        type(self).inits += 1
        self.seen = OrderedDict(model=context.model_name)

    def handle(self, data, context):
        self.handled += 1
        return [
            {"inits": type(self).inits, "handled": self.handled, "pid": os.getpid(), **self.seen}
            for _ in data
        ]
"""

# A function entry under a chosen name (``custom_entry:serve``); ``handle`` is a decoy that
# must not be used. The log records every call, so the load call shows as ``None``.
NAMED_FUNCTION_HANDLER = """
CALLS = []


def handle(data, context):
    raise AssertionError("the handler string named serve, not handle")


def serve(data, context):
    CALLS.append({"data": None if data is None else len(data), "context": type(context).__name__})
    if data is None:
        return None
    return [{"calls": CALLS} for _ in data]
"""

# The default function entry ``handle``, with the same call log.
DEFAULT_FUNCTION_HANDLER = """
CALLS = []


def handle(data, context):
    CALLS.append({"data": None if data is None else len(data), "context": type(context).__name__})
    if data is None:
        return None
    return [{"calls": CALLS} for _ in data]
"""

# Reports the Context (contract §7.3) and sets a response header per request.
CONTEXT_HANDLER = """
import os


def handle(data, context):
    if data is None:
        return None
    out = []
    for idx, _ in enumerate(data):
        rid = context.get_request_id(idx)
        context.set_response_header(idx, "x-seen-request-id", rid)
        context.set_response_header(idx, "x-handler", "context")
        out.append({
            "index": idx,
            "model_name": context.model_name,
            "request_id": rid,
            "request_ids": {str(k): v for k, v in context.request_ids.items()},
            "system_properties": context.system_properties,
            "manifest": context.manifest,
            "model_yaml_config": context.model_yaml_config,
            "cwd": os.getcwd(),
        })
    return out
"""

# Streams two chunks per request, then returns the last one (contract §1.4, §7.5).
STREAMING_HANDLER = """
from backend.streaming import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    for _ in range(2):
        send_intermediate_predict_response(
            ["hello "] * len(data), context.request_ids, "Intermediate Prediction success", 200,
            context,
        )
    return ["world"] * len(data)
"""

# Writes to stdout and stderr at load and per batch.
PRINTING_HANDLER = """
import sys

print("stdout line at load")
print("stderr line at load", file=sys.stderr)


def handle(data, context):
    if data is None:
        return None
    print("stdout line in batch")
    print("stderr line in batch", file=sys.stderr)
    return ["printed"] * len(data)
"""


def source_archive(
    store: Path,
    name: str,
    files: dict[str, str],
    handler: str,
    *,
    version: str = "1.0",
    config_yaml: str | None = None,
) -> Path:
    """A .mar of handler sources under their own file names, with the handler string as given."""
    contents: dict[str, bytes | str] = {k: textwrap.dedent(v) for k, v in files.items()}
    extra: dict[str, str] = {}
    if config_yaml is not None:
        contents["model-config.yaml"] = config_yaml
        extra["configFile"] = "model-config.yaml"
    contents["MAR-INF/MANIFEST.json"] = manifest(name, handler, version, **extra)
    return write_archive(store, f"{name}.mar", contents)


# Fails to load, but only after a while: leaves time to act while its workers start.
SLOW_BROKEN_INIT_HANDLER = """
import time

class SlowBroken:
    def initialize(self, context):
        time.sleep(1.5)
        raise RuntimeError("cannot load weights, slowly")

    def handle(self, data, context):
        return data
"""

# Streams one chunk, then fails: the client must not mistake the cut-off body for a whole one.
STREAM_THEN_FAIL_HANDLER = """
from backend.streaming import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    send_intermediate_predict_response(
        ["partial "] * len(data), context.request_ids, "Intermediate Prediction success", 200,
        context,
    )
    raise ValueError("failed after the first chunk")
"""

# Dies mid-batch after writing its last words to stderr without a newline.
DYING_HANDLER = """
import os, sys


def handle(data, context):
    if data is None:
        return None
    sys.stderr.write("last words without a newline")
    sys.stderr.flush()
    os._exit(4)
"""

# The process itself dies while loading (as a segfault or the OOM killer would end it): no
# load reply ever comes back.
CRASH_AT_LOAD_HANDLER = """
import os, sys

sys.stderr.write("crashing during load\\n")
os._exit(5)


def handle(data, context):
    return data
"""

# Answers each request with as many bytes as its body names (b"1000" -> 1000 bytes of "x"), to
# probe max_response_size.
SIZED_RESPONSE_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return [b"x" * int(bytes(row["body"]).decode()) for row in data]
"""


# An OIP (kservev2) handler: one output per input tensor, the sum of its elements.
SUM_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    def total(x):
        return sum(total(i) for i in x) if isinstance(x, list) else x
    return [total(tensor) for tensor in data]
"""
