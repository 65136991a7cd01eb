"""One backend process at the OS level: spawn it, pump its output to the log, stop it, explain
its death.

It knows nothing of frames, batches or worker states; ``models/worker.py`` supervises one of
these per incarnation and owns the socket it talks over.

Resource handling: the process and its pump tasks live in the nursery handed to
:meth:`BackendProcess.start`; cancelling that nursery stops the process by the one policy
(SIGTERM, ``TERMINATE_GRACE_S``, SIGKILL) and waits for it to be reaped.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import trio

# How long a stopping worker gets after SIGTERM before SIGKILL.
TERMINATE_GRACE_S = 5.0
# Lines of a worker's stderr kept to explain its death.
STDERR_TAIL_LINES = 10
# A worker's output line longer than this is logged in pieces, so one endless line cannot grow
# the frontend's buffer without bound.
MAX_LOG_LINE_BYTES = 64 * 1024
# After a worker dies, how long to wait for it to be reaped and for its last output to drain
# from the pipes (its dying words explain the death); a grandchild holding a pipe open cannot
# hold the restart up for longer than this.
DEATH_DRAIN_S = 1.0
# Exit code TorchServe sees for a SIGKILLed worker (128 + 9), which is also what the kernel's
# OOM killer sends; the contract answers those deaths with 507.
KILLED_EXIT_CODE = 137


async def terminate_then_kill(process: trio.Process) -> None:
    """Stop a process: SIGTERM, then SIGKILL if it is still there after the grace period."""
    try:
        process.terminate()
    except ProcessLookupError:
        return
    with trio.move_on_after(TERMINATE_GRACE_S):
        await process.wait()
        return
    process.kill()


# Stderr lines quoted to a client whose request died with the worker (the log keeps more).
CLIENT_STDERR_LINES = 3


def describe_exit(returncode: int | None) -> str:
    """A returncode in words: "exit code 3", "killed by signal SIGKILL", "still running"."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def was_killed(returncode: int | None) -> bool:
    """Whether the process died of SIGKILL (the OOM killer's signal), seen either way."""
    return returncode in (-signal.SIGKILL, KILLED_EXIT_CODE)


def backend_command(fd: int) -> list[str]:
    # The worker exits once this process is gone; it needs our pid to tell (backend/__main__.py).
    return [sys.executable, "-m", "backend", "--fd", str(fd), "--parent-pid", str(os.getpid())]


# Where register installs an archive's requirementsFile (install_py_dep_per_model): inside the
# model's own directory, so only that model's workers see it.
DEPS_DIR = ".deps"


def backend_env(model_dir: str, *, decode_input_request: bool) -> dict[str, str]:
    """The worker's environment: ours, plus the model's directory (and its installed
    dependencies, if any) and this checkout on the path."""
    env = dict(os.environ)
    paths = [model_dir]
    deps = os.path.join(model_dir, DEPS_DIR)
    if os.path.isdir(deps):
        paths.append(deps)
    paths.append(os.getcwd())
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # trioserve/
    paths.append(os.path.dirname(package_dir))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["TS_DECODE_INPUT_REQUEST"] = str(decode_input_request).lower()
    # A piped stdout is block-buffered: without this, what a handler prints would reach the
    # log only when a buffer fills or the process exits.
    env["PYTHONUNBUFFERED"] = "1"
    return env


class BackendProcess:
    """One spawned backend process and the tasks reading its stdout and stderr.

    ``on_exit`` is called (synchronously, from the watcher task) as soon as the process has
    exited, so a supervisor idling on something else notices at once.
    """

    def __init__(self, name: str, log: logging.Logger, on_exit: Callable[[], None]) -> None:
        self.name = name
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.exited = False
        self._log = log
        self._on_exit = on_exit
        self._process: trio.Process | None = None
        self._pipes_closed = (trio.Event(), trio.Event())

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else -1

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    async def start(
        self, nursery: trio.Nursery, *, cwd: str, env: dict[str, str]
    ) -> trio.SocketStream:
        """Spawn ``python -m backend --fd N`` in ``nursery`` and start its pumps and exit watcher
        there. The process inherits one end of a fresh socketpair and nothing else; the other
        end comes back as a stream, which the caller closes once the nursery is done."""
        parent, child = socket.socketpair()
        try:
            with child:  # the child's end is the process's alone once it is spawned
                process: trio.Process = await nursery.start(self._run, child.fileno(), cwd, env)
        except BaseException:
            parent.close()
            raise
        self._process = process
        assert process.stdout is not None
        assert process.stderr is not None
        nursery.start_soon(self._pump, process.stdout, logging.INFO, False, self._pipes_closed[0])
        nursery.start_soon(self._pump, process.stderr, logging.WARNING, True, self._pipes_closed[1])
        nursery.start_soon(self._watch_exit, process)
        return trio.SocketStream(trio.socket.from_stdlib_socket(parent))

    async def _run(
        self,
        fd: int,
        cwd: str,
        env: dict[str, str],
        task_status: trio.TaskStatus[trio.Process],
    ) -> None:
        await trio.run_process(
            backend_command(fd),
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            check=False,
            deliver_cancel=terminate_then_kill,
            task_status=task_status,
        )

    def has_exited(self) -> bool:
        """Whether the process is gone, even if the watcher has not been scheduled yet."""
        return self.exited or (self._process is not None and self._process.poll() is not None)

    async def wait_dead(self) -> None:
        """Wait (bounded) until the process is reaped and its output pipes reach EOF."""
        with trio.move_on_after(DEATH_DRAIN_S):
            if self._process is not None:
                await self._process.wait()
            for closed in self._pipes_closed:
                await closed.wait()

    def client_message(self, lines: int = CLIENT_STDERR_LINES) -> str:
        """What a client whose batch died with this process is told: the contract's
        "Worker died." followed by how (exit code or signal) and its last stderr lines."""
        detail = describe_exit(self.returncode)
        tail = " | ".join(list(self.stderr_tail)[-lines:])
        return (
            f"Worker died. ({detail}; last stderr: {tail})" if tail else f"Worker died. ({detail})"
        )

    def death_message(self) -> str:
        tail = " | ".join(self.stderr_tail)
        message = f"Worker died ({describe_exit(self.returncode)})."
        return f"{message} Last stderr: {tail}" if tail else message

    async def _watch_exit(self, process: trio.Process) -> None:
        await process.wait()
        self.exited = True
        self._on_exit()

    async def _pump(
        self, stream: trio.abc.ReceiveStream, level: int, is_stderr: bool, closed: trio.Event
    ) -> None:
        def emit(raw: bytes) -> None:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if is_stderr:
                self.stderr_tail.append(line)
            self._log.log(level, "[%s] %s", self.name, line)

        buffer = bytearray()
        try:
            async for data in stream:
                # Only the new bytes are searched for line ends: no rescanning a long line.
                start = 0
                end = data.find(b"\n")
                while end >= 0:
                    emit(bytes(buffer) + data[start:end])
                    buffer.clear()
                    start = end + 1
                    end = data.find(b"\n", start)
                buffer += data[start:]
                while len(buffer) >= MAX_LOG_LINE_BYTES:
                    emit(bytes(buffer[:MAX_LOG_LINE_BYTES]))
                    del buffer[:MAX_LOG_LINE_BYTES]
            if buffer:
                emit(bytes(buffer))  # a last line without its newline
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            closed.set()
