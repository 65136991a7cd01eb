"""KServe v1 and the Open Inference Protocol (v2) over REST on the inference port, against real
workers: the protocol's examples, the envelopes handlers see, readiness, the repository
extension and bad tensors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, make_config, wait_until
from tests.support.models import (
    SUM_HANDLER,
    expected_probs,
    handler_archive,
    manifest,
    torchscript_archive,
    write_archive,
)

# Answers what the envelope handed it, so a test sees the handler's view of a request.
SHOW_HANDLER = """
import json

def handle(data, context):
    if data is None:
        return None
    return [{
        "data": data,
        "input_names": getattr(context, "input_names", None),
        "explain": context.get_request_header(0, "explain"),
        "request_id": context.get_request_id(0),
        "batch": len(data),
    }]
"""

# Waits for a file before it loads, so a test holds a model in "loading".
GATED_HANDLER = """
import os, time

def handle(data, context):
    if data is None:
        gate = os.path.join(context.system_properties["model_dir"], "..", "..", "open")
        while not os.path.exists(os.environ.get("GATE_FILE", gate)):
            time.sleep(0.05)
        return None
    return [len(data)]
"""

# An OIP handler in TorchServe's kservev2 style: one output per input tensor, the sums.


async def register(server: Server, url: str, **params: str) -> httpx.Response:
    query = {"url": url, "initial_workers": "1", "synchronous": "true", **params}
    response = await server.management.post("/models", params=query)
    assert response.status_code == 200, response.text
    return response


@pytest.fixture
async def tiny(server: Server, model_store: Path) -> Server:
    torchscript_archive(model_store, "tiny")
    await register(server, "tiny.mar")
    return server


V2_REQUEST = {
    "id": "42",
    "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
}


# -- v1 -------------------------------------------------------------------------------------


async def test_v1_predict_runs_the_default_handler_on_the_instances(tiny: Server) -> None:
    r = await tiny.inference.post(
        "/v1/models/tiny:predict", json={"instances": [[1.0, 2.0, 3.0, 4.0]]}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    (row,) = r.json()["predictions"]
    assert row == pytest.approx(expected_probs([1.0, 2.0, 3.0, 4.0]), rel=1e-5)


async def test_v1_accepts_inputs_as_well_as_instances(tiny: Server) -> None:
    r = await tiny.inference.post(
        "/v1/models/tiny:predict", json={"inputs": [[0.0, 0.0, 0.0, 1.0]]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0] == pytest.approx(
        expected_probs([0.0, 0.0, 0.0, 1.0]), rel=1e-5
    )


async def test_v1_list_and_readiness(tiny: Server) -> None:
    assert (await tiny.inference.get("/v1/models")).json() == {"models": ["tiny"]}
    r = await tiny.inference.get("/v1/models/tiny")
    assert (r.status_code, r.json()) == (200, {"name": "tiny", "ready": True})
    r = await tiny.inference.get("/v1/models/nope")
    assert r.status_code == 404
    assert r.json() == {"error": "Model not found: nope"}
    # The management port keeps the contract's readiness answer.
    r = await tiny.management.get("/v1/models/tiny")
    assert (r.status_code, r.json()) == (200, {"name": "tiny", "ready": True})


async def test_v1_handler_sees_the_kserve_envelope(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "show", SHOW_HANDLER)
    await register(server, "show.mar")
    body = {"instances": [{"data": "aGk="}, {"data": "eW8="}]}
    r = await server.inference.post("/v1/models/show:predict", json=body)
    assert r.status_code == 200, r.text
    (seen,) = r.json()["predictions"]
    assert seen["data"] == body["instances"]
    assert seen["explain"] == "False"
    r = await server.inference.post("/v1/models/show:explain", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["explanations"][0]["explain"] == "True"


async def test_v1_bad_bodies_are_400_with_an_error(tiny: Server) -> None:
    for body in (b"not json", b"[1, 2]", b'{"instances": 3}', b"{}"):
        r = await tiny.inference.post("/v1/models/tiny:predict", content=body)
        assert r.status_code == 400, body
        assert set(r.json()) == {"error"}
    r = await tiny.inference.post("/v1/models/tiny:train", json={"instances": []})
    assert r.status_code == 400
    assert "train" in r.json()["error"]


# -- v2 -------------------------------------------------------------------------------------


async def test_v2_infer_returns_the_protocol_response(tiny: Server) -> None:
    r = await tiny.inference.post("/v2/models/tiny/infer", json=V2_REQUEST)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["id"] == "42"
    assert reply["model_name"] == "tiny"
    assert reply["model_version"] == "1.0"
    (output,) = reply["outputs"]
    assert output["name"] == "input-0"
    assert output["shape"] == [3]
    assert output["datatype"] == "FP64"
    assert output["data"] == pytest.approx(expected_probs([1.0, 2.0, 3.0, 4.0]), rel=1e-5)


async def test_v2_versioned_infer_reaches_that_version(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "sum", SUM_HANDLER, version="1.0", filename="sum1.mar")
    torchscript_archive(model_store, "sum", version="2.0")
    await register(server, "sum1.mar")
    await register(server, "sum.mar")
    body = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]}]}
    r = await server.inference.post("/v2/models/sum/versions/1.0/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == [{"name": "x", "shape": [1], "datatype": "INT64", "data": [10]}]
    assert r.json()["model_version"] == "1.0"
    metadata = (await server.inference.get("/v2/models/sum")).json()
    assert metadata == {
        "name": "sum",
        "versions": ["1.0", "2.0"],
        "platform": "pytorch",
        "inputs": [],
        "outputs": [],
    }
    r = await server.inference.get("/v2/models/sum/versions/2.0")
    assert r.json()["versions"] == ["2.0"]
    r = await server.inference.post("/v2/models/sum/versions/9.9/infer", json=body)
    assert r.status_code == 404
    assert "9.9" in r.json()["error"]


async def test_v2_handler_sees_reshaped_tensors_and_input_names(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "show", SHOW_HANDLER)
    await register(server, "show.mar")
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "a", "shape": [2, 3], "datatype": "INT32", "data": [1, 2, 3, 4, 5, 6]},
            {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["hello"]},
        ],
    }
    r = await server.inference.post("/v2/models/show/infer", json=body)
    assert r.status_code == 200, r.text
    (output,) = r.json()["outputs"]
    # The handler's dict came back as one BYTES element holding its JSON.
    assert output["datatype"] == "BYTES"
    seen = json.loads(output["data"][0])
    assert seen["data"] == [[[1, 2, 3], [4, 5, 6]], "hello"]
    assert seen["input_names"] == ["a", "b"]
    assert seen["batch"] == 2


async def test_v2_requested_outputs_filter_the_reply(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "sum", SUM_HANDLER)
    await register(server, "sum.mar")
    body = {
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "data": [1.5, 2]},
            {"name": "b", "shape": [1], "datatype": "INT8", "data": [7]},
        ],
        "outputs": [{"name": "b"}],
    }
    r = await server.inference.post("/v2/models/sum/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == [{"name": "b", "shape": [1], "datatype": "INT64", "data": [7]}]
    assert isinstance(r.json()["id"], str)
    assert r.json()["id"]  # the server's request id


async def test_v2_server_endpoints(tiny: Server) -> None:
    assert (await tiny.inference.get("/v2/health/live")).json() == {"live": True}
    r = await tiny.inference.get("/v2/health/ready")
    assert (r.status_code, r.json()) == (200, {"ready": True})
    metadata = (await tiny.inference.get("/v2")).json()
    assert metadata["name"] == "trioserve"
    assert "model_repository" in metadata["extensions"]
    r = await tiny.inference.get("/v2/models/tiny/ready")
    assert (r.status_code, r.json()) == (200, {"name": "tiny", "ready": True})
    r = await tiny.inference.get("/v2/models/nope/ready")
    assert r.status_code == 404
    assert r.json() == {"error": "Model not found: nope"}


async def test_readiness_is_false_while_draining(tiny: Server) -> None:
    tiny.state.draining = True  # what SIGTERM sets before the listeners close
    try:
        for path in ("/v2/health/ready", "/v2/models/tiny/ready", "/v1/models/tiny"):
            r = await tiny.inference.get(path)
            assert r.status_code == 503, path
            assert r.json()["ready"] is False
        assert (await tiny.inference.get("/v2/health/live")).json() == {"live": True}
    finally:
        tiny.state.draining = False


async def test_nothing_is_healthy_or_ready_until_the_startup_models_are_registered(
    server: Server,
) -> None:
    server.state.starting = True  # what serve() holds while it registers the startup models
    try:
        assert (await server.inference.get("/ping")).status_code == 500
        r = await server.inference.get("/v2/health/ready")
        assert (r.status_code, r.json()) == (503, {"ready": False})
    finally:
        server.state.starting = False
    assert (await server.inference.get("/v2/health/ready")).status_code == 200


async def test_readiness_is_false_while_loading(
    server: Server, model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "gate"
    monkeypatch.setenv("GATE_FILE", str(gate))  # inherited by the worker process
    handler_archive(model_store, "slow", GATED_HANDLER)
    query = {"url": "slow.mar", "initial_workers": "1", "synchronous": "false"}
    assert (await server.management.post("/models", params=query)).status_code == 202
    for path in ("/v2/models/slow/ready", "/v1/models/slow", "/v2/health/ready"):
        r = await server.inference.get(path)
        assert r.status_code == 503, path
        assert r.json()["ready"] is False
    index = (await server.inference.post("/v2/repository/index", json={})).json()
    assert index == [
        {"name": "slow", "version": "1.0", "state": "UNAVAILABLE", "reason": "no worker is ready"}
    ]
    gate.write_text("open")

    async def ready() -> bool:
        return (await server.inference.get("/v2/models/slow/ready")).status_code == 200

    await wait_until(ready)
    assert (await server.inference.get("/v2/health/ready")).json() == {"ready": True}
    r = await server.inference.post("/v2/repository/index", json={"ready": True})
    assert r.json() == [{"name": "slow", "version": "1.0", "state": "READY"}]


async def test_repository_load_and_unload(server: Server, model_store: Path) -> None:
    handler_archive(model_store, "sum", SUM_HANDLER)
    r = await server.inference.post("/v2/repository/models/sum/load")
    assert (r.status_code, r.json()) == (200, {"name": "sum", "load": True})
    assert (await server.inference.get("/v2/models/sum/ready")).status_code == 200
    body = {"inputs": [{"name": "x", "shape": [3], "datatype": "UINT8", "data": [1, 2, 3]}]}
    r = await server.inference.post("/v2/models/sum/infer", json=body)
    assert r.json()["outputs"][0]["data"] == [6]
    r = await server.inference.post("/v2/repository/models/sum/load")
    assert r.status_code == 409
    assert "already registered" in r.json()["error"]
    r = await server.inference.post("/v2/repository/models/sum/unload")
    assert (r.status_code, r.json()) == (200, {"name": "sum", "unload": True})
    assert (await server.inference.get("/v2/models/sum/ready")).status_code == 404
    r = await server.inference.post("/v2/repository/models/ghost/load")
    assert r.status_code == 404
    assert r.json() == {"error": "Model not found in model store: ghost"}


async def test_repository_load_follows_model_api_control(
    server_factory: object, model_store: Path
) -> None:
    handler_archive(model_store, "sum", SUM_HANDLER)
    server = await server_factory(make_config(model_store, enable_model_api=False))  # type: ignore[operator]
    r = await server.inference.post("/v2/repository/models/sum/load")
    assert r.status_code == 405
    assert r.json() == {"error": "Model API disabled"}


async def test_configured_envelope_applies_to_predictions(
    server_factory: object, model_store: Path
) -> None:
    """``service_envelope=kservev2`` makes /predictions speak v2 too (TorchServe's global
    envelope), while /v1 still gets the v1 envelope."""
    write_archive(
        model_store,
        "sum.mar",
        {"handler.py": SUM_HANDLER, "MAR-INF/MANIFEST.json": manifest("sum", "handler.py")},
    )
    config = make_config(model_store, service_envelope="kservev2")
    server = await server_factory(config)  # type: ignore[operator]
    await register(server, "sum.mar")
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "INT16", "data": [4, 5]}]}
    r = await server.inference.post("/predictions/sum", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == [{"name": "x", "shape": [1], "datatype": "INT64", "data": [9]}]
    r = await server.inference.post("/v1/models/sum:predict", json={"instances": [1, 2, 3]})
    assert r.json() == {"predictions": [1, 2, 3]}


# -- bad tensors ----------------------------------------------------------------------------

BAD_TENSORS = [
    ({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}, "needs 4 elements"),
    ({"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1]}, "Unknown datatype 'FLOAT'"),
    ({"name": "x", "shape": [2], "datatype": "INT8", "data": [1, 300]}, "not a valid INT8"),
    ({"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}, "not a valid BOOL"),
    ({"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}, "not a valid FP32"),
    ({"name": "x", "shape": [1], "datatype": "FP32", "data": [[[1]]]}, "nested deeper"),
    ({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}, "non-negative integers"),
    ({"name": "x", "shape": [1], "datatype": "FP32"}, 'has no "data"'),
    ({"shape": [1], "datatype": "FP32", "data": [1]}, 'needs a "name"'),
]


@pytest.mark.parametrize(("tensor", "message"), BAD_TENSORS)
async def test_bad_tensors_are_400_naming_the_problem(
    tiny: Server, tensor: dict[str, object], message: str
) -> None:
    r = await tiny.inference.post("/v2/models/tiny/infer", json={"inputs": [tensor]})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


async def test_hostile_bodies_are_400_and_the_model_serves_on(tiny: Server) -> None:
    deep = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": '
    deep += b"[" * 200_000 + b"1" + b"]" * 200_000 + b"}]}"
    for body in (deep, b"[" * 500_000, b"\xff\xfe", b'{"inputs": []}', b'{"inputs": [1]}'):
        r = await tiny.inference.post("/v2/models/tiny/infer", content=body)
        assert r.status_code == 400
        assert set(r.json()) == {"error"}
    r = await tiny.inference.post("/v2/models/tiny/infer", json=V2_REQUEST)
    assert r.status_code == 200


OIP_YAML = """
oip:
  platform: pytorch_torchscript
  inputs:
    - {name: input-0, datatype: FP32, shape: [-1, 4]}
    - {name: broken, datatype: FLOAT, shape: [1]}
  outputs:
    - {name: output-0, datatype: FP64, shape: [-1, 3]}
"""


async def test_model_metadata_lists_the_tensors_model_config_declares(
    server: Server, model_store: Path
) -> None:
    handler_archive(model_store, "sum", SUM_HANDLER, config_yaml=OIP_YAML)
    await register(server, "sum.mar")
    metadata = (await server.inference.get("/v2/models/sum")).json()
    assert metadata == {
        "name": "sum",
        "versions": ["1.0"],
        "platform": "pytorch_torchscript",
        # The malformed declaration is left out; metadata never fails the call.
        "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output-0", "datatype": "FP64", "shape": [-1, 3]}],
    }
