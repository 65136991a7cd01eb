"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) against the real
server, with grpcio clients generated at test time from protos/open_inference.proto, as a
KServe user generates them, and from TorchServe's package name for the same service."""

from __future__ import annotations

import importlib
import struct
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import trio
from grpc_tools import protoc

from tests.conftest import Server, make_config
from tests.support.models import SUM_HANDLER, expected_probs, handler_archive, torchscript_archive
from trioserve._protogen import PROTOS, include_dirs
from trioserve.grpc._proto import open_inference_pb2

UPPER_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return [[tensor.upper()] for tensor in data]
"""
UPPER_YAML = """
oip:
  inputs: [{name: text, datatype: BYTES, shape: [1]}]
  outputs: [{name: text, datatype: BYTES, shape: [1]}]
"""
Code = grpc.StatusCode


def _generate(out: Path, package: str | None) -> tuple[ModuleType, ModuleType]:
    """grpcio messages and stub. The server in this process has registered KServe's package
    already (the descriptor pool is per process), so under that package the client takes the
    same message classes and only its stub is generated; under TorchServe's package name both
    are generated from a renamed copy of the proto."""
    if package is None:
        proto, stem = PROTOS / "open_inference.proto", "open_inference"
        outputs = [f"--grpc_python_out={out}"]
        includes = [f"-I{PROTOS}"]
    else:
        stem = "oip_client"
        proto = out / f"{stem}.proto"
        source = (PROTOS / "open_inference.proto").read_text()
        proto.write_text(source.replace("package inference;", f"package {package};"))
        outputs = [f"--python_out={out}", f"--grpc_python_out={out}"]
        includes = [f"-I{out}"]
    args = [*includes, *(f"-I{path}" for path in include_dirs()), *outputs]
    assert protoc.main(["protoc", *args, str(proto)]) == 0
    sys.path.insert(0, str(out))
    try:
        if package is None:
            messages = open_inference_pb2
            sys.modules[f"{stem}_pb2"] = messages
        else:
            messages = importlib.import_module(f"{stem}_pb2")
        return messages, importlib.import_module(f"{stem}_pb2_grpc")
    finally:
        sys.path.remove(str(out))
        for name in (f"{stem}_pb2", f"{stem}_pb2_grpc"):
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def kserve_pb(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    return _generate(tmp_path_factory.mktemp("oip_kserve"), None)


@pytest.fixture(scope="module")
def torchserve_pb(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    return _generate(tmp_path_factory.mktemp("oip_ts"), "org.pytorch.serve.grpc.openinference")


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args, timeout=60), abandon_on_cancel=True)


async def rpc_error(fn: Callable[..., Any], *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        await call(fn, *args)
    return info.value


@pytest.fixture
async def grpc_server(server_factory: Any, model_store: Path) -> Server:
    torchscript_archive(model_store, "tiny")
    handler_archive(model_store, "sum", SUM_HANDLER)
    handler_archive(model_store, "upper", UPPER_HANDLER, config_yaml=UPPER_YAML)
    server: Server = await server_factory(make_config(model_store))
    for url in ("tiny.mar", "sum.mar", "upper.mar"):
        query = {"url": url, "initial_workers": "1", "synchronous": "true"}
        assert (await server.management.post("/models", params=query)).status_code == 200
    return server


@pytest.fixture
def stub(grpc_server: Server, kserve_pb: tuple[ModuleType, ModuleType]) -> Iterator[Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_server.running.ports['grpc_inference']}")
    yield kserve_pb[1].GRPCInferenceServiceStub(channel)
    channel.close()


async def test_server_and_model_status(stub: Any, kserve_pb: Any) -> None:
    pb = kserve_pb[0]
    assert (await call(stub.ServerLive, pb.ServerLiveRequest())).live is True
    assert (await call(stub.ServerReady, pb.ServerReadyRequest())).ready is True
    metadata = await call(stub.ServerMetadata, pb.ServerMetadataRequest())
    assert metadata.name == "trioserve"
    assert "model_repository" in metadata.extensions
    ready = await call(stub.ModelReady, pb.ModelReadyRequest(name="tiny", version="1.0"))
    assert ready.ready is True
    model = await call(stub.ModelMetadata, pb.ModelMetadataRequest(name="tiny"))
    assert (model.name, list(model.versions), model.platform) == ("tiny", ["1.0"], "pytorch")
    upper = await call(stub.ModelMetadata, pb.ModelMetadataRequest(name="upper"))
    assert [(t.name, t.datatype, list(t.shape)) for t in upper.inputs] == [("text", "BYTES", [1])]
    assert [t.name for t in upper.outputs] == ["text"]
    error = await rpc_error(stub.ModelReady, pb.ModelReadyRequest(name="ghost"))
    assert error.code() == Code.NOT_FOUND
    assert error.details() == "Model not found: ghost"


async def test_model_infer_with_typed_contents(stub: Any, kserve_pb: Any) -> None:
    pb = kserve_pb[0]
    values = [1.0, 2.0, 3.0, 4.0]
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents()
    )
    tensor.contents.fp32_contents.extend(values)
    request = pb.ModelInferRequest(model_name="tiny", id="abc", inputs=[tensor])
    reply = await call(stub.ModelInfer, request)
    assert (reply.model_name, reply.model_version, reply.id) == ("tiny", "1.0", "abc")
    (output,) = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("input-0", "FP64", [3])
    assert list(output.contents.fp64_contents) == pytest.approx(expected_probs(values), rel=1e-5)
    assert not reply.raw_output_contents


async def test_model_infer_with_raw_contents(stub: Any, kserve_pb: Any) -> None:
    pb = kserve_pb[0]
    tensors = [
        pb.ModelInferRequest.InferInputTensor(name="a", datatype="INT32", shape=[2, 2]),
        pb.ModelInferRequest.InferInputTensor(name="b", datatype="FP64", shape=[3]),
    ]
    raw = [struct.pack("<4i", 1, 2, 3, -4), struct.pack("<3d", 0.5, 0.25, 1.0)]
    request = pb.ModelInferRequest(model_name="sum", inputs=tensors, raw_input_contents=raw)
    reply = await call(stub.ModelInfer, request)
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [
        ("a", "INT64", [1]),
        ("b", "FP64", [1]),
    ]
    assert struct.unpack("<q", reply.raw_output_contents[0]) == (2,)
    assert struct.unpack("<d", reply.raw_output_contents[1]) == (1.75,)
    assert reply.id  # the server's request id when the client sent none


async def test_model_infer_bytes_and_requested_outputs(stub: Any, kserve_pb: Any) -> None:
    pb = kserve_pb[0]
    tensors = []
    for name, text in (("x", b"hello"), ("y", b"world")):
        tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(text)
        tensors.append(tensor)
    request = pb.ModelInferRequest(
        model_name="upper",
        inputs=tensors,
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="y")],
    )
    reply = await call(stub.ModelInfer, request)
    (output,) = reply.outputs
    assert (output.name, output.datatype) == ("y", "BYTES")
    assert list(output.contents.bytes_contents) == [b"WORLD"]


async def test_model_infer_refuses_bad_tensors(stub: Any, kserve_pb: Any) -> None:
    pb = kserve_pb[0]
    short = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2, 2])
    short.contents.fp32_contents.extend([1.0, 2.0, 3.0])
    cases = [
        (pb.ModelInferRequest(model_name="sum", inputs=[short]), "needs 4 elements"),
        (
            pb.ModelInferRequest(
                model_name="sum",
                inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="F", shape=[1])],
            ),
            "Unknown datatype 'F'",
        ),
        (
            pb.ModelInferRequest(
                model_name="sum",
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT8", shape=[2])
                ],
                raw_input_contents=[b"\x01"],
            ),
            "needs 2",
        ),
        (
            pb.ModelInferRequest(model_name="sum", inputs=[short], raw_input_contents=[b"", b""]),
            "2 entries for 1 inputs",
        ),
    ]
    for request, message in cases:
        error = await rpc_error(stub.ModelInfer, request)
        assert error.code() == Code.INVALID_ARGUMENT, message
        assert message in error.details()
    error = await rpc_error(stub.ModelInfer, pb.ModelInferRequest(model_name="ghost"))
    assert error.code() == Code.NOT_FOUND
    # The model serves on.
    good = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT64", shape=[1])
    good.contents.int64_contents.append(5)
    reply = await call(stub.ModelInfer, pb.ModelInferRequest(model_name="sum", inputs=[good]))
    assert list(reply.outputs[0].contents.int64_contents) == [5]


async def test_torchserve_package_name_is_served_too(
    grpc_server: Server, torchserve_pb: tuple[ModuleType, ModuleType]
) -> None:
    pb, pb_grpc = torchserve_pb
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_server.running.ports['grpc_inference']}")
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert (await call(stub.ServerLive, pb.ServerLiveRequest())).live is True
        tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT64", shape=[2])
        tensor.contents.int64_contents.extend([20, 22])
        reply = await call(stub.ModelInfer, pb.ModelInferRequest(model_name="sum", inputs=[tensor]))
        assert list(reply.outputs[0].contents.int64_contents) == [42]
    finally:
        channel.close()


async def test_repository_load_and_unload(stub: Any, kserve_pb: Any, model_store: Path) -> None:
    pb = kserve_pb[0]
    handler_archive(model_store, "extra", SUM_HANDLER)
    loaded = await call(stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="extra"))
    assert (loaded.model_name, loaded.isLoaded) == ("extra", True)
    assert (await call(stub.ModelReady, pb.ModelReadyRequest(name="extra"))).ready is True
    request = pb.RepositoryModelUnloadRequest(model_name="extra")
    unloaded = await call(stub.RepositoryModelUnload, request)
    assert unloaded.isUnloaded is True
    error = await rpc_error(stub.ModelReady, pb.ModelReadyRequest(name="extra"))
    assert error.code() == Code.NOT_FOUND
