"""Each fuzz target runs briefly in CI (the full runs use atheris, outside the test suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"


@pytest.mark.parametrize("target", sorted(p.name for p in FUZZ.glob("fuzz_*.py")))
def test_fuzz_target_keeps_its_contract(target: str) -> None:
    result = subprocess.run(
        [sys.executable, str(FUZZ / target), "--smoke", "1500", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kept the contract" in result.stdout
