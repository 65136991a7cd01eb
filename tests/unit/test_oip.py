"""The sans-IO Open Inference Protocol tensor checks and the raw tensor codec."""

from __future__ import annotations

import struct

import pytest

from trioserve.api import oip


def tensor(**fields: object) -> dict[str, object]:
    return {"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2]} | fields


def test_a_valid_request_comes_back_unchanged() -> None:
    document = {"id": "1", "inputs": [tensor(), tensor(name="y", shape=[1, 2], data=[[3, 4]])]}
    assert oip.check_infer_request(document) is document


@pytest.mark.parametrize(
    ("datatype", "good", "bad"),
    [
        ("BOOL", [True], [1]),
        ("UINT8", [255], [256]),
        ("UINT8", [0], [-1]),
        ("INT8", [-128], [-129]),
        ("INT16", [32767], [32768]),
        ("INT32", [-(2**31)], [2**31]),
        ("INT64", [2**63 - 1], [2**63]),
        ("UINT64", [2**64 - 1], [2**64]),
        ("INT64", [1], [True]),
        ("INT64", [1], [1.5]),
        ("FP32", [1], [float("nan")]),
        ("FP64", [1.5], ["1.5"]),
        ("BYTES", ["a"], [1]),
    ],
)
def test_elements_must_fit_their_datatype(
    datatype: str, good: list[object], bad: list[object]
) -> None:
    oip.check_tensor(tensor(datatype=datatype, shape=[1], data=good), 0)
    with pytest.raises(oip.TensorError, match=f"not a valid {datatype}"):
        oip.check_tensor(tensor(datatype=datatype, shape=[1], data=bad), 0)


def test_the_element_count_must_fit_the_shape() -> None:
    with pytest.raises(oip.TensorError, match=r"Shape \[2, 3\] of input 'x' needs 6 elements"):
        oip.check_tensor(tensor(shape=[2, 3], data=[1, 2, 3, 4, 5]), 0)
    assert oip.check_tensor(tensor(shape=[2, 0], data=[]), 0) == []
    assert oip.check_tensor(tensor(shape=[], data=[7]), 0) == [7]


def test_nesting_is_bounded_by_the_shape_and_walked_without_recursion() -> None:
    assert oip.flatten([[1, 2], [3, [4]]], 3, "t") == [1, 2, 3, 4]
    with pytest.raises(oip.TensorError, match="nested deeper than its shape"):
        oip.flatten([[[1]]], 2, "t")
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(oip.TensorError, match="nested deeper"):
        oip.flatten(deep, oip.MAX_RANK, "t")


def test_json_too_deep_for_the_parser_is_a_tensor_error() -> None:
    with pytest.raises(oip.TensorError, match="nested too deeply"):
        oip.parse_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(oip.TensorError, match="not valid JSON"):
        oip.parse_json(b"\xff")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be a JSON object"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [tensor()], "id": 5}, '"id" must be a string'),
        ({"inputs": [tensor()], "parameters": []}, '"parameters" of the request'),
        ({"inputs": [tensor()], "outputs": [{"nom": "x"}]}, '"outputs" must be'),
        ({"inputs": [tensor(shape=[True])]}, "non-negative integers"),
        ({"inputs": [tensor(shape=[1] * 33)]}, "at most 32"),
        ({"inputs": [tensor(datatype={})]}, "Unknown datatype"),
        ({"inputs": [tensor(data=3)]}, "\"data\" of input 'x' must be a list"),
    ],
)
def test_bad_documents_name_their_problem(document: object, message: str) -> None:
    with pytest.raises(oip.TensorError, match=message):
        oip.check_infer_request(document)


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("BOOL", [True, False]),
        ("UINT8", [0, 255]),
        ("INT16", [-5, 7]),
        ("UINT32", [4_000_000_000, 1]),
        ("INT64", [-(2**63), 2**63 - 1]),
        ("FP16", [0.5, -2.0]),
        ("FP32", [1.5, 0.25]),
        ("FP64", [1e300, -1e-300]),
    ],
)
def test_raw_contents_round_trip(datatype: str, data: list[object]) -> None:
    spec = oip.DATATYPES[datatype]
    raw = oip.pack_raw(spec, data)
    assert len(raw) == len(data) * struct.calcsize("<" + spec.code)
    assert oip.unpack_raw(spec, [len(data)], raw, "t") == data


def test_raw_bytes_are_length_prefixed() -> None:
    spec = oip.DATATYPES["BYTES"]
    raw = oip.pack_raw(spec, ["ab", b"\x00"])
    assert raw == b"\x02\x00\x00\x00ab\x01\x00\x00\x00\x00"
    assert oip.unpack_raw(spec, [2], raw, "t") == [b"ab", b"\x00"]
    with pytest.raises(oip.TensorError, match="inside an element"):
        oip.unpack_raw(spec, [1], b"\x05\x00\x00\x00ab", "t")
    with pytest.raises(oip.TensorError, match="inside a length prefix"):
        oip.unpack_raw(spec, [1], b"\x05\x00", "t")


def test_raw_length_must_fit_shape_and_datatype() -> None:
    with pytest.raises(oip.TensorError, match="are 3 bytes; shape \\[1\\] of INT32 needs 4"):
        oip.unpack_raw(oip.DATATYPES["INT32"], [1], b"abc", "t")
