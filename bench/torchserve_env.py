"""A separate virtual environment holding TorchServe 0.12.0, for ``--vs-torchserve``.

torch goes in first, pinned to the version trioserve's environment uses, so pip takes the local
CPU wheel instead of pulling a CUDA build as TorchServe's own requirements would. TorchServe's
frontend is Java: 17 must be on the PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

TORCHSERVE_VERSION = "0.12.0"
DEFAULT_VENV = Path.home() / ".cache" / "trioserve-bench" / f"torchserve-{TORCHSERVE_VERSION}"


def torch_version() -> str:
    """This environment's torch, without its local tag (``2.13.0+cpu`` -> ``2.13.0``)."""
    from importlib.metadata import version

    return version("torch").split("+", 1)[0]


def ensure_torchserve(venv: Path = DEFAULT_VENV) -> Path:
    """The venv, created and filled on first use (a marker file says it is complete)."""
    marker = venv / ".complete"
    if marker.exists():
        return venv
    if shutil.which("java") is None:
        raise SystemExit(
            "TorchServe needs Java 17 on the PATH (Debian: apt-get install openjdk-17-jre-headless)"
        )
    print(f"installing TorchServe {TORCHSERVE_VERSION} into {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={torch_version()}"], check=True)
    packages = [f"torchserve=={TORCHSERVE_VERSION}", f"torch-model-archiver=={TORCHSERVE_VERSION}"]
    # TorchServe's default handlers import these at worker start.
    subprocess.run([*pip, *packages, "pyyaml", "psutil", "packaging"], check=True)
    marker.write_text(TORCHSERVE_VERSION + "\n")
    return venv
