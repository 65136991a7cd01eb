"""Developer sessions. They run in the active environment (torch is large and installed once,
from the pinned local wheel), so create and activate the venv first as README.md shows."""

from __future__ import annotations

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
    """Load scenarios against a real server; prints figures, asserts nothing."""
    session.run("python", "-m", "bench.run", *session.posargs)
