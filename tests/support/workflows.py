"""Builds real workflow archives (.war) for tests: a spec, a handler module of functions, and
the tiny handler models the specs name."""

from __future__ import annotations

import json
import textwrap
import zipfile
from pathlib import Path

# The workflow's functions. ``pre`` turns "1,2,3" into {"values": [...]}; ``agg`` combines its
# predecessors' outputs (one input per predecessor, named after it); ``echo`` answers its input.
WORKFLOW_HANDLER = """
import json


def _text(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode()
    return value if isinstance(value, str) else json.dumps(value)


def pre(data, context):
    if data is None:
        return None
    out = []
    for row in data:
        text = _text(row.get("data") or row.get("body"))
        if text == "fail":
            raise ValueError("pre refuses this input")
        out.append(json.dumps({"values": [float(x) for x in text.split(",")]}))
    return out


def agg(data, context):
    if data is None:
        return None
    return [{name: json.loads(_text(value)) for name, value in sorted(row.items())} for row in data]


def echo(data, context):
    if data is None:
        return None
    return [{"echo": _text(row.get("data") or row.get("body"))} for row in data]
"""

# A function that fails on its first call ever, counting calls in a file (the load call, with
# data None, does not count): retry-attempts must get the request through.
FLAKY_FUNCTION = """

COUNTER = {counter!r}


def flaky(data, context):
    if data is None:
        return None
    with open(COUNTER, "a") as f:
        f.write("x")
    with open(COUNTER) as f:
        calls = len(f.read())
    if calls == 1:
        raise RuntimeError("flaky fails its first call")
    return [{{"flaky": json.loads(_text(row["body"])), "calls": calls}} for row in data]
"""


def _model_handler(op: str) -> str:
    # Sleeps for the seconds a request header x-sleep names (headers reach every node).
    return f"""
import json, time


def handle(data, context):
    if data is None:
        return None
    out = []
    for idx, row in enumerate(data):
        delay = context.get_request_header(idx, "x-sleep")
        if delay:
            time.sleep(float(delay))
        raw = row.get("body")
        if isinstance(raw, (bytes, bytearray)):
            raw = bytes(raw).decode()
        values = json.loads(raw)["values"] if isinstance(raw, str) else raw["values"]
        out.append({{"{op}": {op}(values)}})
    return out
"""


SUM_MODEL = _model_handler("sum")
MAX_MODEL = _model_handler("max")


def war_manifest(name: str, spec_file: str = "spec.yaml", handler: str | None = None) -> str:
    """MANIFEST.json as torch-workflow-archiver 0.2.15 writes it."""
    workflow = {"workflowName": name, "specFile": spec_file}
    if handler is not None:
        workflow["handler"] = handler
    return json.dumps(
        {"createdOn": "01/12/2026 00:00:00", "workflow": workflow, "archiverVersion": "0.2.15"},
        indent=2,
    )


def write_war(path: Path, files: dict[str, str | bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


def workflow_archive(
    store: Path,
    name: str,
    spec_yaml: str,
    handler_source: str = WORKFLOW_HANDLER,
    *,
    filename: str | None = None,
) -> Path:
    """``{store}/{name}.war`` with ``spec.yaml``, ``workflow_handler.py`` and its manifest."""
    return write_war(
        store / (filename or f"{name}.war"),
        {
            "spec.yaml": textwrap.dedent(spec_yaml),
            "workflow_handler.py": textwrap.dedent(handler_source),
            "WAR-INF/MANIFEST.json": war_manifest(name, handler="workflow_handler.py"),
        },
    )
