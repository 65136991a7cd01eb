"""What every bench scenario shares: free ports, the wrk load generator and its output, and the
CPU and memory of a server's whole process tree (read from /proc through psutil)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "models"
QUIET_LOGGING = ROOT / "bench" / "quiet-logging.json"
WRK_MISSING = "wrk is not installed: it is the load generator (Debian/Ubuntu: apt-get install wrk)"
# The body the echo scenarios post (and expect back).
ECHO_BODY = b"hello"
LUA_POST = 'wrk.method = "POST"\nwrk.body = "hello"\nwrk.headers["Content-Type"] = "text/plain"\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def lua_post_file(path: Path, content_type: str) -> str:
    """A wrk script posting the bytes of ``path`` (binary-safe: Lua strings hold any bytes)."""
    return (
        'wrk.method = "POST"\n'
        f'local f = assert(io.open("{path}", "rb"))\n'
        'wrk.body = f:read("*a")\nf:close()\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
    )


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # non-2xx answers plus socket errors (connect, read, write, timeout)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(output: str) -> WrkResult:
    """The figures of ``wrk --latency`` output; NaN for a figure it did not print."""

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
        if not match:
            return float("nan")
        return float(match.group(1)) * _UNITS_MS[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if sockets:
        errors += sum(int(g) for g in sockets.groups())
    return WrkResult(
        rps=float(rps.group(1)) if rps else float("nan"),
        requests=int(total.group(1)) if total else 0,
        p50_ms=latency("50"),
        p90_ms=latency("90"),
        p99_ms=latency("99"),
        errors=errors,
    )


def run_wrk(url: str, conns: int, seconds: float, script: Path | None = None) -> WrkResult:
    command = ["wrk", f"-t{min(conns, 2)}", f"-c{conns}", f"-d{seconds:g}s", "--latency"]
    command += ["--timeout", "10s"]
    if script is not None:
        command += ["-s", str(script)]
    done = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    )
    return parse_wrk(done.stdout)


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants that are alive now."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class TreeCPU:
    """CPU seconds (user + system) of a process tree between :meth:`start` and :meth:`stop`.

    Processes are tracked by pid across both readings, so a worker started in between counts
    from zero; one that exits in between loses what it used since the first reading.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._before: dict[int, float] = {}

    @staticmethod
    def _read(pid: int) -> dict[int, float]:
        out: dict[int, float] = {}
        for process in tree(pid):
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            out[process.pid] = times.user + times.system
        return out

    def start(self) -> None:
        self._before = self._read(self.pid)

    def stop(self) -> float:
        after = self._read(self.pid)
        return sum(value - self._before.get(pid, 0.0) for pid, value in after.items())


@dataclass(frozen=True)
class TreeMemory:
    rss_mib: float  # every process's RSS added up: shared pages count once per process
    pss_mib: float  # proportional set size: shared pages split between their sharers
    processes: int


def tree_memory(pid: int) -> TreeMemory:
    rss = pss = 0
    processes = tree(pid)
    for process in processes:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return TreeMemory(rss / 2**20, pss / 2**20, len(processes))
