"""Sans-IO Open Inference Protocol (KServe v2) tensors: the datatypes, checks of a request's
tensors against their shapes, and the raw little-endian tensor encoding gRPC clients use.

Every check raises :class:`TensorError` (a 400) with a message that names the tensor and what
is wrong with it, so a bad request never reaches a worker.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from math import isfinite, prod
from typing import Any

from trioserve.errors import BadRequest


class TensorError(BadRequest):
    """A request's tensors do not match the protocol."""


@dataclass(frozen=True)
class Datatype:
    name: str
    kind: str  # "bool", "int", "float" or "bytes"
    code: str  # struct format code of one raw element ("" for BYTES)
    lo: int = 0
    hi: int = 0
    contents: str = ""  # the InferTensorContents field that carries it over gRPC


def _int(name: str, code: str, bits: int, signed: bool, contents: str) -> Datatype:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return Datatype(name, "int", code, lo, hi, contents)


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        Datatype("BOOL", "bool", "?", contents="bool_contents"),
        _int("UINT8", "B", 8, False, "uint_contents"),
        _int("UINT16", "H", 16, False, "uint_contents"),
        _int("UINT32", "I", 32, False, "uint_contents"),
        _int("UINT64", "Q", 64, False, "uint64_contents"),
        _int("INT8", "b", 8, True, "int_contents"),
        _int("INT16", "h", 16, True, "int_contents"),
        _int("INT32", "i", 32, True, "int_contents"),
        _int("INT64", "q", 64, True, "int64_contents"),
        Datatype("FP16", "float", "e", contents="fp32_contents"),
        Datatype("FP32", "float", "f", contents="fp32_contents"),
        Datatype("FP64", "float", "d", contents="fp64_contents"),
        Datatype("BYTES", "bytes", "", contents="bytes_contents"),
    )
}
_NAMES = ", ".join(DATATYPES)
MAX_RANK = 32  # dimensions of one tensor; deeper nesting is refused before it is walked


def parse_json(body: bytes, what: str = "request body") -> Any:
    """The JSON document of a body.

    Raises:
        TensorError: not UTF-8 JSON, or nested too deeply for the parser.
    """
    try:
        return json.loads(body)
    except RecursionError:
        raise TensorError(f"The {what} is nested too deeply.") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise TensorError(f"The {what} is not valid JSON: {exc}") from None


def check_infer_request(document: Any) -> dict[str, Any]:
    """Check a v2 inference request (``{"id"?, "parameters"?, "inputs": [...],
    "outputs"?}``) and return it.

    Raises:
        TensorError: naming the first problem found.
    """
    if not isinstance(document, dict):
        raise TensorError("The inference request must be a JSON object.")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError('"id" must be a string.')
    _check_parameters(document.get("parameters"), "the request")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise TensorError('"inputs" must be a non-empty list of tensors.')
    for index, tensor in enumerate(inputs):
        check_tensor(tensor, index)
    outputs = document.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise TensorError('"outputs" must be a list of {"name": ...} objects.')
    return document


def _check_parameters(parameters: Any, where: str) -> None:
    if parameters is not None and not isinstance(parameters, dict):
        raise TensorError(f'"parameters" of {where} must be a JSON object.')


def check_tensor(tensor: Any, index: int) -> list[Any]:
    """Check one input tensor and return its data, flattened.

    Raises:
        TensorError: a missing or ill-typed field, an unknown datatype, data nested deeper
            than the shape, an element count that does not fit the shape, or an element that
            is not of the datatype (or out of its range).
    """
    if not isinstance(tensor, dict):
        raise TensorError(f"Input {index} must be a JSON object.")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise TensorError(f'Input {index} needs a "name" string.')
    where = f"input {name!r}"
    datatype = lookup_datatype(tensor.get("datatype"), where)
    shape = check_shape(tensor.get("shape"), where)
    _check_parameters(tensor.get("parameters"), where)
    if "data" not in tensor:
        raise TensorError(f'{where.capitalize()} has no "data".')
    flat = flatten(tensor["data"], len(shape), where)
    check_count(shape, len(flat), where)
    check_elements(datatype, flat, where)
    return flat


def lookup_datatype(name: Any, where: str) -> Datatype:
    """The protocol datatype called ``name``.

    Raises:
        TensorError: ``name`` is not one (or not a string at all).
    """
    if not isinstance(name, str) or name not in DATATYPES:
        raise TensorError(f"Unknown datatype {name!r} of {where}; expected one of {_NAMES}.")
    return DATATYPES[name]


def check_shape(shape: Any, where: str) -> list[int]:
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise TensorError(
            f'"shape" of {where} must be a list of at most {MAX_RANK} non-negative integers.'
        )
    return shape


def check_count(shape: list[int], count: int, where: str) -> None:
    expected = prod(shape)
    if expected != count:
        raise TensorError(
            f"Shape {shape} of {where} needs {expected} elements but its data has {count}."
        )


def flatten(data: Any, rank: int, where: str) -> list[Any]:
    """The elements of ``data`` (a flat or nested list) in row-major order, walked without
    recursion; nesting deeper than ``rank`` (or than MAX_RANK) is refused."""
    if not isinstance(data, list):
        raise TensorError(f'"data" of {where} must be a list.')
    limit = max(rank, 1)
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= limit:
                    raise TensorError(f'"data" of {where} is nested deeper than its shape.')
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def check_elements(datatype: Datatype, flat: list[Any], where: str) -> None:
    for position, item in enumerate(flat):
        if not _fits(datatype, item):
            raise TensorError(
                f"Element {position} of {where} ({_show(item)}) is not a valid {datatype.name}."
            )


def _fits(datatype: Datatype, item: Any) -> bool:
    kind = datatype.kind
    if kind == "bool":
        return isinstance(item, bool)
    if isinstance(item, bool):
        return False
    if kind == "int":
        return isinstance(item, int) and datatype.lo <= item <= datatype.hi
    if kind == "float":
        return isinstance(item, int) or (isinstance(item, float) and isfinite(item))
    return isinstance(item, str)


def _show(item: Any) -> str:
    text = json.dumps(item) if not isinstance(item, bytes) else repr(item)
    return text if len(text) <= 40 else text[:37] + "..."


# -- raw tensor contents (gRPC ``raw_input_contents`` / ``raw_output_contents``) ---------------


def unpack_raw(datatype: Datatype, shape: list[int], raw: bytes, where: str) -> list[Any]:
    """The elements of a raw little-endian tensor; BYTES elements are 4-byte length-prefixed.

    Raises:
        TensorError: a length that does not fit the shape and datatype.
    """
    count = prod(shape)
    if datatype.kind == "bytes":
        items: list[Any] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise TensorError(f"Raw BYTES contents of {where} end inside a length prefix.")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise TensorError(f"Raw BYTES contents of {where} end inside an element.")
            items.append(raw[offset : offset + size])
            offset += size
        check_count(shape, len(items), where)
        return items
    width = struct.calcsize("<" + datatype.code)
    if len(raw) != count * width:
        raise TensorError(
            f"Raw contents of {where} are {len(raw)} bytes; shape {shape} of {datatype.name} "
            f"needs {count * width}."
        )
    return list(struct.unpack(f"<{count}{datatype.code}", raw))


def pack_raw(datatype: Datatype, data: list[Any]) -> bytes:
    """The raw little-endian encoding of ``data`` (BYTES: each element length-prefixed)."""
    if datatype.kind == "bytes":
        parts = []
        for item in data:
            value = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(value)) + value)
        return b"".join(parts)
    return struct.pack(f"<{len(data)}{datatype.code}", *data)
