"""Overload: a slow model, a small queue and many clients posting 100 kB bodies.

Prints the frontend's RSS over the run (it should stay flat: a full queue is refused from the
request head, so bodies are not buffered for requests that cannot be queued) and the split of
answers between 200 and 503. Figures only. Run: `python -m bench.overload [--duration S]`.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from bench.common import ROOT, free_port

SLOW = """
import time

def handle(data, context):
    if data is None:
        return None
    time.sleep(0.05)
    return [b"ok"] * len(data)
"""
LUA = (
    'wrk.method = "POST"\n'
    'wrk.body = string.rep("x", 100000)\n'
    'wrk.headers["Content-Type"] = "application/octet-stream"\n'
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="trioserve-overload-"))
    store = workdir / "store" / "slow"
    (store / "MAR-INF").mkdir(parents=True)
    (store / "handler.py").write_text(SLOW)
    (store / "MAR-INF" / "MANIFEST.json").write_text(
        '{"runtime": "python", "model": {"modelName": "slow", "handler": "handler.py",'
        ' "modelVersion": "1.0"}}'
    )
    inference, management = free_port(), free_port()
    config = workdir / "config.properties"
    config.write_text(
        f"inference_address=http://127.0.0.1:{inference}\n"
        f"management_address=http://127.0.0.1:{management}\n"
        "enable_metrics_api=false\njob_queue_size=10\ndefault_workers_per_model=1\n"
    )
    (workdir / "post.lua").write_text(LUA)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trioserve",
            "run",
            "--ts-config",
            str(config),
            "--model-store",
            str(workdir / "store"),
            "--models",
            "slow",
            "--log-config",
            str(ROOT / "bench" / "quiet-logging.json"),
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{inference}/ping").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        frontend = psutil.Process(server.pid)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(frontend.memory_info().rss)
                time.sleep(0.25)

        sampler = threading.Thread(target=sample)
        sampler.start()
        output = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{args.connections}",
                f"-d{args.duration}s",
                "-s",
                str(workdir / "post.lua"),
                f"http://127.0.0.1:{inference}/predictions/slow",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        stop.set()
        sampler.join()
        ok = httpx.post(f"http://127.0.0.1:{inference}/predictions/slow", content=b"x")
        mib = [s / 2**20 for s in samples]
        print(f"overload: {args.connections} connections, 100 kB bodies, {args.duration} s")
        print(f"frontend RSS MiB: start {mib[0]:.1f}  max {max(mib):.1f}  end {mib[-1]:.1f}")
        for line in output.splitlines():
            if "requests in" in line or "Non-2xx" in line or "Requests/sec" in line:
                print(" ", line.strip())
        print(f"after the run: /predictions/slow -> {ok.status_code}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
