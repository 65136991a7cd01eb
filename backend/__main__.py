"""Worker entry point: ``python -m backend --fd N [--parent-pid P]``.

No orphans: a worker never outlives the frontend that spawned it. An idle worker sees its channel
close and returns; a busy one (a handler deep in a long call) would not notice until its batch
is done, so a watchdog thread ends the process as soon as its parent is no longer ``P``.

On Linux the kernel tells it at once: ``prctl(PR_SET_PDEATHSIG)``. The signal is not SIGTERM,
and it does not kill: the kernel's "parent" is the *thread* that forked us, and trio forks from
a cached worker thread that exits after 10 s idle, so a killing signal would end every worker
10 s after its start while the frontend is alive. The signal only wakes the watchdog, which
exits if ``os.getppid()`` changed. A poll covers other systems, and a parent that died before
the signal was armed (checked right after arming it).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_TIMERSLACK = 29
# How late (ns) Linux may fire this process's timers, to merge wakeups; its default, 50 µs,
# makes a handler's 10 ms sleep take ~10.17 ms here instead of ~10.10 ms, half a percent of a
# worker's throughput. A worker wakes ~100 times a second at most: merging saves nothing.
TIMER_SLACK_NS = 1000
# A real-time signal nobody else uses: blocked in every thread, it is only ever taken by the
# watchdog's sigtimedwait. (Children a handler spawns inherit the block, harmlessly.)
PARENT_DEATH_SIGNAL: int | None = getattr(signal, "SIGRTMAX", None)
# How often the watchdog checks its parent without a signal: well inside the 2 s a worker has
# to follow a frontend that was killed.
PARENT_POLL_S = 0.5
# Exit status of a worker whose frontend is gone (nobody is left to read it).
EXIT_ORPHANED = 1


def arm_parent_death_signal() -> int | None:
    """Ask Linux for ``PARENT_DEATH_SIGNAL`` when our parent dies; the signal, or None where
    that is not possible (not Linux, no prctl). Call before starting any thread: the signal is
    blocked here and every thread started later inherits the block."""
    if not sys.platform.startswith("linux") or PARENT_DEATH_SIGNAL is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {PARENT_DEATH_SIGNAL})
        args = (PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL, 0, 0, 0)
        if libc.prctl(*(ctypes.c_ulong(a) for a in args)) == 0:
            return PARENT_DEATH_SIGNAL
    except (OSError, AttributeError):
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {PARENT_DEATH_SIGNAL})
    return None


def tighten_timer_slack() -> bool:
    """Set this process's timer slack to TIMER_SLACK_NS (Linux; elsewhere a no-op: False).
    Threads started afterwards inherit it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        args = (PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0)
        return bool(libc.prctl(*(ctypes.c_ulong(a) for a in args)) == 0)
    except (OSError, AttributeError):
        return False


def watch_parent(parent: int, signum: int | None) -> None:
    """Return once ``parent`` is no longer our parent (the frontend died; we were re-parented),
    waking on ``signum`` or every ``PARENT_POLL_S``."""
    while os.getppid() == parent:
        if signum is None:
            threading.Event().wait(PARENT_POLL_S)
        else:
            signal.sigtimedwait({signum}, PARENT_POLL_S)


def _exit_with_parent(parent: int, signum: int | None) -> None:
    watch_parent(parent, signum)
    os._exit(EXIT_ORPHANED)  # at once, even mid-batch: nobody is left to answer


def follow_parent(parent: int) -> None:
    """Make this process exit when ``parent`` does, from now on."""
    signum = arm_parent_death_signal()
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(EXIT_ORPHANED)
    threading.Thread(
        target=_exit_with_parent, args=(parent, signum), name="parent-watchdog", daemon=True
    ).start()


def _parse_fast(argv: list[str]) -> tuple[int, int | None] | None:
    """(fd, parent pid) from exactly the frontend's ``--fd N --parent-pid P``, else None."""
    if len(argv) == 4 and argv[0] == "--fd" and argv[2] == "--parent-pid":
        if all(a.isascii() and a.isdigit() for a in (argv[1], argv[3])):
            return int(argv[1]), int(argv[3])
    return None


def _parse(argv: list[str] | None) -> tuple[int, int | None]:
    fast = _parse_fast(sys.argv[1:] if argv is None else argv)
    if fast is not None:
        return fast
    # Anything else (help, an error to report): argparse, imported only here because it, and
    # the shutil, bz2 and lzma it pulls in, cost every worker about 1 MiB.
    import argparse

    parser = argparse.ArgumentParser(prog="python -m backend")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to the frontend")
    parser.add_argument(
        "--parent-pid", type=int, help="exit when this process is gone (default: our parent)"
    )
    args = parser.parse_args(argv)
    return args.fd, args.parent_pid


def main(argv: list[str] | None = None) -> int:
    fd, parent = _parse(argv)
    # First, before any import could start a thread that would not inherit the signal's block.
    follow_parent(parent if parent is not None else os.getppid())
    tighten_timer_slack()
    # Ctrl-C in a terminal signals the whole foreground process group: the frontend drains,
    # and its workers must go on answering the batches in flight until it stops them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from backend.worker import run

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    return run(fd)


if __name__ == "__main__":
    sys.exit(main())
