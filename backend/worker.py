"""The worker loop: one model, one socket, one batch at a time.

The frontend sends ``Load`` once, then ``Batch`` frames; each batch gets exactly one final
``BatchResult`` (and, for streaming handlers, intermediate ones before it). A handler error fails
only its batch; the loop carries on. If the socket closes, the frontend is gone and we exit.
"""

from __future__ import annotations

import gc
import json
import logging
import socket
import sys
import time
import traceback
from functools import partial
from typing import Any

from backend import codec, envelopes
from backend.context import Context, RequestProcessor
from backend.handlers import compat
from backend.loader import LoadedHandler, load_handler
from backend.metrics import MetricsCache
from backend.util import PredictionException
from backend.wire import FrameDecoder, encode_frame, pb

logger = logging.getLogger("backend.worker")

# 64 KiB: a bigger buffer costs more per recv than the rare large batch saves.
READ_CHUNK = 1 << 16
SYSTEM_OOM = 507


class Channel:
    """Blocking framed socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder: FrameDecoder[pb.ToWorker] = FrameDecoder(pb.ToWorker)

    def receive(self) -> pb.ToWorker | None:
        while True:
            message = self.decoder.next_frame()
            if message is not None:
                return message
            data = self.sock.recv(READ_CHUNK)
            if not data:
                return None
            self.decoder.receive_data(data)

    def send(self, message: pb.FromWorker) -> None:
        self.sock.sendall(encode_frame(message))


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "CUDA" in str(exc))


class Worker:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.handler: LoadedHandler | None = None
        self.context: Context | None = None
        self.decode = True
        self.envelope = ""  # the model's service_envelope; a request may bring its own
        self.batch_id = 0

    # -- load -----------------------------------------------------------------------------
    def load(self, load: pb.Load) -> pb.Loaded:
        manifest = json.loads(load.manifest_json) if load.manifest_json else None
        yaml_config = json.loads(load.model_yaml_json) if load.model_yaml_json else {}
        self.decode = load.decode_input_request
        self.envelope = load.envelope if load.envelope in envelopes.ENVELOPES else ""
        metrics = MetricsCache(load.model_name)
        metrics.prefill(json.loads(load.model_metrics_json) if load.model_metrics_json else [])
        self.context = Context(
            load.model_name,
            load.model_dir,
            manifest,
            load.batch_size,
            load.gpu_id if load.gpu_id >= 0 else None,
            limit_max_image_pixels=load.limit_max_image_pixels,
            metrics=metrics,
            model_yaml_config=yaml_config,
        )
        self.context.model_version = load.model_version
        self.context.cl_socket = self.channel.sock
        self.context._send_intermediate = self._send_intermediate
        try:
            self.handler = load_handler(load.handler, load.model_dir, self.context)
        except Exception as exc:
            traceback.print_exc()
            if _is_oom(exc):
                return pb.Loaded(code=SYSTEM_OOM, message="System out of memory")
            return pb.Loaded(code=500, message=f"{type(exc).__name__}: {exc}")
        # What the imports and the handler's initialize left is there for good: out of the
        # collector's way, a full collection no longer walks torch's and the model's objects
        # (~80 ms with torch imported, in the middle of some batch). The young generations
        # only are collected first: a full collection now would cost the load those 80 ms.
        gc.collect(1)
        gc.freeze()
        return pb.Loaded(code=200, message=f"loaded model {load.model_name}")

    # -- batches --------------------------------------------------------------------------
    def _prepare(self, batch: pb.Batch, requests: list[pb.Request]) -> list[dict[str, Any]]:
        assert self.context is not None
        self.batch_id = batch.batch_id
        ids = {i: r.request_id for i, r in enumerate(requests)}
        self.context.request_ids = ids
        self.context.metrics.request_ids = ids
        self.context.request_processor = [
            RequestProcessor.deferred(partial(codec.request_headers, r)) for r in requests
        ]
        if batch.command == pb.DESCRIBE:
            return [{} for _ in requests]
        return [codec.request_data(r, self.decode) for r in requests]

    def _responses(self, outputs: list[Any], ids: dict[int, str], into: Any) -> None:
        """Add one response per output to ``into`` (a ``repeated Response`` field), in place:
        building messages to copy in costs twice as much."""
        assert self.context is not None
        processors = self.context.request_processor
        add = into.add
        for idx, value in enumerate(outputs):
            status, reason, set_headers = processors[idx].response_parts()
            response = add(request_id=ids[idx], status=status, body=codec.encode_output(value))
            if reason:
                response.reason = reason
            if set_headers:  # most handlers set none
                extra = dict(set_headers)
                response.content_type = extra.pop("content-type", extra.pop("Content-Type", ""))
                for name, header in extra.items():
                    response.headers.add(name=name, value=str(header))

    def _send_intermediate(
        self, outputs: list[Any], ids: dict[int, str], message: str, code: int
    ) -> None:
        assert self.context is not None
        for idx in range(len(outputs)):
            self.context.set_response_header(idx, "ts_stream_next", "true")
        reply = pb.FromWorker()
        result = reply.result
        result.batch_id = self.batch_id
        result.code = code
        result.message = message
        result.final = False
        self._responses(outputs, ids, result.responses)
        self.channel.send(reply)

    def predict(self, batch: pb.Batch, result: pb.BatchResult) -> None:
        """Run ``batch`` and fill ``result`` (the reply's, filled in place) with its outcome."""
        assert self.context is not None
        assert self.handler is not None
        result.batch_id = batch.batch_id
        result.final = True
        requests = list(batch.requests)  # each access to the field wraps every message anew
        try:
            data = self._prepare(batch, requests)
            ids = dict(self.context.request_ids or {})
            start = time.perf_counter()
            describe = batch.command == pb.DESCRIBE
            kinds = ["" if describe else (r.envelope or self.envelope) for r in requests]
            outputs = envelopes.handle(self.handler.entry, data, self.context, kinds)
            elapsed_ms = (time.perf_counter() - start) * 1000
            self.context.metrics.add_time("PredictionTime", round(elapsed_ms, 2), None, "ms")
            if self.context.request_processor and any(
                p.get_response_headers().get("ts_stream_next")
                for p in self.context.request_processor
            ):
                for idx in range(len(outputs)):
                    self.context.set_response_header(idx, "ts_stream_next", "false")
            self._responses(outputs, ids, result.responses)
            result.code, result.message = 200, "Prediction success"
        except envelopes.OutputError as exc:
            result.code, result.message = 503, str(exc)
        except PredictionException as exc:
            traceback.print_exc()
            result.code, result.message = exc.error_code, exc.message
        except codec.UnsupportedOutput:
            traceback.print_exc()
            result.code, result.message = 503, "Unsupported model output data type."
        except Exception as exc:
            traceback.print_exc()
            if _is_oom(exc):
                result.code, result.message = 507, "Out of resources"
            else:
                result.code, result.message = 503, "Prediction failed"
        if result.code != 200:
            del result.responses[:]
        for record in self.context.metrics.drain():
            metric = result.metrics.add(
                name=record.name,
                unit=record.unit,
                value=record.value,
                type=record.metric_type,
                request_id=record.request_id,
            )
            for name, value in record.dimensions:
                metric.dimensions.add(name=name, value=value)
        sys.stdout.flush()
        sys.stderr.flush()

    def serve(self) -> int:
        while True:
            message = self.channel.receive()
            if message is None:
                return 0
            kind = message.WhichOneof("kind")
            if kind == "load":
                loaded = self.load(message.load)
                self.channel.send(pb.FromWorker(loaded=loaded))
                if loaded.code != 200:
                    return 1
            elif kind == "batch":
                reply = pb.FromWorker()
                if self.handler is None:
                    reply.result.batch_id = message.batch.batch_id
                    reply.result.code = 500
                    reply.result.message = "model not loaded"
                else:
                    self.predict(message.batch, reply.result)
                self.channel.send(reply)


def run(fd: int) -> int:
    compat.install()  # `import ts...` in TorchServe handlers, unless a real ts is installed
    sock = socket.socket(fileno=fd)
    try:
        return Worker(Channel(sock)).serve()
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        sock.close()
