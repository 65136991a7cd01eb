"""The worker's own cost per batch, hot, in one process: ``python -m bench.worker_loop
[--batch N] [--rounds R]``.

Decodes a batch frame like the frontend's (N small requests, each with a REST client's four
headers and one 64-byte body), runs it through ``backend.worker.Worker.predict`` with a handler
that answers at once, and encodes the reply: the median and mean µs per batch. A figure to
compare two builds of the backend by; under load the same code runs 3 to 5 times slower (cold caches
after a handler's wait), so a cut here shows up several times over in the gap between batches.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from backend.wire import FrameDecoder, encode_frame, pb
from backend.worker import Channel, Worker

HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return [b"ok"] * len(data)
"""
HEADERS = (
    ("host", "127.0.0.1:8080"),
    ("user-agent", "wrk"),
    ("content-type", "application/octet-stream"),
    ("content-length", "64"),
)
WARMUP = 500


def batch_frame(size: int) -> bytes:
    message = pb.ToWorker()
    message.batch.batch_id = 1
    message.batch.command = pb.PREDICT
    for index in range(size):
        request = message.batch.requests.add(request_id=f"{index:036d}")
        for name, value in HEADERS:
            request.headers.add(name=name, value=value)
        request.inputs.add(name="body", content_type="application/octet-stream", value=b"x" * 64)
    return encode_frame(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_loop", description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as model_dir:
        (Path(model_dir) / "handler.py").write_text(HANDLER)
        ours, theirs = socket.socketpair()
        with ours, theirs:
            worker = Worker(Channel(ours))
            load = pb.Load(model_name="m", model_dir=model_dir, handler="handler.py", gpu_id=-1)
            load.batch_size = args.batch
            load.decode_input_request = True
            loaded = worker.load(load)
            if loaded.code != 200:
                print(f"load failed: {loaded.message}", file=sys.stderr)
                return 1
            frame = batch_frame(args.batch)
            decoder = FrameDecoder(pb.ToWorker)
            times = []
            for _ in range(WARMUP + args.rounds):
                began = time.perf_counter()
                decoder.receive_data(frame)
                message = decoder.next_frame()
                assert message is not None
                reply = pb.FromWorker()
                worker.predict(message.batch, reply.result)
                encode_frame(reply)
                times.append(time.perf_counter() - began)
    measured = times[WARMUP:]
    print(
        f"batch {args.batch}: median {statistics.median(measured) * 1e6:.1f} µs, "
        f"mean {statistics.mean(measured) * 1e6:.1f} µs per batch"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
