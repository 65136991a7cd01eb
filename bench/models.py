"""The models the suite serves, built fresh into a model store as .mar archives.

Handlers are plain ``handle(data, context)`` modules that import nothing from either server, so
trioserve and TorchServe load the very same archives. The CNN's weights are random (a fixed
seed), so no binary file ships with the bench.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ECHO = """
def handle(data, context):
    if data is None:
        return None
    out = []
    for row in data:
        value = row.get("data", row.get("body"))
        out.append(bytes(value) if isinstance(value, bytearray) else value)
    return out
"""

# Sleeps once per batch, whatever its size: the ideal throughput is batch / 10 ms per worker.
SLEEP10 = """
import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(0.010)
    return [b"ok"] * len(data)
"""

# A small image classifier: 3x64x64 float32 input (raw little-endian bytes), 10 classes.
CNN = """
import torch
from torch import nn

torch.set_num_threads(1)  # two workers share two cores; more threads only contend
_model = None


def _build():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16 * 16, 10),
    )
    return model.eval()


def handle(data, context):
    global _model
    if _model is None:
        _model = _build()
    if data is None:
        return None
    rows = []
    for row in data:
        value = row.get("data", row.get("body"))
        rows.append(torch.frombuffer(bytearray(value), dtype=torch.float32).reshape(3, 64, 64))
    with torch.inference_mode():
        classes = _model(torch.stack(rows)).argmax(dim=1)
    return [{"class": int(c)} for c in classes]
"""

CNN_INPUT_BYTES = 3 * 64 * 64 * 4


@dataclass(frozen=True)
class ModelSource:
    name: str
    handler: str


SOURCES = {"echo": ModelSource("echo", ECHO), "sleep10": ModelSource("sleep10", SLEEP10)}
SOURCES["cnn"] = ModelSource("cnn", CNN)


def archiver() -> list[str]:
    """torch-model-archiver from this environment (the ``dev`` extra installs it)."""
    found = shutil.which("torch-model-archiver", path=str(Path(sys.executable).parent))
    if found is None:
        found = shutil.which("torch-model-archiver")
    if found is None:
        raise SystemExit("torch-model-archiver is not installed: pip install -e '.[dev]'")
    return [found]


def build_archive(store: Path, archive_name: str, source: ModelSource, scratch: Path) -> Path:
    """``store/<archive_name>.mar`` holding ``source``'s handler (its model name is
    ``archive_name``: each registration gets its own archive)."""
    work = scratch / archive_name
    work.mkdir(parents=True, exist_ok=True)
    handler = work / f"{source.name}_handler.py"
    handler.write_text(source.handler)
    command = [*archiver(), "--model-name", archive_name, "--version", "1.0"]
    command += ["--handler", str(handler), "--export-path", str(store), "--force"]
    subprocess.run(command, check=True, capture_output=True)
    return store / f"{archive_name}.mar"


def cnn_input(path: Path) -> Path:
    """One random input image as raw float32 bytes."""
    rng = random.Random(0)
    count = CNN_INPUT_BYTES // 4
    path.write_bytes(struct.pack(f"<{count}f", *(rng.random() for _ in range(count))))
    return path
