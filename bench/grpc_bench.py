"""gRPC against REST on the same server: `python -m bench.grpc_bench`.

Starts `trioserve run` with the shipped echo example (as `bench/run.py` does, plus free gRPC
ports), then drives Predictions for the echo model at concurrency 1 and 32 with a grpcio
client (`grpc.aio`, one channel, N concurrent calls in a loop) and `POST /predictions/echo`
with an httpx client built the same way, so both sides pay a Python client's cost; wrk's REST
figures follow when wrk is installed. Prints requests/s, p50 and p99. Figures only: nothing
is asserted, and client and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx

from bench.common import EXAMPLES, LUA_POST, parse_wrk
from bench.servers import TRIOSERVE, start_server
from trioserve.grpc._proto import inference_pb2

PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
PAYLOAD = b"hello"


async def drive(
    call: Callable[[], Awaitable[None]], conns: int, seconds: float
) -> dict[str, float]:
    """``conns`` tasks calling back to back for ``seconds``; latency of each call."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(conns)))
    elapsed = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
        "errors": float(errors),
    }


async def grpc_scenario(port: int, conns: int, seconds: float) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        predict = channel.unary_unary(
            PREDICTIONS,
            request_serializer=inference_pb2.PredictionsRequest.SerializeToString,
            response_deserializer=inference_pb2.PredictionResponse.FromString,
        )
        request = inference_pb2.PredictionsRequest(model_name="echo", input={"data": PAYLOAD})

        async def call() -> None:
            reply = await predict(request, timeout=30)
            if reply.prediction != PAYLOAD:
                raise RuntimeError(f"unexpected prediction {reply.prediction!r}")

        await call()  # warm the channel
        return await drive(call, conns, seconds)


async def rest_scenario(port: int, conns: int, seconds: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:

        async def call() -> None:
            reply = await client.post("/predictions/echo", content=PAYLOAD, timeout=30)
            if reply.status_code != 200 or reply.content != PAYLOAD:
                raise RuntimeError(f"unexpected reply {reply.status_code}: {reply.content!r}")

        await call()
        return await drive(call, conns, seconds)


def wrk_scenario(port: int, conns: int, seconds: int, workdir: Path) -> dict[str, float]:
    lua = workdir / "post.lua"
    lua.write_text(LUA_POST)
    command = ["wrk", "-t1" if conns == 1 else "-t2", f"-c{conns}", f"-d{seconds}s", "--latency"]
    command += ["-s", str(lua), f"http://127.0.0.1:{port}/predictions/echo"]
    result = parse_wrk(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    return {
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": float(result.errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--workers", type=int, default=1, help="echo workers")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="trioserve-grpc-bench-"))
    server = start_server(TRIOSERVE, workdir, EXAMPLES, models=["echo"], workers=args.workers)
    try:
        server.wait_ready(["echo"])
        ports = server.ports
        print(f"trioserve gRPC vs REST: {args.duration} s per scenario, {args.workers} worker(s)")
        print(f"{'scenario':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
        rows: list[tuple[str, dict[str, float]]] = []
        for conns in (1, 32):
            grpc_result = asyncio.run(grpc_scenario(ports.grpc_inference, conns, args.duration))
            rows.append((f"gRPC Predictions (grpcio) c={conns}", grpc_result))
            rest = asyncio.run(rest_scenario(ports.inference, conns, args.duration))
            rows.append((f"REST predictions (httpx) c={conns}", rest))
            if shutil.which("wrk"):
                wrk = wrk_scenario(ports.inference, conns, args.duration, workdir)
                rows.append((f"REST predictions (wrk) c={conns}", wrk))
            for name, result in rows:
                print(
                    f"{name:<34}{result['rps']:>10.0f}{result['p50_ms']:>10.2f}"
                    f"{result['p99_ms']:>10.2f}{result['errors']:>8.0f}"
                )
            rows.clear()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
