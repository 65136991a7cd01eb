"""The Open Inference Protocol gRPC service (KServe v2, ``inference.GRPCInferenceService``),
served on the gRPC inference port next to TorchServe's own services.

It answers under KServe's package name and under TorchServe's copy of it
(``org.pytorch.serve.grpc.openinference``), so clients generated from either proto work. Each
call uses the same cores as the REST v2 routes (api/kserve.py): a ModelInfer request becomes
the v2 JSON document the handler's ``kservev2`` envelope reads, and the handler's v2 JSON reply
becomes the response (raw little-endian outputs when the request sent raw inputs).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from trioserve.api import kserve, oip
from trioserve.api.state import ServerState
from trioserve.errors import ServeError, grpc_status_for_http
from trioserve.grpc._proto import open_inference_pb2 as opb
from trioserve.grpc.bridge import Bridge, CallError, Context

DESCRIPTOR = opb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# TorchServe's copy of the proto names the same service in its own package.
TORCHSERVE_NAME = "org.pytorch.serve.grpc.openinference.GRPCInferenceService"


def _status(exc: ServeError) -> CallError:
    code = exc.grpc_status if exc.code == exc.http_status else grpc_status_for_http(exc.code)
    return CallError(code, exc.message or type(exc).__name__)


class OpenInferenceService:
    def __init__(self, state: ServerState, bridge: Bridge) -> None:
        self._state = state
        self._bridge = bridge

    async def _unary(self, request: Any, context: Context, fn: Any) -> Any:
        try:
            return await self._bridge.run(context, fn, request)
        except ServeError as exc:
            raise _status(exc) from None

    async def ServerLive(self, request: Any, context: Context) -> Any:
        return await self._unary(request, context, self._live)

    async def ServerReady(self, request: Any, context: Context) -> Any:
        return await self._unary(request, context, self._ready)

    async def ModelReady(self, request: Any, context: Context) -> Any:
        return await self._unary(request, context, self._model_ready)

    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return await self._unary(request, context, self._server_metadata)

    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        return await self._unary(request, context, self._model_metadata)

    async def ModelInfer(self, request: Any, context: Context) -> Any:
        return await self._unary(request, context, self._infer)

    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        return await self._unary(request, context, self._load)

    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        return await self._unary(request, context, self._unload)

    # Trio side.

    async def _live(self, request: opb.ServerLiveRequest) -> opb.ServerLiveResponse:
        return opb.ServerLiveResponse(live=True)

    async def _ready(self, request: opb.ServerReadyRequest) -> opb.ServerReadyResponse:
        return opb.ServerReadyResponse(ready=kserve.server_ready(self._state))

    async def _model_ready(self, request: opb.ModelReadyRequest) -> opb.ModelReadyResponse:
        target = self._state.registry.resolve(request.name, request.version or None)
        return opb.ModelReadyResponse(ready=kserve.model_ready(self._state, target))

    async def _server_metadata(
        self, request: opb.ServerMetadataRequest
    ) -> opb.ServerMetadataResponse:
        return opb.ServerMetadataResponse(**kserve.server_metadata())

    async def _model_metadata(self, request: opb.ModelMetadataRequest) -> opb.ModelMetadataResponse:
        found = kserve.model_metadata(self._state, request.name, request.version or None)
        tensor = opb.ModelMetadataResponse.TensorMetadata
        return opb.ModelMetadataResponse(
            name=found["name"],
            versions=found["versions"],
            platform=found["platform"],
            inputs=[tensor(**t) for t in found["inputs"]],
            outputs=[tensor(**t) for t in found["outputs"]],
        )

    async def _infer(self, request: opb.ModelInferRequest) -> opb.ModelInferResponse:
        if not request.model_name:
            raise oip.TensorError("model_name is required.")
        version = request.model_version or None
        target = self._state.registry.resolve(request.model_name, version)
        document = infer_document(request)
        request_id = str(uuid.uuid4())
        job = kserve.kserve_job(
            request_id,
            oip_json(document),
            [],
            envelope=kserve.KSERVE_V2,
            explain=False,
        )
        result = await kserve.run_job(target, job, version)
        if result.status not in (0, 200):
            raise ServeError(result.body.decode("utf-8", "replace")[:500], code=result.status)
        wanted = [o.name for o in request.outputs]
        return infer_response(
            result.body,
            raw=bool(request.raw_input_contents),
            wanted=wanted,
            defaults=(target.name, target.version, request.id or request_id),
        )

    async def _load(
        self, request: opb.RepositoryModelLoadRequest
    ) -> opb.RepositoryModelLoadResponse:
        await kserve.repository_load(self._state, request.model_name)
        return opb.RepositoryModelLoadResponse(model_name=request.model_name, isLoaded=True)

    async def _unload(
        self, request: opb.RepositoryModelUnloadRequest
    ) -> opb.RepositoryModelUnloadResponse:
        await kserve.repository_unload(self._state, request.model_name)
        return opb.RepositoryModelUnloadResponse(model_name=request.model_name, isUnloaded=True)


def oip_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _parameter(value: opb.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _parameters(values: Mapping[str, opb.InferParameter]) -> dict[str, Any]:
    return {key: _parameter(value) for key, value in values.items()}


def _text(item: bytes, where: str) -> str:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise oip.TensorError(f"A BYTES element of {where} is not UTF-8 text.") from None


def infer_document(request: opb.ModelInferRequest) -> dict[str, Any]:
    """The v2 JSON document of a ModelInfer request (the tensors' elements from their typed
    contents, or decoded from ``raw_input_contents``), checked as a REST request is.

    Raises:
        TensorError: unknown datatypes, contents that do not fit the shapes, raw contents that
            do not match the inputs.
    """
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise oip.TensorError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs."
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        where = f"input {tensor.name!r}"
        datatype = oip.lookup_datatype(tensor.datatype, where)
        shape = oip.check_shape(list(tensor.shape), where)
        if raw:
            data = oip.unpack_raw(datatype, shape, raw[index], where)
        else:
            data = list(getattr(tensor.contents, datatype.contents))
        if datatype.kind == "bytes":
            data = [_text(item, where) for item in data]
        entry: dict[str, Any] = {
            "name": tensor.name,
            "shape": shape,
            "datatype": tensor.datatype,
            "data": data,
        }
        if tensor.parameters:
            entry["parameters"] = _parameters(tensor.parameters)
        inputs.append(entry)
    document: dict[str, Any] = {"model_name": request.model_name, "inputs": inputs}
    if request.id:
        document["id"] = request.id
    if request.parameters:
        document["parameters"] = _parameters(request.parameters)
    if request.outputs:
        document["outputs"] = [{"name": o.name} for o in request.outputs]
    return oip.check_infer_request(document)


def infer_response(
    body: bytes, *, raw: bool, wanted: list[str], defaults: tuple[str, str, str]
) -> opb.ModelInferResponse:
    """The ModelInferResponse for a handler's v2 JSON reply; ``raw`` puts the outputs in
    ``raw_output_contents`` (as the request's inputs were).

    Raises:
        ServeError: the reply is not a v2 document (a 500: the handler broke the protocol).
    """
    try:
        reply = oip.parse_json(body, "model's reply")
    except oip.TensorError as exc:
        raise ServeError(
            f"The model's reply is not a v2 inference response: {exc.message}"
        ) from None
    outputs = reply.get("outputs") if isinstance(reply, dict) else None
    if not isinstance(outputs, list):
        raise ServeError('The model\'s reply is not a v2 inference response (no "outputs").')
    name, version, request_id = defaults
    response = opb.ModelInferResponse(
        model_name=str(reply.get("model_name") or name),
        model_version=str(reply.get("model_version") or version),
        id=str(reply.get("id") or request_id),
    )
    for output in outputs:
        if not isinstance(output, dict) or (wanted and output.get("name") not in wanted):
            continue
        _add_output(response, output, raw)
    return response


def _add_output(response: opb.ModelInferResponse, output: dict[str, Any], raw: bool) -> None:
    datatype = oip.DATATYPES.get(str(output.get("datatype")))
    name = str(output.get("name", ""))
    if datatype is None:
        raise ServeError(f"The model's output {name!r} has an unknown datatype.")
    shape = output.get("shape")
    data = oip.flatten(output.get("data", []), oip.MAX_RANK, f"output {name!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        shape = [len(data)]
    tensor = response.outputs.add(name=name, datatype=datatype.name, shape=shape)
    try:
        if datatype.kind == "bytes":
            data = [item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in data]
        if raw:
            response.raw_output_contents.append(oip.pack_raw(datatype, data))
        else:
            getattr(tensor.contents, datatype.contents).extend(data)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ServeError(
            f"The model's output {name!r} does not fit {datatype.name}: {exc}"
        ) from None
