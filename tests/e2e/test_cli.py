"""The `trioserve` command as a user runs it: foreground, start/stop, config errors, logging."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "models"
START_LIMIT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ports() -> dict[str, int]:
    return {"inference": free_port(), "management": free_port(), "metrics": free_port()}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "tmp").mkdir()
    return tmp_path


def env_for(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TMPDIR"] = str(workdir / "tmp")  # isolates the pid file from any other server
    env["LOG_LOCATION"] = str(workdir / "logs")
    return env


def write_properties(workdir: Path, ports: dict[str, int], extra: str = "") -> Path:
    path = workdir / "config.properties"
    path.write_text(
        f"inference_address=http://127.0.0.1:{ports['inference']}\n"
        f"management_address=http://127.0.0.1:{ports['management']}\n"
        f"metrics_address=http://127.0.0.1:{ports['metrics']}\n"
        "default_workers_per_model=1\n" + extra
    )
    return path


def trioserve(*args: str, workdir: Path, **kwargs: object) -> list[str]:
    return [sys.executable, "-m", "trioserve", *args]


def wait_for_line(process: subprocess.Popen[str], text: str) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + START_LIMIT_S
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} not seen; output was:\n{''.join(lines)}")


def wait_ready(base: str, model: str) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        try:
            described = httpx.get(f"{base}/models/{model}", timeout=5).json()
            if described[0]["workers"] and all(
                w["status"] == "READY" for w in described[0]["workers"]
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"model {model} never became ready")


@pytest.fixture
def foreground(workdir: Path, ports: dict[str, int]) -> Iterator[subprocess.Popen[str]]:
    config = write_properties(workdir, ports)
    process = subprocess.Popen(
        [
            *trioserve("run", workdir=workdir),
            "--ts-config",
            str(config),
            "--model-store",
            str(EXAMPLES),
            "--models",
            "all",
        ],
        cwd=workdir,
        env=env_for(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_line(process, "Model server started.")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_run_serves_the_shipped_examples_and_stops_on_sigterm(
    foreground: subprocess.Popen[str], ports: dict[str, int]
) -> None:
    inference = f"http://127.0.0.1:{ports['inference']}"
    management = f"http://127.0.0.1:{ports['management']}"
    names = [m["modelName"] for m in httpx.get(f"{management}/models").json()["models"]]
    assert names == ["echo", "tiny_cnn"]
    wait_ready(management, "echo")
    wait_ready(management, "tiny_cnn")
    assert httpx.get(f"{inference}/ping").json() == {"status": "Healthy"}
    assert httpx.post(f"{inference}/predictions/echo", content=b"ping!").content == b"ping!"
    image = [[0.5] * 8 for _ in range(8)]
    result = httpx.post(f"{inference}/predictions/tiny_cnn", json=image, timeout=60).json()
    assert set(result) == {"class", "probabilities"}
    assert abs(sum(result["probabilities"]) - 1) < 1e-3
    foreground.send_signal(signal.SIGTERM)
    assert foreground.wait(timeout=60) == 0


def test_start_stop_with_pid_file(workdir: Path, ports: dict[str, int]) -> None:
    config = write_properties(workdir, ports)
    env = env_for(workdir)
    args = ["--ts-config", str(config), "--model-store", str(EXAMPLES), "--models", "echo"]
    started = subprocess.run(
        [*trioserve("start", workdir=workdir), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_LIMIT_S,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    pid_file = workdir / "tmp" / ".model_server.pid"
    pid = int(pid_file.read_text())
    try:
        # `start` returns once the server is up: no waiting needed before the first call.
        ping = httpx.get(f"http://127.0.0.1:{ports['inference']}/ping")
        assert ping.status_code == 200
        again = subprocess.run(
            [*trioserve("start", workdir=workdir), *args],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1
        assert "already running" in again.stderr
    finally:
        stopped = subprocess.run(
            [*trioserve("stop", workdir=workdir)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert stopped.returncode == 0
    assert stopped.stdout.strip() == "trioserve has stopped."
    assert not pid_file.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    not_running = subprocess.run(
        [*trioserve("stop", workdir=workdir)], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert not_running.stdout.strip() == "trioserve is not currently running."


def test_bad_config_value_stops_the_start(workdir: Path, ports: dict[str, int]) -> None:
    config = write_properties(workdir, ports, "job_queue_size=lots\n")
    result = subprocess.run(
        [
            *trioserve("run", workdir=workdir),
            "--ts-config",
            str(config),
            "--model-store",
            str(EXAMPLES),
        ],
        cwd=workdir,
        env=env_for(workdir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "job_queue_size" in result.stderr
    assert "lots" in result.stderr


def test_missing_model_store_is_refused(workdir: Path, ports: dict[str, int]) -> None:
    config = write_properties(workdir, ports)
    result = subprocess.run(
        [*trioserve("run", workdir=workdir), "--ts-config", str(config)],
        cwd=workdir,
        env=env_for(workdir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Missing mandatory parameter --model-store" in result.stderr


def test_log_config_and_toml_config(workdir: Path, ports: dict[str, int]) -> None:
    toml = workdir / "trioserve.toml"
    toml.write_text(
        f'inference_address = "http://127.0.0.1:{ports["inference"]}"\n'
        f'management_address = "http://127.0.0.1:{ports["management"]}"\n'
        f'metrics_address = "http://127.0.0.1:{ports["metrics"]}"\n'
        "default_workers_per_model = 1\n"
    )
    log_file = workdir / "server.log"
    log_config = workdir / "logging.json"
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"plain": {"format": "%(name)s|%(message)s"}},
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "filename": str(log_file),
                        "formatter": "plain",
                    }
                },
                "root": {"level": "INFO", "handlers": ["file"]},
            }
        )
    )
    process = subprocess.Popen(
        [
            *trioserve("run", workdir=workdir),
            "--ts-config",
            str(toml),
            "--log-config",
            str(log_config),
            "--model-store",
            str(EXAMPLES),
            "--models",
            "echo",
        ],
        cwd=workdir,
        env=env_for(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_line(process, "Model server started.")
        httpx.get(f"http://127.0.0.1:{ports['inference']}/ping")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
    text = log_file.read_text()
    assert "trioserve.server|Model server started." in text
    assert "trioserve.access|" in text
    assert '"GET /ping HTTP/1.1"' in text
