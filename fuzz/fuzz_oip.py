"""Fuzz target: a v2 (Open Inference Protocol) request body -> ``parse_json`` and
``check_infer_request``, and each accepted tensor through the raw little-endian codec.

Contract: any bytes either give a checked document or raise ``TensorError`` (a 400 with a
message), nothing else, however deep the nesting; every tensor of an accepted document has as
many elements as its shape says, and packing them raw and unpacking gives them back.

Run under atheris (``python fuzz/fuzz_oip.py [atheris/libFuzzer flags]``) or, without it,
``python fuzz/fuzz_oip.py --smoke N [--seed S]`` to check N generated inputs.
"""

from __future__ import annotations

import math
import random
import sys

import _harness

from trioserve.api import oip

SEEDS: list[bytes] = [
    b'{"id": "42", "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32",'
    b' "data": [1, 2, 3, 4]}]}',
    b'{"inputs": [{"name": "a", "shape": [2, 2], "datatype": "INT8", "data": [[1, -2], [3, 127]]},'
    b' {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["hi"]}],'
    b' "outputs": [{"name": "b"}], "parameters": {"x": 1}}',
    b'{"inputs": [{"name": "t", "shape": [3], "datatype": "BOOL", "data": [true, false, true]},'
    b' {"name": "u", "shape": [0], "datatype": "UINT64", "data": []}]}',
    b'{"inputs": [{"name": "h", "shape": [2], "datatype": "FP16", "data": [0.5, 1e3]}]}',
    b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": ' + b"[" * 40 + b"]}]}",
]


def check(data: bytes) -> None:
    try:
        document = oip.check_infer_request(oip.parse_json(data))
    except oip.TensorError as exc:
        error: oip.TensorError | None = exc
    else:
        error = None
    if error is not None:
        if error.code != 400 or not error.message:
            raise AssertionError(f"a bad request must be a 400 with a message: {error!r}")
        return
    for tensor in document["inputs"]:
        datatype = oip.DATATYPES[tensor["datatype"]]
        flat = oip.flatten(tensor["data"], len(tensor["shape"]), "fuzz")
        assert len(flat) == math.prod(tensor["shape"])
        if datatype.name == "FP16" and any(abs(x) > 65504 for x in flat):
            continue  # out of half precision's range: struct refuses to pack it
        back = oip.unpack_raw(datatype, tensor["shape"], oip.pack_raw(datatype, flat), "fuzz")
        if datatype.kind == "bytes":
            assert back == [x.encode("utf-8") for x in flat]
        elif datatype.kind in ("bool", "int"):
            assert back == flat
        else:
            assert len(back) == len(flat)


TOKENS = [b"[", b"]", b"{", b"}", b",", b'"', b"-1", b"1e999", b"null", b"[1]", b"{}"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    return _harness.splice(rng, data, TOKENS, SEEDS)


def main(argv: list[str]) -> int:
    return _harness.main(
        argv, name="oip", doc=__doc__ or "", check=check, seeds=SEEDS, mutate=mutate
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
