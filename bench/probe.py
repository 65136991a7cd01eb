"""One load against trioserve alone, with the frontend's own CPU per request:
``python -m bench.probe [--model echo|sleep10|cnn] [--workers N] [--batch B] [--conns C]
[--duration S] [--grpc] [--profile FILE]``.

The figure to compare two builds by (run it for each, alternating, on the same machine): the
frontend process's CPU µs per request, next to the whole tree's and wrk's req/s and latencies.
``--grpc`` drives gRPC Predictions with the suite's grpcio client instead of wrk.
``--profile FILE`` records the frontend with py-spy meanwhile (``pip install py-spy``; raw
collapsed stacks, the format ``py-spy record -f raw`` writes).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from bench.common import LUA_POST, lua_post_file
from bench.models import SOURCES, build_archive, cnn_input
from bench.scenarios import Load, grpc_load, rest_load
from bench.servers import start_server

BATCH_DELAY_MS = 5


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__)
    parser.add_argument("--model", choices=sorted(SOURCES), default="echo")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument("--grpc", action="store_true", help="gRPC Predictions, not REST")
    parser.add_argument("--profile", type=Path, help="py-spy raw output for the frontend")
    args = parser.parse_args(argv)
    if args.profile is not None and shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="trioserve-probe-"))
    store = work / "store"
    store.mkdir()
    build_archive(store, "m", SOURCES[args.model], work / "sources")
    script = work / "post.lua"
    if args.model == "cnn":
        script.write_text(lua_post_file(cnn_input(work / "cnn.bin"), "application/octet-stream"))
    else:
        script.write_text(LUA_POST)
    server = start_server("trioserve", work / "server", store)
    try:
        server.wait_healthy()
        server.register("m.mar", "m", args.workers, args.batch, BATCH_DELAY_MS)
        load = Load("m", script, args.workers, args.batch)
        if args.grpc:
            grpc_load(server, "m", 8, 2)  # warm-up
        else:
            rest_load(server, load, 8, 2)
        spy = None
        if args.profile is not None:
            command = ["py-spy", "record", "-r", "250", "-f", "raw", "--nonblocking"]
            command += ["-d", str(int(args.duration)), "-o", str(args.profile)]
            spy = subprocess.Popen(
                [*command, "-p", str(server.root_pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        before = _cpu(server.root_pid)
        if args.grpc:
            figures = grpc_load(server, "m", args.conns, args.duration)
        else:
            figures = rest_load(server, load, args.conns, args.duration)
        frontend_s = _cpu(server.root_pid) - before
        if spy is not None:
            spy.wait()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    requests = max(figures["req/s"] * args.duration, 1)
    label = (
        f"{'grpc ' if args.grpc else ''}{args.model} w={args.workers} b={args.batch} c={args.conns}"
    )
    shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items())
    print(f"{label}: frontend CPU µs/req {frontend_s / requests * 1e6:.0f}, {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
