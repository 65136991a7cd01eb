"""The scenarios: each drives one running server and returns its figures.

Load scenarios run wrk (REST) or a grpcio client (gRPC) and read the server tree's CPU time
around the run; lifecycle scenarios time a start, a SIGTERM and a worker's restart after
kill -9, and read the tree's memory once the models are loaded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from bench.common import ECHO_BODY, TreeCPU, run_wrk, tree_memory
from bench.report import CPU, EFFICIENCY, P99, REQS
from bench.servers import Server
from trioserve.grpc._proto import inference_pb2

PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
SLEEP_S = 0.010  # the sleep10 handler's time per batch


@dataclass(frozen=True)
class Load:
    """A wrk load: POST ``script``'s body to ``/predictions/<model>``."""

    model: str
    script: Path
    workers: int = 1
    batch: int = 1


def _figures(
    rps: float, requests: int, cpu_s: float, p50: float, p90: float, p99: float, errors: int
) -> dict[str, float]:
    return {
        REQS: rps,
        "p50 ms": p50,
        "p90 ms": p90,
        P99: p99,
        CPU: cpu_s * 1000 / max(requests, 1),
        "errors": float(errors),
    }


def rest_load(server: Server, load: Load, conns: int, seconds: float) -> dict[str, float]:
    cpu = TreeCPU(server.root_pid)
    cpu.start()
    result = run_wrk(
        server.inference_url(f"/predictions/{load.model}"), conns, seconds, load.script
    )
    used = cpu.stop()
    return _figures(
        result.rps,
        result.requests,
        used,
        result.p50_ms,
        result.p90_ms,
        result.p99_ms,
        result.errors,
    )


def efficiency(rps: float, workers: int, batch: int) -> float:
    """Throughput as a share of the ideal for a handler taking SLEEP_S per batch, in %."""
    return 100 * rps / (workers * batch / SLEEP_S)


async def _grpc_drive(
    port: int, model: str, conns: int, seconds: float
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        predict = channel.unary_unary(
            PREDICTIONS,
            request_serializer=inference_pb2.PredictionsRequest.SerializeToString,
            response_deserializer=inference_pb2.PredictionResponse.FromString,
        )
        request = inference_pb2.PredictionsRequest(model_name=model, input={"data": ECHO_BODY})
        await predict(request, timeout=30)  # the channel is connected before the clock starts
        stop = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                began = time.perf_counter()
                try:
                    reply = await predict(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if reply.prediction != ECHO_BODY:
                    errors += 1
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(conns)))
        return latencies, errors, time.perf_counter() - began


def grpc_load(server: Server, model: str, conns: int, seconds: float) -> dict[str, float]:
    """``conns`` concurrent Predictions calls back to back on one grpcio channel."""
    cpu = TreeCPU(server.root_pid)
    cpu.start()
    latencies, errors, elapsed = asyncio.run(
        _grpc_drive(server.ports.grpc_inference, model, conns, seconds)
    )
    used = cpu.stop()
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return _figures(
        len(latencies) / elapsed,
        len(latencies),
        used,
        cuts[49] * 1000,
        cuts[89] * 1000,
        cuts[98] * 1000,
        errors,
    )


def kill_worker(server: Server, model: str, timeout: float = 60.0) -> dict[str, float]:
    """kill -9 the model's (only) worker; seconds until a prediction is answered again and
    until describe shows a new worker READY."""
    (pid,) = server.worker_pids(model)[:1]
    began = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    serving = ready = float("nan")
    with httpx.Client(timeout=timeout) as client:
        deadline = began + timeout
        while time.monotonic() < deadline:
            try:
                reply = client.post(
                    server.inference_url(f"/predictions/{model}"), content=ECHO_BODY
                )
            except httpx.HTTPError:
                reply = None
            if reply is not None and reply.status_code == 200:
                serving = time.monotonic() - began
                break
            time.sleep(0.01)
        while time.monotonic() < deadline:
            try:
                pids = server.worker_pids(model)
                if pid not in pids and server.ready(model):
                    ready = time.monotonic() - began
                    break
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.01)
    return {"kill -9 -> serving s": serving, "kill -9 -> READY s": ready}


def lifecycle(
    server: Server, models: list[str], kill_model: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Start-up figures, then the restart after kill -9, then SIGTERM: (startup, restart)."""
    healthy = server.wait_healthy()
    ready = server.wait_ready(models)
    time.sleep(1.0)  # let start-up allocations settle before reading memory
    memory = tree_memory(server.root_pid)
    restart = kill_worker(server, kill_model)
    stopped = server.stop()
    startup = {
        "/ping healthy s": healthy,
        "three models READY s": ready,
        "tree RSS MiB": memory.rss_mib,
        "tree PSS MiB": memory.pss_mib,
        "processes": float(memory.processes),
        "SIGTERM -> all gone s": stopped,
    }
    return startup, restart


def sleep_efficiency(figures: dict[str, float], load: Load) -> dict[str, float]:
    figures = dict(figures)
    figures[EFFICIENCY] = efficiency(figures[REQS], load.workers, load.batch)
    return figures
