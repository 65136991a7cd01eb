"""The real `trioserve` command, as the end-to-end tests start it: free ports, a config file,
the environment and command line, and :func:`spawned`, which runs `trioserve run` until it
reports "Model server started." and always reaps it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

LOCAL = "127.0.0.1"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"
# Loading the shipped examples (torch among them) on a loaded CI machine.
START_LIMIT_S = 120.0
# A drain with nothing in flight, then the workers' stop.
STOP_LIMIT_S = 60.0
STARTED = "Model server started."


def free_port() -> int:
    """A port nothing listens on now (the OS's choice); another process may take it first."""
    with socket.socket() as sock:
        sock.bind((LOCAL, 0))
        return int(sock.getsockname()[1])


def free_ports() -> dict[str, int]:
    """One free port for each HTTP API, keyed as ``write_properties`` takes them."""
    return {name: free_port() for name in ("inference", "management", "metrics")}


def write_properties(workdir: Path, ports: dict[str, int], extra: str = "") -> Path:
    """``workdir/config.properties`` serving the three APIs on ``ports``, one worker a model."""
    path = workdir / "config.properties"
    path.write_text(
        f"inference_address=http://{LOCAL}:{ports['inference']}\n"
        f"management_address=http://{LOCAL}:{ports['management']}\n"
        f"metrics_address=http://{LOCAL}:{ports['metrics']}\n"
        "default_workers_per_model=1\n" + extra
    )
    return path


def env_for(workdir: Path) -> dict[str, str]:
    """This process's environment, with the pid file (under TMPDIR; ``workdir/tmp`` must exist)
    and the logs moved into ``workdir``, away from any other server."""
    env = dict(os.environ)
    env["TMPDIR"] = str(workdir / "tmp")
    env["LOG_LOCATION"] = str(workdir / "logs")
    return env


def trioserve(*args: str) -> list[str]:
    """The command line of `trioserve ARGS…`, run by this interpreter."""
    return [sys.executable, "-m", "trioserve", *args]


def wait_for_line(process: subprocess.Popen[bytes], output: Path, text: str) -> None:
    """Wait until ``text`` stands in ``output``, the file ``process`` writes to.

    Raises:
        AssertionError: the process exited, or START_LIMIT_S passed, without it (the output
            quoted).
    """
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        exited = process.poll() is not None  # before reading: the line may come as it exits
        if text in output.read_text(errors="replace"):
            return
        if exited:
            break
        time.sleep(0.05)
    shown = output.read_text(errors="replace")
    raise AssertionError(f"{text!r} not seen; output was:\n{shown}")


@contextmanager
def spawned(
    args: list[str], workdir: Path, *, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`trioserve run ARGS…` in ``workdir`` (with ``env``, else ``env_for(workdir)``), yielded
    once it has started; killed on the way out if still running, and always reaped.

    Its stdout and stderr go to a file in ``workdir``, not a pipe: a pipe nobody reads once
    the server has started could fill up and stall it.

    Raises:
        AssertionError: it did not report "Model server started." (see ``wait_for_line``).
    """
    output = workdir / f"trioserve-{time.monotonic_ns()}.log"
    with output.open("wb") as out:
        process = subprocess.Popen(
            trioserve("run", *args),
            cwd=workdir,
            env=env_for(workdir) if env is None else env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_line(process, output, STARTED)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as a user or the kubelet stops the server; its exit status."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=STOP_LIMIT_S)


def wait_ready(base: str, model: str) -> None:
    """Wait until every worker of ``model`` (there is at least one) is READY, as the
    management API at ``base`` describes them.

    Raises:
        AssertionError: not within START_LIMIT_S.
    """
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
