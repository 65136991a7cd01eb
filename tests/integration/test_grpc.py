"""gRPC (contract §4) against the real server, with grpcio clients generated at test time from
the repo's protos, as a TorchServe user generates them: every RPC, its errors and status codes,
streaming, cancellation, deadlines, message limits, TLS and the drain on shutdown."""

from __future__ import annotations

import importlib
import json
import logging
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import trio
import trustme
from google.protobuf import empty_pb2
from google.rpc import error_details_pb2
from grpc_tools import protoc

from tests.conftest import Server, make_config, start_server, wait_until
from tests.support.models import (
    DESCRIBE_HANDLER,
    ECHO_HANDLER,
    FAILING_HANDLER,
    INSPECT_HANDLER,
    STREAMING_HANDLER,
    handler_archive,
)
from trioserve._protogen import GRPC_PROTOS, PROTOS, include_dirs
from trioserve.errors import ConfigError
from trioserve.grpc.loop import THREAD_NAME
from trioserve.grpc.server import RECEIVE_SLACK

# Logs each request's tag to the file its "log" input names, sleeps for its "sleep" input, and
# answers its tag and the worker's pid: gRPC forwards no headers, so the controls are inputs.
SLOW_HANDLER = """
import json, os, time

def handle(data, context):
    if data is None:
        return None
    out = []
    for row in data:
        tag = bytes(row["tag"]).decode()
        with open(bytes(row["log"]).decode(), "a") as log:
            log.write(tag + "\\n")
        time.sleep(float(bytes(row.get("sleep", b"0")).decode()))
        out.append({"tag": tag, "pid": os.getpid()})
    return out
"""
JAVA = "org.pytorch.serve."
BAD_REQUEST = f"{JAVA}http.BadRequestException"
INTERNAL_ERROR = f"{JAVA}http.InternalServerException"
NOT_FOUND = f"{JAVA}archive.model.ModelNotFoundException"
VERSION_NOT_FOUND = f"{JAVA}archive.model.ModelVersionNotFoundException"
CONFLICT = f"{JAVA}http.ConflictStatusException"
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """grpcio messages and stubs, generated from protos/ with grpc_tools."""
    out = tmp_path_factory.mktemp("grpc_stubs")
    args = [f"-I{path}" for path in include_dirs()]
    args += [f"--python_out={out}", f"--grpc_python_out={out}"]
    assert protoc.main(["protoc", *args, *(str(PROTOS / p) for p in GRPC_PROTOS)]) == 0
    sys.path.insert(0, str(out))
    try:
        names = ("inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc")
        return SimpleNamespace(**{name: importlib.import_module(name) for name in names})
    finally:
        sys.path.remove(str(out))


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A blocking grpcio call in a thread (every call passes its own timeout)."""
    kwargs.setdefault("timeout", 60)
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), abandon_on_cancel=True)


async def rpc_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        await call(fn, *args, **kwargs)
    return info.value


class Clients:
    def __init__(self, pb: SimpleNamespace, server: Server, **channel: Any) -> None:
        ports = server.running.ports
        self.pb = pb
        self.server = server
        self.channels = [
            _channel(f"127.0.0.1:{ports['grpc_inference']}", **channel),
            _channel(f"127.0.0.1:{ports['grpc_management']}", **channel),
        ]
        self.inference = pb.inference_pb2_grpc.InferenceAPIsServiceStub(self.channels[0])
        self.management = pb.management_pb2_grpc.ManagementAPIsServiceStub(self.channels[1])

    def predict(self, model: str, version: str = "", **inputs: bytes | str) -> Any:
        values = {k: v.encode() if isinstance(v, str) else v for k, v in inputs.items()}
        return self.pb.inference_pb2.PredictionsRequest(
            model_name=model, model_version=version, input=values
        )

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


def _channel(target: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(
        target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def grpc_config(model_store: Path, **overrides: Any) -> Any:
    # Port 0: any free port, reported in Running.ports.
    ports = {"grpc_inference_port": 0, "grpc_management_port": 0}
    return make_config(model_store, **(ports | overrides))


@pytest.fixture
async def grpc_server(server_factory: Any, model_store: Path) -> Server:
    return await server_factory(grpc_config(model_store))  # type: ignore[no-any-return]


@pytest.fixture
def clients(pb: SimpleNamespace, grpc_server: Server) -> Iterator[Clients]:
    made = Clients(pb, grpc_server)
    yield made
    made.close()


async def register(c: Clients, name: str, workers: int = 1, **fields: Any) -> str:
    request = c.pb.management_pb2.RegisterModelRequest(
        url=f"{name}.mar", initial_workers=workers, synchronous=True, **fields
    )
    return (await call(c.management.RegisterModel, request)).msg  # type: ignore[no-any-return]


async def worker_pids(server: Server, name: str) -> list[int]:
    workers = (await server.management.get(f"/models/{name}")).json()[0]["workers"]
    return [w["pid"] for w in workers if w["status"] == "READY"]


async def logged(log: Path, tag: str) -> bool:
    path = trio.Path(log)
    return await path.exists() and tag in (await path.read_text()).split()


async def test_ping_reports_health_as_rest_json(clients: Clients) -> None:
    reply = await call(clients.inference.Ping, empty_pb2.Empty())
    assert reply.health == '{\n  "status": "Healthy"\n}'


async def test_predictions_pass_raw_bytes_without_headers(
    clients: Clients, model_store: Path
) -> None:
    handler_archive(model_store, "inspect", INSPECT_HANDLER)
    await register(clients, "inspect")
    request = clients.predict("inspect", data=b'{"a": 1}', other=b"\xff\x00")
    seen = json.loads((await call(clients.inference.Predictions, request)).prediction)
    assert seen["values"] == {"data": '{"a": 1}', "other": "\xff\x00"}
    assert set(seen["types"].values()) <= {"bytes", "bytearray"}  # never JSON/text-decoded
    assert not any(k.startswith("x-") or k == "content-type" for k in seen["headers"])
    uuid.UUID(seen["request_id"])


async def test_predictions_on_the_default_and_a_given_version(
    clients: Clients, model_store: Path
) -> None:
    handler_archive(model_store, "echo", ECHO_HANDLER, filename="echo.mar")
    handler_archive(model_store, "echo", ECHO_HANDLER, version="2.0", filename="echo2.mar")
    await register(clients, "echo")
    await call(
        clients.management.RegisterModel,
        clients.pb.management_pb2.RegisterModelRequest(
            url="echo2.mar", initial_workers=1, synchronous=True
        ),
    )
    predict = clients.inference.Predictions
    for version in ("", "1.0", "2.0"):
        reply = await call(predict, clients.predict("echo", version, data="x"))
        assert reply.prediction == b"x"
    error = await rpc_error(predict, clients.predict("echo", "9", data="x"))
    assert error.code() is Code.INTERNAL
    assert error.details() == (
        f"Model version: 9 does not exist for model: echo\n{VERSION_NOT_FOUND}"
    )


async def test_prediction_errors_map_to_the_contract_statuses(
    clients: Clients, model_store: Path
) -> None:
    handler_archive(model_store, "failing", FAILING_HANDLER)
    handler_archive(model_store, "idle", ECHO_HANDLER)
    await register(clients, "failing")
    await register(clients, "idle", workers=0)
    predict = clients.inference.Predictions
    cases = [
        # Refused before a worker saw it: INTERNAL, as in 0.12.
        (clients.predict(""), Code.INTERNAL, "Parameter model_name is required.", BAD_REQUEST),
        (clients.predict("nope"), Code.INTERNAL, "Model not found: nope", NOT_FOUND),
        # A worker's error: its HTTP code's status (503, 418).
        (clients.predict("failing", body="raise"), Code.UNAVAILABLE, "Prediction failed", None),
        (
            clients.predict("failing", body="custom"),
            Code.FAILED_PRECONDITION,
            "custom failure",
            None,
        ),
    ]
    for request, code, message, java in cases:
        error = await rpc_error(predict, request)
        assert (error.code(), error.details()) == (code, f"{message}\n{java or INTERNAL_ERROR}")
    error = await rpc_error(predict, clients.predict("idle", data="x"))
    assert error.code() is Code.INTERNAL
    assert error.details().startswith('Model "idle" has no worker to serve inference request.')
    assert error.details().endswith(f"\n{INTERNAL_ERROR}")


async def test_stream_predictions_send_each_intermediate_response(
    clients: Clients, model_store: Path
) -> None:
    handler_archive(model_store, "streaming", STREAMING_HANDLER)
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register(clients, "streaming")
    await register(clients, "echo")

    def collect(request: Any, timeout: float) -> list[bytes]:
        stream = clients.inference.StreamPredictions(request, timeout=timeout)
        return [r.prediction for r in stream]

    streamed = clients.predict("streaming", data="x")
    assert await call(collect, streamed) == [b"hello ", b"hello ", b"world"]
    # A handler that does not stream answers with one message (0.12 failed here: §10.5).
    assert await call(collect, clients.predict("echo", data="once")) == [b"once"]
    # Unary Predictions on a streaming handler answers the whole body, as REST does.
    reply = await call(clients.inference.Predictions, streamed)
    assert reply.prediction == b"hello hello world"
    error = await rpc_error(collect, clients.predict("nope"))
    assert error.code() is Code.INTERNAL


async def test_stream_predictions2_keeps_the_call_open_and_reports_errors_in_stream(
    clients: Clients, model_store: Path
) -> None:
    handler_archive(model_store, "inspect", INSPECT_HANDLER)
    await register(clients, "inspect")
    requests = [
        clients.predict("inspect", data="no sequence"),
        clients.predict("inspect", data="first", ts_request_sequence_start="true"),
        clients.pb.inference_pb2.PredictionsRequest(
            model_name="inspect", input={"data": b"next"}, sequence_id="seq-1"
        ),
        clients.pb.inference_pb2.PredictionsRequest(model_name="nope", sequence_id="seq-2"),
    ]

    def exchange(timeout: float) -> list[Any]:
        return list(clients.inference.StreamPredictions2(iter(requests), timeout=timeout))

    replies = await call(exchange)
    assert len(replies) == 4
    missing, started, following, unknown = replies
    assert missing.status.code == Code.INTERNAL.value[0]
    assert missing.status.message == "Parameter sequenceId is required."
    info = error_details_pb2.ErrorInfo()
    assert missing.status.details[0].Unpack(info)
    assert info.reason == f"{JAVA}http.BadRequestException"
    assert started.sequence_id.startswith("ts-seq-")
    headers = json.loads(started.prediction)["headers"]
    assert headers["ts_request_sequence_id"] == started.sequence_id
    assert headers["ts_request_sequence_start"] == "true"
    assert following.sequence_id == "seq-1"
    assert json.loads(following.prediction)["headers"]["ts_request_sequence_id"] == "seq-1"
    assert unknown.sequence_id == "seq-2"
    assert unknown.status.message == "Model not found: nope"


async def test_register_scale_set_default_unregister_answer_rest_status_texts(
    clients: Clients, model_store: Path
) -> None:
    mpb = clients.pb.management_pb2
    m = clients.management
    handler_archive(model_store, "echo", ECHO_HANDLER, filename="echo.mar")
    handler_archive(model_store, "echo", ECHO_HANDLER, version="2.0", filename="echo2.mar")
    reply = await call(m.RegisterModel, mpb.RegisterModelRequest(url="echo.mar"))
    assert reply.msg == (
        'Model "echo" Version: 1.0 registered with 0 initial workers. '
        "Use scale workers API to add workers for the model."
    )
    second = mpb.RegisterModelRequest(url="echo2.mar", initial_workers=1)
    reply = await call(m.RegisterModel, second)
    assert reply.msg == "Processing worker updates..."  # synchronous defaults to false
    scale = mpb.ScaleWorkerRequest(model_name="echo", model_version="1.0", synchronous=True)
    reply = await call(m.ScaleWorker, scale)  # min_worker unset: 1
    assert reply.msg == "Workers scaled to 1 for model: echo, version: 1.0"
    reply = await call(m.ScaleWorker, mpb.ScaleWorkerRequest(model_name="echo", min_worker=2))
    assert reply.msg == "Processing worker updates..."
    reply = await call(m.SetDefault, mpb.SetDefaultRequest(model_name="echo", model_version="2.0"))
    assert reply.msg == 'Default version successfully updated for model "echo" to "2.0"'
    unregister = mpb.UnregisterModelRequest(model_name="echo", model_version="1.0")
    assert (await call(m.UnregisterModel, unregister)).msg == 'Model "echo" unregistered'
    listed = (await clients.server.management.get("/models")).json()
    assert listed["models"] == [{"modelName": "echo", "modelUrl": "echo2.mar"}]


async def test_management_errors_map_to_statuses_with_java_classes(
    clients: Clients, model_store: Path
) -> None:
    mpb = clients.pb.management_pb2
    m = clients.management
    handler_archive(model_store, "echo", ECHO_HANDLER)
    await register(clients, "echo", workers=0)
    reg, scale = m.RegisterModel, m.ScaleWorker
    cases = [
        (reg, mpb.RegisterModelRequest(), Code.INVALID_ARGUMENT,
         f"Parameter url is required.\n{BAD_REQUEST}"),
        (reg, mpb.RegisterModelRequest(url="missing.mar"), Code.NOT_FOUND,
         f"Model not found at: missing.mar\n{NOT_FOUND}"),
        (reg, mpb.RegisterModelRequest(url="echo.mar", runtime="java"), Code.INVALID_ARGUMENT,
         f"Invalid RuntimeType value: java\n{BAD_REQUEST}"),
        # 0.12 answered UNKNOWN here (contract §10.4).
        (reg, mpb.RegisterModelRequest(url="echo.mar"), Code.ALREADY_EXISTS,
         f"Model version 1.0 is already registered for model echo\n{CONFLICT}"),
        (scale, mpb.ScaleWorkerRequest(model_name="nope"), Code.NOT_FOUND,
         f"Model not found: nope\n{NOT_FOUND}"),
        (scale, mpb.ScaleWorkerRequest(model_name="echo", min_worker=3, max_worker=2),
         Code.INVALID_ARGUMENT, f"max_worker cannot be less than min_worker.\n{BAD_REQUEST}"),
        (m.SetDefault, mpb.SetDefaultRequest(model_name="echo", model_version="9"), Code.NOT_FOUND,
         f"Model version 9 does not exist for model echo\n{VERSION_NOT_FOUND}"),
        (m.UnregisterModel, mpb.UnregisterModelRequest(model_name="nope"), Code.NOT_FOUND,
         f"Model not found: nope\n{NOT_FOUND}"),
        (m.DescribeModel, mpb.DescribeModelRequest(model_name="nope"), Code.NOT_FOUND,
         f"Model not found: nope\n{NOT_FOUND}"),
    ]  # fmt: skip
    for method, request, code, details in cases:
        error = await rpc_error(method, request)
        assert (error.code(), error.details()) == (code, details), request


async def test_model_api_disabled_is_permission_denied(
    pb: SimpleNamespace, server_factory: Any, model_store: Path
) -> None:
    server = await server_factory(grpc_config(model_store, enable_model_api=False))
    clients = Clients(pb, server)
    try:
        mpb = pb.management_pb2
        for method, request in (
            (clients.management.RegisterModel, mpb.RegisterModelRequest(url="echo.mar")),
            (clients.management.UnregisterModel, mpb.UnregisterModelRequest(model_name="echo")),
        ):
            error = await rpc_error(method, request)
            assert (error.code(), error.details()) == (
                Code.PERMISSION_DENIED,
                "Model API disabled",
            )
    finally:
        clients.close()


async def test_list_and_describe_answer_the_rest_json_text(
    clients: Clients, model_store: Path
) -> None:
    mpb = clients.pb.management_pb2
    for name in ("a", "b", "c"):
        handler_archive(model_store, name, ECHO_HANDLER)
        await register(clients, name, workers=0)
    rest = clients.server.management
    # limit unset is 100, as for REST (0.12 answered an empty page: contract §10.4).
    reply = await call(clients.management.ListModels, mpb.ListModelsRequest())
    assert reply.msg == (await rest.get("/models")).text.removesuffix("\n")
    assert len(json.loads(reply.msg)["models"]) == 3
    page = mpb.ListModelsRequest(limit=1, next_page_token=1)
    paged = await call(clients.management.ListModels, page)
    assert paged.msg == (await rest.get("/models?limit=1&next_page_token=1")).text.removesuffix(
        "\n"
    )
    assert json.loads(paged.msg) == {
        "nextPageToken": "2",
        "models": [{"modelName": "b", "modelUrl": "b.mar"}],
    }
    describe = mpb.DescribeModelRequest(model_name="a")
    described = await call(clients.management.DescribeModel, describe)
    assert described.msg == (await rest.get("/models/a")).text.removesuffix("\n")


async def test_describe_customized_asks_a_worker(clients: Clients, model_store: Path) -> None:
    handler_archive(model_store, "described", DESCRIBE_HANDLER)
    await register(clients, "described")
    mpb = clients.pb.management_pb2
    request = mpb.DescribeModelRequest(model_name="described", customized=True)
    [body] = json.loads((await call(clients.management.DescribeModel, request)).msg)
    assert json.loads(body["customizedMetadata"]) == {"data1": "1", "data2": "2"}


async def test_cancelled_call_drops_its_queued_job_without_restarting_the_worker(
    clients: Clients, model_store: Path, tmp_path: Path
) -> None:
    handler_archive(model_store, "slow", SLOW_HANDLER)
    await register(clients, "slow")
    [pid] = await worker_pids(clients.server, "slow")
    log = tmp_path / "ran.log"
    predict = clients.inference.Predictions
    busy_request = clients.predict("slow", tag="busy", sleep="1.5", log=str(log))
    busy = predict.future(busy_request, timeout=60)
    await wait_until(lambda: logged(log, "busy"))
    abandoned = predict.future(clients.predict("slow", tag="abandoned", log=str(log)), timeout=60)
    await trio.sleep(0.3)
    assert abandoned.cancel()
    assert json.loads((await call(busy.result)).prediction)["tag"] == "busy"
    await call(predict, clients.predict("slow", tag="later", log=str(log)))
    assert log.read_text().split() == ["busy", "later"]
    assert await worker_pids(clients.server, "slow") == [pid]


async def test_deadline_answers_deadline_exceeded_and_drops_the_job(
    clients: Clients, model_store: Path, tmp_path: Path
) -> None:
    handler_archive(model_store, "slow", SLOW_HANDLER)
    await register(clients, "slow")
    [pid] = await worker_pids(clients.server, "slow")
    log = tmp_path / "ran.log"
    predict = clients.inference.Predictions
    with trio.fail_after(10):
        # Held by the worker past its deadline: answered into the void, the worker keeps going.
        request = clients.predict("slow", tag="held", sleep="1", log=str(log))
        error = await rpc_error(predict, request, timeout=0.3)
    assert error.code() is Code.DEADLINE_EXCEEDED
    busy_request = clients.predict("slow", tag="busy", sleep="1.5", log=str(log))
    busy = predict.future(busy_request, timeout=60)
    await wait_until(lambda: logged(log, "busy"))
    queued = clients.predict("slow", tag="expired", log=str(log))
    error = await rpc_error(predict, queued, timeout=0.3)
    assert error.code() is Code.DEADLINE_EXCEEDED
    await call(busy.result)
    await call(predict, clients.predict("slow", tag="later", log=str(log)))
    assert log.read_text().split() == ["held", "busy", "later"]
    assert await worker_pids(clients.server, "slow") == [pid]


async def test_message_limits_refuse_oversized_requests_and_replies(
    pb: SimpleNamespace, server_factory: Any, model_store: Path
) -> None:
    config = grpc_config(model_store, max_request_size=1000, max_response_size=600)
    clients = Clients(pb, await server_factory(config))
    try:
        handler_archive(model_store, "echo", ECHO_HANDLER)
        await register(clients, "echo")
        predict = clients.inference.Predictions
        error = await rpc_error(predict, clients.predict("echo", data=b"x" * 5000))
        assert error.code() is Code.RESOURCE_EXHAUSTED
        assert error.details().startswith("gRPC message exceeds maximum size 1000: 50")
        # Far over the limit: grpcio refuses it before it is buffered, with its own text.
        huge = clients.predict("echo", data=b"x" * (1000 + RECEIVE_SLACK))
        assert (await rpc_error(predict, huge)).code() is Code.RESOURCE_EXHAUSTED
        assert (await call(predict, clients.predict("echo", data="small"))).prediction == b"small"
        # A describe reply (about 900 bytes of JSON) is over max_response_size.
        describe = pb.management_pb2.DescribeModelRequest(model_name="echo")
        error = await rpc_error(clients.management.DescribeModel, describe)
        assert error.code() is Code.RESOURCE_EXHAUSTED
    finally:
        clients.close()


async def test_tls_with_the_configured_certificate(
    pb: SimpleNamespace, server_factory: Any, model_store: Path, tmp_path: Path
) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    key, chain = tmp_path / "key.pem", tmp_path / "cert.pem"
    issued.private_key_pem.write_to_path(str(key))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(chain), append=True)
    config = grpc_config(
        model_store, enable_grpc_ssl=True, private_key_file=str(key), certificate_file=str(chain)
    )
    server = await server_factory(config)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    secure = Clients(pb, server, credentials=credentials)
    plain = Clients(pb, server)
    try:
        reply = await call(secure.inference.Ping, empty_pb2.Empty())
        assert json.loads(reply.health) == {"status": "Healthy"}
        error = await rpc_error(plain.inference.Ping, empty_pb2.Empty(), timeout=5)
        assert error.code() is Code.UNAVAILABLE
    finally:
        secure.close()
        plain.close()


async def test_tls_without_readable_files_fails_the_start(
    server_factory: Any, model_store: Path, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.pem")
    config = grpc_config(
        model_store, enable_grpc_ssl=True, private_key_file=missing, certificate_file=missing
    )
    # Nested in the server's nurseries' groups, as any start failure; the CLI unwraps it.
    with pytest.raises(ExceptionGroup) as info:
        await server_factory(config)
    assert info.group_contains(ConfigError, match="enable_grpc_ssl: cannot load", depth=None)


async def test_a_port_that_cannot_be_bound_is_logged_and_the_rest_serves(
    pb: SimpleNamespace, server_factory: Any, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="trioserve.grpc.server"):
            server = await server_factory(grpc_config(model_store, grpc_inference_port=port))
        assert "grpc_inference" not in server.running.ports
        assert f"grpc_inference not served: cannot listen on 127.0.0.1:{port}" in caplog.text
        channel = grpc.insecure_channel(f"127.0.0.1:{server.running.ports['grpc_management']}")
        try:
            stub = pb.management_pb2_grpc.ManagementAPIsServiceStub(channel)
            reply = await call(stub.ListModels, pb.management_pb2.ListModelsRequest())
            assert json.loads(reply.msg) == {"models": []}
        finally:
            channel.close()


async def test_shutdown_lets_a_call_in_flight_finish(
    clients: Clients, model_store: Path, tmp_path: Path
) -> None:
    handler_archive(model_store, "slow", SLOW_HANDLER)
    await register(clients, "slow")
    log = tmp_path / "ran.log"
    request = clients.predict("slow", tag="in-flight", sleep="3", log=str(log))
    in_flight = clients.inference.Predictions.future(request, timeout=60)
    await wait_until(lambda: logged(log, "in-flight"))
    clients.server.running.shutdown()
    refused: list[grpc.RpcError] = []

    async def new_call_refused() -> bool:
        try:
            await call(clients.inference.Ping, empty_pb2.Empty(), timeout=5)
        except grpc.RpcError as exc:
            refused.append(exc)
            return True
        return False

    await wait_until(new_call_refused, limit_s=10)
    assert (refused[0].code(), refused[0].details()) == (
        Code.UNAVAILABLE,
        "The server is shutting down.",
    )
    assert not in_flight.done()  # still draining
    reply = await call(in_flight.result)
    assert json.loads(reply.prediction)["tag"] == "in-flight"


async def test_shutdown_aborts_a_call_that_outlasts_the_drain(
    pb: SimpleNamespace, model_store: Path, tmp_path: Path
) -> None:
    handler_archive(model_store, "slow", SLOW_HANDLER)
    log = tmp_path / "ran.log"
    with trio.fail_after(30):  # the handler would sleep for 120 s
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, grpc_config(model_store, drain_timeout=1))
            clients = Clients(pb, server)
            try:
                await register(clients, "slow")
                request = clients.predict("slow", tag="long", sleep="120", log=str(log))
                in_flight = clients.inference.Predictions.future(request, timeout=60)
                await wait_until(lambda: logged(log, "long"))
                server.running.shutdown()
                error = await rpc_error(in_flight.result)
                assert error.code() in (Code.UNAVAILABLE, Code.CANCELLED)
            finally:
                clients.close()
                await server.inference.aclose()
                await server.management.aclose()
    # serve() has returned, and the gRPC loop's thread with it.
    assert THREAD_NAME not in {thread.name for thread in threading.enumerate()}
