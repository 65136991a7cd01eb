"""Service envelopes (contract §1.5): the request/response shapes a handler is wrapped in.

An envelope turns the batch's ``data`` into what the handler sees and the handler's result
back into one output per request. ``body`` passes everything through; ``json`` unpacks
``{"instances": [...]}`` rows across the whole batch; ``kserve`` (KServe v1) hands the handler
one request's ``instances``; ``kservev2`` (Open Inference Protocol) hands it one request's
input tensors, reshaped, and builds the v2 response.

TorchServe applies one envelope (``service_envelope``) to every request and its KServe
envelopes read only the first request of a batch. Here each request may carry its own envelope
(the route it came by: ``/v1`` is KServe v1, ``/v2`` and OIP gRPC are v2), and the KServe
envelopes run the handler once per request, so every request of a batch gets its own answer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from math import prod
from typing import Any

from backend.context import Context

Entry = Callable[[Any, Context], Any]

BODY, JSON, KSERVE, KSERVE_V2 = "body", "json", "kserve", "kservev2"
ENVELOPES = frozenset({BODY, JSON, KSERVE, KSERVE_V2})
_PER_REQUEST = frozenset({KSERVE, KSERVE_V2})

# numpy / torch dtype names (torch's without its "torch." prefix) -> v2 datatype.
_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "object": "BYTES",
}


class OutputError(Exception):
    """The handler's result does not fit the batch: the whole batch fails with this message."""


def handle(
    entry: Entry, data: list[dict[str, Any]], context: Context, envelopes: Sequence[str]
) -> list[Any]:
    """Run ``entry`` over the batch, each request under its envelope ("" = none).

    Requests without a per-request envelope are passed to the handler together, as one batch;
    the handler's result for them must be a list as long as that batch.

    Raises:
        OutputError: a result that is not a list of the right length.
        Whatever the handler raises.
    """
    if not any(kind and kind != BODY for kind in envelopes):
        return _checked(entry(data, context), len(data))
    outputs: list[Any] = [None] * len(data)
    groups: dict[str, list[int]] = {}
    for index, kind in enumerate(envelopes):
        groups.setdefault(kind if kind != BODY else "", []).append(index)
    for kind, indices in groups.items():
        if kind in _PER_REQUEST:
            for index in indices:
                with _narrowed(context, [index]):
                    outputs[index] = _one(kind, entry, data[index], context)
            continue
        with _narrowed(context, indices):
            rows = [data[i] for i in indices]
            results = _json(entry, rows, context) if kind == JSON else entry(rows, context)
            for index, value in zip(indices, _checked(results, len(indices)), strict=True):
                outputs[index] = value
    return outputs


def _checked(results: Any, expected: int) -> list[Any]:
    if not isinstance(results, list):
        raise OutputError("Invalid model predict output")
    if len(results) != expected:
        raise OutputError("number of batch response mismatched")
    return results


@contextmanager
def _narrowed(context: Context, indices: list[int]) -> Iterator[None]:
    """Make the context describe just these requests of the batch (ids, headers, response
    status), renumbered from 0, as the handler sees them."""
    ids, processors = context.request_ids or {}, context.request_processor
    metric_ids = context.metrics.request_ids
    context.request_ids = {j: ids[i] for j, i in enumerate(indices) if i in ids}
    context.request_processor = [processors[i] for i in indices]
    context.metrics.request_ids = dict(context.request_ids)
    try:
        yield
    finally:
        context.request_ids, context.request_processor = ids, processors
        context.metrics.request_ids = metric_ids


def _payload(row: dict[str, Any]) -> Any:
    """A request's JSON document: the worker has decoded it already when it came with an
    ``application/json`` content type, else it is still bytes."""
    value = row.get("data") or row.get("body")
    if isinstance(value, bytes | bytearray):
        value = json.loads(bytes(value).decode("utf-8"))
    return value


def _is_explain(context: Context) -> bool:
    return bool(context.request_processor) and context.get_request_header(0, "explain") == "True"


