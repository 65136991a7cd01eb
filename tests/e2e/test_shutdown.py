"""SIGTERM drains: listeners stop, accepted requests are answered, workers stop, exit 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.support.models import handler_archive
from tests.support.spawn import free_ports, spawned, wait_ready, write_properties

SLOW_HANDLER = """
import time

def handle(data, context):
    if data is None:
        return None
    out = []
    for idx, row in enumerate(data):
        log = context.get_request_header(idx, "x-log-file")
        if log:
            with open(log, "a") as f:
                f.write("started\\n")
        time.sleep(float(context.get_request_header(idx, "x-sleep") or 0))
        out.append(b"finished")
    return out
"""


def wait_for(predicate: object, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_sigterm_answers_the_request_in_flight_and_stops_everything(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    store = tmp_path / "store"
    store.mkdir()
    handler_archive(store, "slow", SLOW_HANDLER)
    ports = free_ports()
    config = write_properties(tmp_path, ports)
    args = ["--ts-config", str(config), "--model-store", str(store), "--models", "slow.mar"]
    with spawned(args, tmp_path) as process:
        base = f"http://127.0.0.1:{ports['inference']}"
        management = f"http://127.0.0.1:{ports['management']}"
        wait_ready(management, "slow")
        worker_pids = [
            w["pid"] for w in httpx.get(f"{management}/models/slow").json()[0]["workers"]
        ]
        log = tmp_path / "handler.log"
        result: dict[str, httpx.Response] = {}

        def slow_request() -> None:
            result["reply"] = httpx.post(
                f"{base}/predictions/slow",
                content=b"x",
                headers={"x-sleep": "2", "x-log-file": str(log)},
                timeout=60,
            )

        thread = threading.Thread(target=slow_request)
        thread.start()
        wait_for(lambda: log.exists() and "started" in log.read_text())
        process.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                httpx.get(f"{base}/ping", timeout=1)
            except httpx.ConnectError:
                return True
            except httpx.HTTPError:
                return False
            return False

        wait_for(refused, 10)  # listeners closed while the slow request is still running
        assert thread.is_alive()
        thread.join(timeout=30)
        assert result["reply"].status_code == 200
        assert result["reply"].content == b"finished"
        assert process.wait(timeout=40) == 0
        wait_for(lambda: not any(psutil.pid_exists(p) for p in worker_pids), 10)
