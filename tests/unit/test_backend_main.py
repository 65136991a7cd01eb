"""``python -m backend``'s arguments: the frontend's own form parsed without argparse."""

from __future__ import annotations

import pytest

from backend.__main__ import _parse


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--fd", "7", "--parent-pid", "42"], (7, 42)),  # the frontend's form: no argparse
        (["--fd", "7"], (7, None)),
        (["--parent-pid", "42", "--fd", "7"], (7, 42)),
        (["--fd=7", "--parent-pid=42"], (7, 42)),
        (["--fd", "+7", "--parent-pid", "42"], (7, 42)),
    ],
)
def test_arguments(argv: list[str], expected: tuple[int, int | None]) -> None:
    assert _parse(argv) == expected


@pytest.mark.parametrize(
    "argv", [[], ["--fd", "x", "--parent-pid", "42"], ["--fd", "7", "--parent-pid", "\u00b2"]]
)
def test_bad_arguments_are_argparse_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse(argv)
    assert exited.value.code == 2
