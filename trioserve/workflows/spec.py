"""Sans-IO: a workflow spec YAML (contract §2.7) to values.

A spec has two sections. ``models:`` holds the global node settings (``min-workers``,
``max-workers``, ``batch-size``, ``max-batch-delay``, ``retry-attempts``, ``timeout-ms``) and one
mapping per model node, with its ``url`` and any of those settings overridden. ``dag:`` maps
each node to the list of its successors. A node of the dag that is not a model is a function
of the workflow's handler module; :func:`handler_functions` lists those a handler defines by
reading its source, so the frontend never imports (runs) workflow code.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import yaml

from trioserve.workflows.errors import InvalidDag, InvalidWorkflow

# Node names become model names ({workflow}__{node}) and so path segments of the model routes;
# the archivers' own name rule keeps them printable and free of separators.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
# A spec names a handful of models; a graph this large is a mistake (or an attempt to make the
# server start thousands of worker processes), not a pipeline.
MAX_NODES = 256

# YAML key -> NodeSettings field, with the smallest value each accepts.
_KEYS: dict[str, tuple[str, int]] = {
    "min-workers": ("min_workers", 0),
    "max-workers": ("max_workers", 0),
    "batch-size": ("batch_size", 1),
    "max-batch-delay": ("max_batch_delay", 0),
    "retry-attempts": ("retry_attempts", 0),
    "timeout-ms": ("timeout_ms", 1),
}


@dataclass(frozen=True)
class NodeSettings:
    """How one node's model is registered and called; the defaults are TorchServe's."""

    min_workers: int = 1
    max_workers: int = 1
    batch_size: int = 1
    max_batch_delay: int = 50
    retry_attempts: int = 1  # retries after the first attempt
    timeout_ms: int = 10000  # per attempt, queueing included

    def for_function(self) -> NodeSettings:
        """A function node runs in one worker, one request at a time; only the retry and
        timeout settings carry over from the globals (as in TorchServe)."""
        return replace(self, min_workers=1, max_workers=1, batch_size=1, max_batch_delay=0)


@dataclass(frozen=True)
class ModelNode:
    name: str
    url: str
    settings: NodeSettings


@dataclass(frozen=True)
class WorkflowSpec:
    defaults: NodeSettings
    models: Mapping[str, ModelNode]
    # The dag section as written: (node, successors) in file order.
    edges: tuple[tuple[str, tuple[str, ...]], ...]

    def settings(self, node: str) -> NodeSettings:
        model = self.models.get(node)
        return model.settings if model is not None else self.defaults.for_function()


def _int(value: Any, where: str, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidWorkflow(
            f"Invalid workflow specification: {where} {key} is {value!r}; "
            f"expected an integer >= {minimum}."
        )
    return value


def _settings(raw: Mapping[str, Any], base: NodeSettings, where: str) -> NodeSettings:
    values = {f.name: getattr(base, f.name) for f in fields(NodeSettings)}
    for key, (attr, minimum) in _KEYS.items():
        if key in raw:
            values[attr] = _int(raw[key], where, key, minimum)
    settings = NodeSettings(**values)
    if settings.max_workers < settings.min_workers:
        raise InvalidWorkflow(
            f"Invalid workflow specification: {where} max-workers ({settings.max_workers}) "
            f"is less than min-workers ({settings.min_workers})."
        )
    return settings


def check_name(name: object, what: str) -> str:
    """``name`` when it is a usable node or workflow name; InvalidDag naming it otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidDag(
            f"Invalid DAG: {what} {name!r} is not a valid name (allowed: {NAME_PATTERN.pattern})."
        )
    return name


def parse_spec(text: bytes | str) -> WorkflowSpec:
    """Parse a spec file.

    Raises:
        InvalidWorkflow: not YAML, a section missing or of the wrong shape, a model without a
            ``url``, or a setting that is not a suitable integer (the message names it).
        InvalidDag: a node name that is not a valid name.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidWorkflow(f"Invalid workflow specification: not YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidWorkflow("Invalid workflow specification: expected a mapping.")
    models_raw = document.get("models") or {}
    dag_raw = document.get("dag")
    if not isinstance(models_raw, dict):
        raise InvalidWorkflow("Invalid workflow specification: models must be a mapping.")
    if not isinstance(dag_raw, dict) or not dag_raw:
        raise InvalidWorkflow(
            "Invalid workflow specification: dag must be a mapping of node -> successors."
        )
    defaults = _settings(
        {k: v for k, v in models_raw.items() if k in _KEYS}, NodeSettings(), "models:"
    )
    models: dict[str, ModelNode] = {}
    for key, value in models_raw.items():
        if key in _KEYS:
            continue
        name = check_name(key, "model")
        if not isinstance(value, dict):
            raise InvalidWorkflow(
                f"Invalid workflow specification: model {name} must be a mapping with a url."
            )
        url = value.get("url")
        if not isinstance(url, str) or not url:
            raise InvalidWorkflow(f"Invalid workflow specification: model {name} has no url.")
        models[name] = ModelNode(name, url, _settings(value, defaults, f"model {name}"))
    edges: list[tuple[str, tuple[str, ...]]] = []
    for key, value in dag_raw.items():
        node = check_name(key, "node")
        if value is None:
            value = []
        if not isinstance(value, list):
            raise InvalidDag(f"Invalid DAG: the successors of node {node} must be a list.")
        successors = tuple(dict.fromkeys(check_name(s, "node") for s in value))
        edges.append((node, successors))
    named = {n for n, _ in edges} | {s for _, succ in edges for s in succ}
    if len(named) > MAX_NODES:
        raise InvalidDag(f"Invalid DAG: {len(named)} nodes; at most {MAX_NODES} are allowed.")
    return WorkflowSpec(defaults, models, tuple(edges))


def handler_functions(source: bytes | str, handler: str) -> frozenset[str]:
    """The top-level functions a handler module defines, read from its source (never imported
    here: workflow code runs only in worker processes).

    Raises:
        InvalidWorkflow: the source is not valid Python (the message names ``handler``).
    """
    try:
        tree = ast.parse(source, filename=handler)
    except (SyntaxError, ValueError) as exc:
        raise InvalidWorkflow(f"Workflow handler {handler} is not valid Python: {exc}") from exc
    # Plain functions only: the worker calls the entry point and uses what it returns.
    return frozenset(node.name for node in tree.body if isinstance(node, ast.FunctionDef))
