"""Load scenarios against a real trioserve: `nox -s bench` (or `python -m bench.run`).

Starts the server as a user would (the `trioserve run` command, on free ports, with the shipped
echo example), drives it with wrk, and prints requests/s, p50 and p99 latency, plus CPU time per
request for the frontend and for the workers (from /proc). Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "models"
LUA_POST = 'wrk.method = "POST"\nwrk.body = "hello"\nwrk.headers["Content-Type"] = "text/plain"\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def parse_wrk(output: str) -> dict[str, float]:
    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "requests": float(total.group(1)) if total else 0.0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("--workers", type=int, default=1, help="echo workers")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 1
    inference, management = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="trioserve-bench-"))
    config = workdir / "config.properties"
    config.write_text(
        f"inference_address=http://127.0.0.1:{inference}\n"
        f"management_address=http://127.0.0.1:{management}\n"
        "enable_metrics_api=false\n"
        f"default_workers_per_model={args.workers}\n"
    )
    log = open(workdir / "server.log", "w")  # closed in the finally below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trioserve",
            "run",
            "--ts-config",
            str(config),
            "--model-store",
            str(EXAMPLES),
            "--models",
            "echo",
            "--log-config",
            str(ROOT / "bench" / "quiet-logging.json"),
        ],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{inference}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                described = httpx.get(f"http://127.0.0.1:{management}/models/echo").json()
                if described[0]["workers"] and all(
                    w["status"] == "READY" for w in described[0]["workers"]
                ):
                    break
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.2)
        frontend = psutil.Process(server.pid)
        lua = workdir / "post.lua"
        lua.write_text(LUA_POST)
        print(f"trioserve bench: {args.duration} s per scenario, {args.workers} echo worker(s)")
        print(
            f"{'scenario':<26}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
            f"{'front µs/req':>14}{'worker µs/req':>15}{'non-2xx':>9}"
        )
        for name, path, script in (
            ("GET /ping", "/ping", None),
            ("POST /predictions/echo", "/predictions/echo", lua),
        ):
            for conns in (1, 32):
                workers = frontend.children(recursive=True)
                before_front = cpu_seconds(frontend)
                before_workers = sum(cpu_seconds(w) for w in workers)
                command = [
                    "wrk",
                    "-t1" if conns == 1 else "-t2",
                    f"-c{conns}",
                    f"-d{args.duration}s",
                    "--latency",
                ]
                if script is not None:
                    command += ["-s", str(script)]
                output = subprocess.run(
                    [*command, base + path], capture_output=True, text=True, check=True
                ).stdout
                result = parse_wrk(output)
                front = (cpu_seconds(frontend) - before_front) / max(result["requests"], 1)
                worker = (sum(cpu_seconds(w) for w in workers) - before_workers) / max(
                    result["requests"], 1
                )
                print(
                    f"{name + f' c={conns}':<26}{result['rps']:>10.0f}{result['p50_ms']:>10.2f}"
                    f"{result['p99_ms']:>10.2f}{front * 1e6:>14.0f}{worker * 1e6:>15.0f}"
                    f"{result['errors']:>9.0f}"
                )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
