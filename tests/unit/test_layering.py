"""DESIGN §5 as a test: read every module's imports with ``ast`` and fail on an arrow that
points the wrong way. Imports inside functions and ``if TYPE_CHECKING:`` blocks count too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOCKET_CODE = ("socket", "trio.socket", "ssl", "h11")


def modules(*roots: str) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        path = ROOT / root
        if path.suffix == ".py":
            found.append(path)
            continue
        found.extend(p for p in sorted(path.rglob("*.py")) if "_proto" not in p.parts)
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_in(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, dotted name) for every name an import statement in ``source`` brings in:
    ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a`` and ``a.b`` (b may be a
    module); relative imports are resolved against ``module``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                parts = [*base, node.module] if node.module else base
            else:
                parts = [node.module or ""]
            origin = ".".join(parts)
            if origin:
                yield node.lineno, origin
            for alias in node.names:
                yield node.lineno, f"{origin}.{alias.name}" if origin else alias.name


def imported(path: Path) -> Iterator[tuple[int, str]]:
    source = path.read_text(encoding="utf-8")
    yield from imports_in(source, module_name(path), path.name == "__init__.py")


def within(name: str, banned: tuple[str, ...]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


def violations(paths: list[Path], banned: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in paths
        for line, name in imported(path)
        if within(name, banned)
    ]


# (rule id, modules the rule covers, imports they must not make)
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("backend imports neither trio nor trioserve", ("backend",), ("trio", "trioserve")),
    ("api has no socket code", ("trioserve/api",), SOCKET_CODE),
    (
        "api does not import server or cli",
        ("trioserve/api",),
        ("trioserve.server", "trioserve.cli"),
    ),
    (
        "http does not import api, models, server or cli",
        ("trioserve/http",),
        ("trioserve.api", "trioserve.models", "trioserve.server", "trioserve.cli"),
    ),
    (
        "sans-IO cores import neither trio nor socket",
        (
            "trioserve/http/request.py",
            "trioserve/http/response.py",
            "trioserve/http/routing.py",
            "trioserve/config.py",
            "trioserve/config_sources.py",
            "trioserve/models/manifest.py",
            "trioserve/models/snapshot.py",
            "backend/wire.py",
        ),
        ("trio", "socket", "ssl", "h11"),
    ),
    ("errors is a leaf", ("trioserve/errors.py",), ("trioserve", "backend", "trio", "socket")),
    (
        "metrics is below every other layer (it takes values, never the config or a model)",
        ("trioserve/metrics",),
        (
            "trioserve.models",
            "trioserve.api",
            "trioserve.http",
            "trioserve.grpc",
            "trioserve.server",
            "trioserve.cli",
            "trioserve.config",
        ),
    ),
]

# Known violations, each reported to its owner; strict xfail flips to a failure once fixed.
KNOWN: dict[str, str] = {}


@pytest.mark.parametrize(
    ("paths", "banned"),
    [
        pytest.param(
            roots,
            banned,
            id=rule,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN[rule])] if rule in KNOWN else [],
        )
        for rule, roots, banned in RULES
    ],
)
def test_no_import_points_up(paths: tuple[str, ...], banned: tuple[str, ...]) -> None:
    files = modules(*paths)
    assert files, f"no modules found under {paths}"
    assert violations(files, banned) == []


def test_trioserve_shares_only_wire_with_backend() -> None:
    """``backend/wire.py`` is the one module both sides share; ``trioserve/handler.py`` re-exports
    the handler-author API (DESIGN §5) and is the single other door."""
    allowed = ("backend.wire", "backend._proto")
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules("trioserve")
        if path != ROOT / "trioserve" / "handler.py"
        for line, name in imported(path)
        if within(name, ("backend",)) and not within(name, allowed)
    ]
    assert found == []


def test_checker_sees_every_import_form() -> None:
    """The checker itself: each form of import is seen, nested ones too, relative ones resolved."""
    source = (
        "import trio\n"
        "import trio.socket as ts\n"
        "from socket import socketpair\n"
        "from . import wire\n"
        "from .handlers import base_handler\n"
        "from .. import trioserve\n"
        "def f() -> None:\n"
        "    import h11\n"
        "if True:\n"
        "    from trioserve.errors import BadRequest\n"
    )
    names = {name for _, name in imports_in(source, "backend.probe", is_package=False)}
    assert names == {
        "trio",
        "trio.socket",
        "socket",
        "socket.socketpair",
        "backend",
        "backend.wire",
        "backend.handlers",
        "backend.handlers.base_handler",
        "trioserve",
        "h11",
        "trioserve.errors",
        "trioserve.errors.BadRequest",
    }
    assert {n for n in names if within(n, ("trio", "trioserve"))} == {
        "trio",
        "trio.socket",
        "trioserve",
        "trioserve.errors",
        "trioserve.errors.BadRequest",
    }
    in_package = {name for _, name in imports_in("from . import x", "a.b", is_package=True)}
    assert in_package == {"a.b", "a.b.x"}
