"""Developer sessions. They run in the active environment (torch is large and installed once,
from the pinned local wheel), so create and activate the venv first as README.md shows."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=False)
def protos(session: nox.Session) -> None:
    """Regenerate backend/_proto and trioserve/grpc/_proto from protos/ (a test fails when the
    committed code is stale)."""
    session.run("python", "-m", "trioserve._protogen")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Load scenarios against a real server (needs wrk; the chart needs the ``bench`` extra);
    prints figures, asserts nothing. ``nox -s bench -- --vs-torchserve`` also installs
    TorchServe 0.12.0 in its own venv and reports every figure as a ratio to it; ``-- --help``
    lists the options. Not part of CI: the figures depend on the machine."""
    session.run("python", "-m", "bench.run", *session.posargs)


@nox.session(python=False)
def fuzz(session: nox.Session) -> None:
    """Each fuzz target for a bounded time (seconds: the first argument, default 60), under
    atheris when it is installed (``pip install atheris``), else the ``--smoke`` fallback.
    Corpus entries atheris finds go to a scratch directory, never into fuzz/corpus/; a crash
    fails the session, and libFuzzer names the file in the scratch directory it wrote the input
    to (make it a corpus ``crash-*`` file and a test in tests/unit/test_fuzz_regressions.py)."""
    seconds = int(session.posargs[0]) if session.posargs else 60
    scratch = Path(tempfile.mkdtemp(prefix="trioserve-fuzz-"))
    atheris = importlib.util.find_spec("atheris") is not None
    for target in sorted(Path("fuzz").glob("fuzz_*.py")):
        name = target.stem.removeprefix("fuzz_")
        if not atheris:
            session.run("python", str(target), "--smoke", "1000000000", "--seconds", str(seconds))
            continue
        work = scratch / name
        work.mkdir()
        session.run(
            "python",
            str(target),
            str(work),
            f"fuzz/corpus/{name}",
            f"-max_total_time={seconds}",
            "-timeout=10",  # an input this slow is a denial of service: report it
            f"-artifact_prefix={scratch}/{name}-",
            "-print_final_stats=1",
            env={"TRIOSERVE_FUZZ_TMP": str(scratch)},
        )
    shutil.rmtree(scratch)  # kept when a target fails: it holds the crashing input