def _one(kind: str, entry: Entry, row: dict[str, Any], context: Context) -> Any:
    document = _payload(row)
    if not isinstance(document, dict):
        raise ValueError("the request body is not a JSON object")
    if kind == KSERVE:
        instances = document.get("instances", document.get("inputs"))
        result = entry(instances, context)
        return {"explanations" if _is_explain(context) else "predictions": result}
    return _v2(entry, document, context)


def _v2(entry: Entry, document: dict[str, Any], context: Context) -> dict[str, Any]:
    inputs = document.get("inputs") or []
    names, tensors = [], []
    for tensor in inputs:
        names.append(tensor.get("name"))
        if tensor.get("datatype") == "BYTES":
            data = tensor.get("data")
            tensors.append(data[0] if isinstance(data, list) and data else data)
        else:
            flat = _flatten(tensor.get("data"))
            if str(tensor.get("datatype", "")).startswith("FP"):
                flat = [float(x) for x in flat]  # JSON writes 1.0 as 1: the datatype says float
            tensors.append(_reshape(flat, list(tensor.get("shape", []))))
    context.input_names = names  # type: ignore[attr-defined]
    result = entry(tensors, context)
    request_id = document.get("id")
    manifest_model = (context.manifest or {}).get("model", {})
    outputs = [
        _tensor(value, names[index] if index < len(names) else f"output-{index}")
        for index, value in enumerate(result if isinstance(result, list) else [result])
    ]
    return {
        "id": request_id
        if isinstance(request_id, str) and request_id.strip()
        else context.get_request_id(0),
        "model_name": manifest_model.get("modelName", context.model_name),
        "model_version": manifest_model.get("modelVersion", context.model_version),
        "outputs": outputs,
    }


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _reshape(flat: list[Any], shape: list[int]) -> Any:
    """Nested lists of ``shape`` (the frontend checked that the element count fits)."""
    if not shape or prod(shape) != len(flat):
        return flat
    for size in reversed(shape[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat


def _tensor(value: Any, name: str) -> dict[str, Any]:
    """One v2 output tensor: ``value`` flattened, its datatype from its dtype (tensors, numpy
    arrays) or its Python elements."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and hasattr(value, "tolist"):
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu()
        data = _flatten(value.tolist())
        dtype_name = str(dtype).removeprefix("torch.")
        datatype = _DATATYPES.get(dtype_name, "BYTES" if dtype_name[:2] in ("<U", "|S") else "FP32")
    else:
        data = _flatten(value)
        datatype = _python_datatype(data)
    if datatype == "BYTES":
        data = [_text(item) for item in data]
    return {"name": name, "shape": [len(data)], "datatype": datatype, "data": data}


def _python_datatype(data: list[Any]) -> str:
    if data and all(isinstance(item, bool) for item in data):
        return "BOOL"
    if data and all(isinstance(item, int) and not isinstance(item, bool) for item in data):
        return "INT64"
    if all(isinstance(item, int | float) and not isinstance(item, bool) for item in data):
        return "FP64"
    return "BYTES"


def _text(item: Any) -> Any:
    if isinstance(item, bytes | bytearray):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(bytes(item)).decode("ascii")
    return item if isinstance(item, str) else json.dumps(item)


def _json(entry: Entry, rows: list[dict[str, Any]], context: Context) -> list[str]:
    """The ``json`` envelope: every request's ``instances`` joined into one batch (``{"b64":
    ...}`` rows decoded), the results split back, one ``{"predictions": [...]}`` per request."""
    lengths, batch = [], []
    for row in rows:
        document = _payload(row)
        instances = document.get("instances", []) if isinstance(document, dict) else []
        decoded = [
            base64.b64decode(item["b64"]) if isinstance(item, dict) and "b64" in item else item
            for item in instances
        ]
        lengths.append(len(decoded))
        batch.extend(decoded)
    results = _checked(entry(batch, context), len(batch))
    out, cursor = [], 0
    for length in lengths:
        out.append(json.dumps({"predictions": results[cursor : cursor + length]}))
        cursor += length
    return out
