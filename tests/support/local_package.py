"""A tiny installable package built by tests, for per-model dependencies without a network.

Its ``pyproject.toml`` names an in-tree build backend with no requirements, so ``pip install
--no-index`` builds and installs it from the directory alone (no setuptools download)."""

from __future__ import annotations

import textwrap
from pathlib import Path

BACKEND = '''
"""A PEP 517 backend that zips the package into a wheel by hand."""
import base64
import hashlib
import os
import zipfile

NAME, VERSION = "{name}", "0.1"
DIST = f"{{NAME}}-{{VERSION}}.dist-info"


def get_requires_for_build_wheel(config_settings=None):
    return []


def _digest(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {{}}
    for root, _, names in os.walk(NAME):
        for n in names:
            if n.endswith(".py"):
                path = os.path.join(root, n)
                with open(path, "rb") as f:
                    files[path.replace(os.sep, "/")] = f.read()
    metadata = f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n"
    files[f"{{DIST}}/METADATA"] = metadata.encode()
    files[f"{{DIST}}/WHEEL"] = (
        b"Wheel-Version: 1.0\\nGenerator: tinybuild\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    )
    record = [f"{{p}},sha256={{_digest(d)}},{{len(d)}}" for p, d in files.items()]
    record.append(f"{{DIST}}/RECORD,,")
    files[f"{{DIST}}/RECORD"] = ("\\n".join(record) + "\\n").encode()
    wheel = f"{{NAME}}-{{VERSION}}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel
'''


def local_package(root: Path, name: str = "tinydep", value: int = 42) -> Path:
    """Write an installable package ``name`` (``name.VALUE == value``) under ``root``."""
    package = root / name
    (package / name).mkdir(parents=True)
    (package / name / "__init__.py").write_text(f"VALUE = {value}\n")
    (package / "tinybuild.py").write_text(BACKEND.format(name=name))
    (package / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = []
            build-backend = "tinybuild"
            backend-path = ["."]
            """
        )
    )
    return package
