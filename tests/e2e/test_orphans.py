"""No orphans: when the frontend is SIGKILLed, its workers follow it within 2 s, the idle ones
and the one deep in a handler call alike (backend/__main__.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.models import handler_archive
from tests.support.spawn import START_LIMIT_S, free_ports, spawned

ROOT = Path(__file__).resolve().parents[2]
# The promise: every worker is gone this soon after the frontend was killed.
FOLLOW_LIMIT_S = 2.0

# Writes a marker once it is busy, then holds its worker for a long time: a worker that only
# noticed its channel's EOF between batches would outlive the frontend by a minute.
BUSY_HANDLER = """
import os, time


def handle(data, context):
    if data is None:
        return None
    with open({marker!r}, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
    return ["done"] * len(data)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie waiting for its new parent to reap it does not."""
    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Frontend:
    def __init__(self, process: subprocess.Popen[bytes], management: str, inference: str) -> None:
        self.process = process
        self.management = management
        self.inference = inference
        self.worker_pids: list[int] = []

    def wait_workers(self, model: str, count: int) -> list[int]:
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            try:
                workers = httpx.get(f"{self.management}/models/{model}", timeout=5).json()[0][
                    "workers"
                ]
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                workers = []
            if len(workers) == count and all(w["status"] == "READY" for w in workers):
                self.worker_pids = [int(w["pid"]) for w in workers]
                return self.worker_pids
            time.sleep(0.1)
        raise AssertionError(f"{count} workers of {model} never became ready")


@pytest.fixture
def frontend(tmp_path: Path) -> Iterator[Frontend]:
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "tmp").mkdir()
    marker = tmp_path / "busy"
    handler_archive(store, "busy", BUSY_HANDLER.format(marker=str(marker)))
    ports = free_ports()
    config = tmp_path / "config.properties"
    config.write_text(
        "".join(f"{name}_address=http://127.0.0.1:{port}\n" for name, port in ports.items())
        + "default_workers_per_model=2\n"
    )
    args = ["--ts-config", str(config), "--model-store", str(store), "--models", "busy=busy.mar"]
    started: Frontend | None = None
    try:
        with spawned(args, tmp_path) as process:
            started = Frontend(
                process,
                f"http://127.0.0.1:{ports['management']}",
                f"http://127.0.0.1:{ports['inference']}",
            )
            yield started
    finally:
        # Never leave a worker behind, even when failing.
        for pid in started.worker_pids if started is not None else []:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def assert_all_gone_soon(pids: list[int]) -> None:
    deadline = time.monotonic() + FOLLOW_LIMIT_S
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return
        time.sleep(0.02)
    left = [pid for pid in pids if alive(pid)]
    raise AssertionError(f"workers {left} outlived their frontend by {FOLLOW_LIMIT_S} s")


def test_idle_workers_exit_when_the_frontend_is_killed(frontend: Frontend) -> None:
    pids = frontend.wait_workers("busy", 2)
    assert all(alive(pid) for pid in pids)
    frontend.process.send_signal(signal.SIGKILL)
    frontend.process.wait()
    assert_all_gone_soon(pids)


def test_busy_worker_exits_mid_batch_when_the_frontend_is_killed(
    frontend: Frontend, tmp_path: Path
) -> None:
    pids = frontend.wait_workers("busy", 2)
    marker = tmp_path / "busy"

    def request() -> None:
        try:
            httpx.post(f"{frontend.inference}/predictions/busy", content=b"x", timeout=90)
        except httpx.HTTPError:
            pass  # the server is killed under it

    client = threading.Thread(target=request, daemon=True)
    client.start()
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text()):
        assert time.monotonic() < deadline, "the handler never started"
        time.sleep(0.02)
    assert int(marker.read_text()) in pids
    frontend.process.send_signal(signal.SIGKILL)
    frontend.process.wait()
    assert_all_gone_soon(pids)
    client.join(timeout=10)


def test_worker_outlives_the_thread_that_spawned_it() -> None:
    """Linux's parent-death signal fires when the *thread* that forked a process exits, and trio
    forks workers from cached threads that exit after 10 s idle: that must not end a worker."""
    ours, theirs = socket.socketpair()
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn_then_exit() -> None:
        command = [sys.executable, "-m", "backend", "--fd", str(theirs.fileno())]
        process = subprocess.Popen(
            [*command, "--parent-pid", str(os.getpid())], pass_fds=(theirs.fileno(),), cwd=ROOT
        )
        spawned.append(process)
        deadline = time.monotonic() + 30
        # Armed once its watchdog thread runs; only then does this thread's exit count.
        while psutil.Process(process.pid).num_threads() < 2:
            assert time.monotonic() < deadline, "the worker never started its watchdog"
            time.sleep(0.01)

    spawner = threading.Thread(target=spawn_then_exit)
    spawner.start()
    spawner.join()
    theirs.close()
    (process,) = spawned
    try:
        time.sleep(0.5)
        assert process.poll() is None, f"worker ended with {process.returncode}"
    finally:
        ours.close()  # EOF on its channel: the worker's own way out
        returncode = process.wait(timeout=10)
    assert returncode == 0
