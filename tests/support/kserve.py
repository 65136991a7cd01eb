"""The KServe deployment kit (deploy/kserve/) as KServe would use it: the manifests, the
runtime container an InferenceService gets, and a /mnt/models layout built from the sample."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import javaproperties
import yaml

from tests.support.models import torchscript_archive

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kserve"
MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storageUri


def documents(name: str) -> list[dict[str, Any]]:
    """Every YAML document of ``deploy/kserve/{name}``."""
    with open(DEPLOY / name) as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def runtimes() -> dict[str, dict[str, Any]]:
    """The serving runtimes of servingruntime.yaml by name."""
    return {doc["metadata"]["name"]: doc for doc in documents("servingruntime.yaml")}


def inference_service(name: str) -> dict[str, Any]:
    (doc,) = documents(name)
    return doc


# KServe renders each runtime container as a Go text/template over the InferenceService's
# metadata (ReplacePlaceholders). These are the two label forms, with Go's results for a
# missing key: a field chain prints "<no value>", `index` gives the zero value "".
_ACTION = re.compile(r"\{\{(.*?)\}\}")
_LABEL_FIELD = re.compile(r"\s*\.Labels\.(\w+)\s*")
_LABEL_INDEX = re.compile(r"\s*index\s+\.Labels\s+`([^`]*)`\s*")


def render(text: str, labels: dict[str, str]) -> str:
    """``text`` with its ``{{...}}`` label actions replaced as KServe replaces them.

    Raises:
        ValueError: an action other than the two label forms (this renderer would get it
            wrong, so a manifest that uses one needs a test that knows it).
    """

    def action(match: re.Match[str]) -> str:
        if field := _LABEL_FIELD.fullmatch(match[1]):
            return labels.get(field[1], "<no value>")
        if index := _LABEL_INDEX.fullmatch(match[1]):
            return labels.get(index[1], "")
        raise ValueError(f"unsupported template action {match[0]!r}")

    return _ACTION.sub(action, text)


def container_for(runtime: dict[str, Any], isvc: dict[str, Any]) -> dict[str, Any]:
    """The runtime's first container with its templates rendered for ``isvc``."""
    labels = dict(isvc["metadata"].get("labels") or {})
    container = runtime["spec"]["containers"][0]
    rendered: dict[str, Any] = json.loads(render(json.dumps(container), labels))
    return rendered


def model_snapshot(properties: dict[str, str]) -> dict[str, Any]:
    snapshot: dict[str, Any] = json.loads(properties["model_snapshot"])
    return snapshot


def sample_properties() -> dict[str, str]:
    with open(DEPLOY / "config" / "config.properties") as stream:
        return dict(javaproperties.load(stream))


def lay_out_models(mount: Path, ports: dict[int, int]) -> dict[str, str]:
    """Build ``mount`` as the storageUri would fill /mnt/models: the sample config (its
    ``/mnt/models`` paths moved to ``mount``, each port to ``ports[port]``, 0.0.0.0 to the
    loopback address) and a real TorchScript archive for each model its snapshot names.
    Returns the properties written."""
    properties = sample_properties()
    rewritten: dict[str, str] = {}
    for key, value in properties.items():
        value = value.replace(MOUNT, str(mount)).replace("0.0.0.0", "127.0.0.1")
        value = re.sub(r"(?<=:)(\d+)$", lambda m: str(ports.get(int(m[1]), m[1])), value)
        if key.endswith("_port"):
            value = str(ports.get(int(value), value))
        rewritten[key] = value
    (mount / "config").mkdir(parents=True)
    store = mount / "model-store"
    store.mkdir()
    with open(mount / "config" / "config.properties", "w") as stream:
        javaproperties.dump(rewritten, stream, timestamp=False)
    for name, versions in model_snapshot(rewritten)["models"].items():
        for version, entry in versions.items():
            archive = torchscript_archive(store, name, version=version)
            if archive.name != entry["marName"]:
                archive.rename(store / entry["marName"])
    return rewritten
