"""The gRPC inference service (contract §4.1): Ping, Predictions, StreamPredictions,
StreamPredictions2, each a thin adapter to the api/inference functions REST uses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from google.protobuf import empty_pb2

from backend.wire import pb
from trioserve.api.inference import health, later_chunks, start_job, stream_chunk_timeout
from trioserve.api.state import ServerState
from trioserve.errors import BadRequest, ServeError
from trioserve.grpc._proto import inference_pb2 as ipb
from trioserve.grpc.bridge import Bridge, Context, json_text
from trioserve.grpc.status import in_stream_status, inference_error
from trioserve.http.request import Input
from trioserve.models.job import Job
from trioserve.models.model import ModelVersion

Send = Callable[[ipb.PredictionResponse], Awaitable[None]]
DESCRIPTOR = ipb.DESCRIPTOR.services_by_name["InferenceAPIsService"]


class InferenceService:
    def __init__(self, state: ServerState, bridge: Bridge) -> None:
        self._state = state
        self._bridge = bridge

    async def Ping(
        self, request: empty_pb2.Empty, context: Context
    ) -> ipb.TorchServeHealthResponse:
        return await self._bridge.run(context, self._health)

    async def Predictions(
        self, request: ipb.PredictionsRequest, context: Context
    ) -> ipb.PredictionResponse:
        try:
            body = await self._bridge.run(context, self._predict, request)
        except ServeError as exc:
            raise inference_error(exc) from None
        return ipb.PredictionResponse(prediction=body)

    async def StreamPredictions(self, request: ipb.PredictionsRequest, context: Context) -> None:
        send = self._bridge.sender(context)
        try:
            await self._bridge.run(context, self._stream, request, send)
        except ServeError as exc:
            raise inference_error(exc) from None

    async def StreamPredictions2(
        self, requests: AsyncIterator[ipb.PredictionsRequest], context: Context
    ) -> None:
        """One request after another until the client half-closes; a request's error is a
        response carrying a google.rpc.Status, and the call goes on."""
        send = self._bridge.sender(context)
        async for request in requests:
            await self._bridge.run(context, self._sequence_step, request, send)

    # Trio side.

    async def _health(self) -> ipb.TorchServeHealthResponse:
        text, _ = health(self._state)
        return ipb.TorchServeHealthResponse(health=json_text({"status": text}))

    def _prepare(
        self,
        request: ipb.PredictionsRequest,
        headers: list[tuple[str, str]],
        flags: tuple[str, ...] = (),
    ) -> tuple[ModelVersion, Job, str | None]:
        """Resolve the model and build the job: each input becomes a raw-bytes handler input
        (no content type, never decoded), with a fresh request id (contract §4.1). Inputs named
        in ``flags`` are controls that became headers; they are not passed on (the worker would
        otherwise shadow the header of the same name with the input's entry)."""
        if not request.model_name:
            raise BadRequest("Parameter model_name is required.")
        version = request.model_version or None
        target = self._state.registry.resolve(request.model_name, version)
        inputs = [
            Input(name, bytes(value)) for name, value in request.input.items() if name not in flags
        ]
        return target, Job(str(uuid.uuid4()), inputs, headers, pb.PREDICT), version

    async def _predict(self, request: ipb.PredictionsRequest) -> bytes:
        """The whole body; a streaming handler's chunks are joined, as a REST client reads
        them."""
        target, job, version = self._prepare(request, [])
        parts: list[bytes] = []
        await self._run(target, job, version, _append_to(parts))
        return b"".join(parts)

    async def _stream(self, request: ipb.PredictionsRequest, send: Send) -> None:
        target, job, version = self._prepare(request, [])
        await self._run(target, job, version, _bodies(send))

    async def _run(
        self,
        target: ModelVersion,
        job: Job,
        version: str | None,
        emit: Callable[[pb.Response], Awaitable[None]],
    ) -> None:
        """Queue the job and emit each response, intermediate ones first; a handler that does
        not stream emits one. Leaving early (error, cancel, deadline) drops the job."""
        try:
            kind, first = await start_job(target, job, version)
            await emit(first)
            if kind == "final":
                return
            async with aclosing(later_chunks(job, stream_chunk_timeout(target))) as chunks:
                async for chunk in chunks:
                    await emit(chunk)
        finally:
            if not job.done:
                job.cancelled = True

    async def _sequence_step(self, request: ipb.PredictionsRequest, send: Send) -> None:
        """One StreamPredictions2 request. It needs a sequence id unless its input
        ``ts_request_sequence_start`` is "true" (then the server makes one); the id and the
        start/end flags reach the handler as the configured sequence headers."""
        config = self._state.config
        sequence_id = request.sequence_id
        start = _flag(request, config.ts_header_key_sequence_start)
        try:
            if not sequence_id and not start:
                raise BadRequest("Parameter sequenceId is required.")
            sequence_id = sequence_id or f"ts-seq-{uuid.uuid4()}"
            headers = [(config.ts_header_key_sequence_id, sequence_id)]
            if start:
                headers.append((config.ts_header_key_sequence_start, "true"))
            if _flag(request, config.ts_header_key_sequence_end):
                headers.append((config.ts_header_key_sequence_end, "true"))
            flags = (config.ts_header_key_sequence_start, config.ts_header_key_sequence_end)
            target, job, version = self._prepare(request, headers, flags)

            async def emit(response: pb.Response) -> None:
                await send(
                    ipb.PredictionResponse(prediction=response.body, sequence_id=sequence_id)
                )

            await self._run(target, job, version, emit)
        except ServeError as exc:
            status = in_stream_status(exc)
            await send(ipb.PredictionResponse(sequence_id=sequence_id, status=status))


def _flag(request: ipb.PredictionsRequest, name: str) -> bool:
    return bytes(request.input.get(name, b"")).strip().lower() == b"true"


def _append_to(parts: list[bytes]) -> Callable[[pb.Response], Awaitable[None]]:
    async def append(response: pb.Response) -> None:
        parts.append(response.body)

    return append


def _bodies(send: Send) -> Callable[[pb.Response], Awaitable[None]]:
    async def emit(response: pb.Response) -> None:
        await send(ipb.PredictionResponse(prediction=response.body))

    return emit
