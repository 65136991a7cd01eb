"""The service envelopes (backend/envelopes.py) with a real Context: what a handler sees and
what each request gets back, per envelope and for batches that mix them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from backend import envelopes
from backend.context import Context, RequestProcessor


def context(*headers: dict[str, str]) -> Context:
    made = Context("m", "/tmp", {"model": {"modelName": "m", "modelVersion": "2.0"}}, 4, None)
    made.request_ids = {i: f"req-{i}" for i in range(len(headers))}
    made.request_processor = [RequestProcessor(h) for h in headers]
    return made


def recorder(result: Any = None) -> tuple[list[Any], Any]:
    calls: list[Any] = []

    def entry(data: Any, ctx: Context) -> Any:
        calls.append((data, dict(ctx.request_ids or {})))
        return [row for row in data] if result is None else result(data)

    return calls, entry


def test_no_envelope_passes_the_batch_through() -> None:
    calls, entry = recorder()
    data = [{"body": b"a"}, {"body": b"b"}]
    assert envelopes.handle(entry, data, context({}, {}), ["", "body"]) == data
    assert len(calls) == 1


def test_kserve_v1_runs_each_request_on_its_instances() -> None:
    calls, entry = recorder(lambda instances: [x * 2 for x in instances])
    data = [{"body": {"instances": [1, 2]}}, {"body": b'{"inputs": [5]}'}]
    ctx = context({"explain": "False"}, {"explain": "True"})
    out = envelopes.handle(entry, data, ctx, ["kserve", "kserve"])
    assert out == [{"predictions": [2, 4]}, {"explanations": [10]}]
    # Each call saw only its own request, renumbered from 0; the batch's ids came back after.
    assert [ids for _, ids in calls] == [{0: "req-0"}, {0: "req-1"}]
    assert ctx.request_ids == {0: "req-0", 1: "req-1"}


def test_kserve_v2_reshapes_inputs_and_builds_the_response() -> None:
    seen: list[Any] = []

    def entry(tensors: list[Any], ctx: Context) -> list[Any]:
        seen.append((tensors, ctx.input_names))  # type: ignore[attr-defined]
        return [torch.tensor([[1.5, 2.5]]), [True, False], 7]

    document = {
        "id": "abc",
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
        ],
    }
    (reply,) = envelopes.handle(entry, [{"body": document}], context({}), ["kservev2"])
    assert seen == [([[[1.0, 2.0], [3.0, 4.0]], "hi"], ["a", "b"])]
    assert reply == {
        "id": "abc",
        "model_name": "m",
        "model_version": "2.0",
        "outputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "data": [1.5, 2.5]},
            {"name": "b", "shape": [2], "datatype": "BOOL", "data": [True, False]},
            {"name": "output-2", "shape": [1], "datatype": "INT64", "data": [7]},
        ],
    }


def test_kserve_v2_without_an_id_answers_the_request_id() -> None:
    document = {"inputs": [{"name": "a", "shape": [1], "datatype": "INT8", "data": [1]}]}
    (reply,) = envelopes.handle(
        lambda t, c: [["x"]], [{"body": json.dumps(document).encode()}], context({}), ["kservev2"]
    )
    assert reply["id"] == "req-0"
    assert reply["outputs"][0]["datatype"] == "BYTES"


def test_json_envelope_batches_instances_across_requests() -> None:
    calls, entry = recorder(lambda rows: [len(r) if isinstance(r, bytes) else r for r in rows])
    data = [{"body": {"instances": [1, {"b64": "aGk="}]}}, {"body": b'{"instances": [3]}'}]
    out = envelopes.handle(entry, data, context({}, {}), ["json", "json"])
    assert [json.loads(o) for o in out] == [{"predictions": [1, 2]}, {"predictions": [3]}]
    assert calls[0][0] == [1, b"hi", 3]


def test_a_mixed_batch_gives_each_request_its_own_shape() -> None:
    calls, entry = recorder(lambda rows: [f"plain:{len(rows)}"] * len(rows))
    data = [{"body": b"raw"}, {"body": {"instances": [1]}}, {"body": b"raw2"}]
    out = envelopes.handle(entry, data, context({}, {}, {}), ["", "kserve", ""])
    assert out[0] == out[2] == "plain:2"  # the two plain requests went to the handler together
    assert out[1] == {"predictions": ["plain:1"]}
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("result", "message"), [("nope", "Invalid model predict output"), ([1], "mismatched")]
)
def test_results_that_do_not_fit_the_batch_fail_it(result: Any, message: str) -> None:
    with pytest.raises(envelopes.OutputError, match=message):
        envelopes.handle(lambda d, c: result, [{}, {}], context({}, {}), ["", ""])
