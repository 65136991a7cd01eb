"""The `trioserve` command as a user runs it: foreground, start/stop, config errors, logging."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.spawn import (
    EXAMPLES,
    START_LIMIT_S,
    env_for,
    free_ports,
    spawned,
    stop,
    trioserve,
    wait_ready,
    write_properties,
)


@pytest.fixture
def ports() -> dict[str, int]:
    return free_ports()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "tmp").mkdir()
    return tmp_path


@pytest.fixture
def foreground(workdir: Path, ports: dict[str, int]) -> Iterator[subprocess.Popen[bytes]]:
    config = write_properties(workdir, ports)
    args = ["--ts-config", str(config), "--model-store", str(EXAMPLES), "--models", "all"]
    with spawned(args, workdir) as process:
        yield process


def test_run_serves_the_shipped_examples_and_stops_on_sigterm(
    foreground: subprocess.Popen[bytes], ports: dict[str, int]
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
    assert stop(foreground) == 0


def run_to_exit(workdir: Path, *args: str, limit_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`trioserve ARGS…` in ``workdir``, run until it exits, its output captured."""
    return subprocess.run(
        trioserve(*args),
        cwd=workdir,
        env=env_for(workdir),
        capture_output=True,
        text=True,
        timeout=limit_s,
    )


def test_start_stop_with_pid_file(workdir: Path, ports: dict[str, int]) -> None:
    config = write_properties(workdir, ports)
    args = ["--ts-config", str(config), "--model-store", str(EXAMPLES), "--models", "echo"]
    started = run_to_exit(workdir, "start", *args, limit_s=START_LIMIT_S)
    assert started.returncode == 0, started.stdout + started.stderr
    pid_file = workdir / "tmp" / ".model_server.pid"
    pid = int(pid_file.read_text())
    try:
        # `start` returns once the server is up: no waiting needed before the first call.
        ping = httpx.get(f"http://127.0.0.1:{ports['inference']}/ping")
        assert ping.status_code == 200
        again = run_to_exit(workdir, "start", *args)
        assert again.returncode == 1
        assert "already running" in again.stderr
    finally:
        stopped = run_to_exit(workdir, "stop", limit_s=90)
    assert stopped.returncode == 0
    assert stopped.stdout.strip() == "trioserve has stopped."
    assert not pid_file.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    not_running = run_to_exit(workdir, "stop")
    assert not_running.stdout.strip() == "trioserve is not currently running."


def test_bad_config_value_stops_the_start(workdir: Path, ports: dict[str, int]) -> None:
    config = write_properties(workdir, ports, "job_queue_size=lots\n")
    result = run_to_exit(workdir, "run", "--ts-config", str(config), "--model-store", str(EXAMPLES))
    assert result.returncode == 2
    assert "job_queue_size" in result.stderr
    assert "lots" in result.stderr


def test_missing_model_store_is_refused(workdir: Path, ports: dict[str, int]) -> None:
    config = write_properties(workdir, ports)
    result = run_to_exit(workdir, "run", "--ts-config", str(config))
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
    args = ["--ts-config", str(toml), "--log-config", str(log_config)]
    with spawned([*args, "--model-store", str(EXAMPLES), "--models", "echo"], workdir) as process:
        httpx.get(f"http://127.0.0.1:{ports['inference']}/ping")
        assert stop(process) == 0
    text = log_file.read_text()
    assert "trioserve.server|Model server started." in text
    assert "trioserve.access|" in text
    assert '"GET /ping HTTP/1.1"' in text
