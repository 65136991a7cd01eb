"""Starting, watching and stopping the servers under test: trioserve (``trioserve run``, as a user
starts it) and, for comparison, TorchServe 0.12 (``torchserve --start --foreground``).

Both get free ports, the same config keys, the same model store and the same registrations;
``Server`` hides the few ways they differ (TorchServe's launcher is a Python process whose child,
the JVM, is the server that must get the signal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import psutil

from bench.common import QUIET_LOGGING, free_port, tree

TRIOSERVE = "trioserve"
TORCHSERVE = "torchserve"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    @classmethod
    def fresh(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


def config_text(ports: Ports, workers: int) -> str:
    """config.properties both servers read (TorchServe ignores nothing here it needs)."""
    return (
        f"inference_address=http://127.0.0.1:{ports.inference}\n"
        f"management_address=http://127.0.0.1:{ports.management}\n"
        f"metrics_address=http://127.0.0.1:{ports.metrics}\n"
        f"grpc_inference_port={ports.grpc_inference}\n"
        f"grpc_management_port={ports.grpc_management}\n"
        f"default_workers_per_model={workers}\n"
        "disable_token_authorization=true\n"
        "enable_model_api=true\n"
        "enable_metrics_api=false\n"
        "number_of_gpu=0\n"
    )


class Server:
    """One running server. ``started_at`` is ``time.monotonic()`` just before the spawn."""

    def __init__(
        self,
        kind: str,
        process: subprocess.Popen[bytes],
        ports: Ports,
        workdir: Path,
        log: IO[bytes],
        started_at: float,
    ) -> None:
        self.kind = kind
        self.process = process
        self.ports = ports
        self.workdir = workdir
        self._log = log
        self.started_at = started_at
        self.client = httpx.Client(timeout=30)

    @property
    def root_pid(self) -> int:
        """The process whose tree holds everything the server runs (measured for CPU, RSS)."""
        return self.process.pid

    def signal_pid(self) -> int | None:
        """The process that gets SIGTERM: trioserve itself, or TorchServe's JVM."""
        if self.kind == TRIOSERVE:
            return self.process.pid
        for child in tree(self.process.pid)[1:]:
            try:
                if child.name() == "java":
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        return None

    def inference_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports.inference}{path}"

    def management_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports.management}{path}"

    def _poll(self, check: object, timeout: float, what: str) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited while waiting for {what} (see {self.log})")
            try:
                if check():  # type: ignore[operator]
                    return time.monotonic() - self.started_at
            except (httpx.HTTPError, KeyError, IndexError, ValueError, TypeError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.kind}: {what} not within {timeout:g} s (see {self.log})")

    @property
    def log(self) -> Path:
        return self.workdir / "server.log"

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds from the spawn until ``/ping`` answers Healthy."""

        def check() -> bool:
            reply = self.client.get(self.inference_url("/ping"), timeout=2)
            return reply.status_code == 200 and reply.json().get("status") == "Healthy"

        return self._poll(check, timeout, "/ping healthy")

    def ready(self, model: str) -> bool:
        described = self.client.get(self.management_url(f"/models/{model}"), timeout=2).json()
        workers = described[0]["workers"]
        return bool(workers) and all(w["status"] == "READY" for w in workers)

    def wait_ready(self, models: list[str], timeout: float = START_TIMEOUT_S) -> float:
        """Seconds from the spawn until every worker of every model in ``models`` is READY."""
        return self._poll(lambda: all(self.ready(m) for m in models), timeout, "models READY")

    def worker_pids(self, model: str) -> list[int]:
        described = self.client.get(self.management_url(f"/models/{model}")).json()
        return [int(w["pid"]) for w in described[0]["workers"]]

    def register(self, archive: str, name: str, workers: int, batch: int, delay_ms: int) -> None:
        params = {
            "url": archive,
            "model_name": name,
            "initial_workers": str(workers),
            "batch_size": str(batch),
            "max_batch_delay": str(delay_ms),
            "synchronous": "true",
        }
        reply = self.client.post(self.management_url("/models"), params=params, timeout=300)
        if reply.status_code != 200:
            raise RuntimeError(f"{self.kind}: registering {name} failed: {reply.text}")
        self._poll(lambda: self.ready(name), START_TIMEOUT_S, f"{name} READY")

    def stop(self) -> float:
        """SIGTERM, then the seconds until every process of the tree is gone (SIGKILL for
        whatever is left after STOP_TIMEOUT_S)."""
        self.client.close()
        members = tree(self.root_pid)
        target = self.signal_pid()
        began = time.monotonic()
        try:
            if target is not None:
                os.kill(target, signal.SIGTERM)
            _, alive = psutil.wait_procs(members, timeout=STOP_TIMEOUT_S)
            for process in alive:
                process.kill()
            elapsed = time.monotonic() - began
            self.process.wait(timeout=10)
        finally:
            self._log.close()
        return elapsed


def _spawn(
    kind: str, command: list[str], workdir: Path, env: dict[str, str], ports: Ports
) -> Server:
    log = open(workdir / "server.log", "wb")  # closed by Server.stop
    began = time.monotonic()
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Server(kind, process, ports, workdir, log, began)


def start_server(
    kind: str,
    workdir: Path,
    store: Path,
    *,
    models: list[str] | None = None,
    workers: int = 1,
    torchserve_venv: Path | None = None,
) -> Server:
    """Start ``kind`` on free ports, serving ``models`` (``name=archive.mar`` or names) from
    ``store`` with ``workers`` workers each; returns at once (see ``Server.wait_*``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = Ports.fresh()
    config = workdir / "config.properties"
    config.write_text(config_text(ports, workers))
    env = dict(os.environ)
    if kind == TRIOSERVE:
        command = [sys.executable, "-m", "trioserve", "run", "--ts-config", str(config)]
        command += ["--model-store", str(store), "--log-config", str(QUIET_LOGGING)]
        if models:
            command += ["--models", *models]
        return _spawn(kind, command, workdir, env, ports)
    if torchserve_venv is None:
        raise ValueError("TorchServe needs its virtual environment")
    bin_dir = torchserve_venv / "bin"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["TMPDIR"] = str(workdir)  # its pid file lives there: runs never see each other's
    env.pop("PYTHONPATH", None)
    env["LOG_LOCATION"] = str(workdir / "logs")
    env["METRICS_LOCATION"] = str(workdir / "logs")
    command = [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs"]
    command += ["--disable-token-auth", "--enable-model-api"]
    command += ["--ts-config", str(config), "--model-store", str(store)]
    if models:
        command += ["--models", *models]
    return _spawn(kind, command, workdir, env, ports)
