"""Inputs the fuzz targets (fuzz/) found to break a contract, pinned here once fixed. Each crash
input also stays in its target's corpus (fuzz/corpus/<target>/crash-*), which every smoke pass
(tests/unit/test_fuzz_smoke.py) checks again."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from trioserve.api import oip
from trioserve.errors import InvalidModel
from trioserve.models.archive import open_archive

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"


def test_zip_entry_with_an_empty_name_is_skipped_not_a_crash(tmp_path: Path) -> None:
    """fuzz_archive: ZipInfo.is_dir() raised IndexError on an empty entry name (a 500 for the
    register call instead of an answer)."""
    source = tmp_path / "m.mar"
    with zipfile.ZipFile(source, "w") as zf:
        zf.writestr(zipfile.ZipInfo(""), b"x")
        zf.writestr("handler.py", b"def handle(d, c):\n    return d\n")
    archive = open_archive(source, tmp_path / "extract")
    assert sorted(p.name for p in archive.model_dir.iterdir()) == ["handler.py"]


def test_found_crash_input_opens_or_is_refused(tmp_path: Path) -> None:
    """The fuzzer's own input for the bug above (a mutated .mar seed)."""
    source = tmp_path / "m.mar"
    source.write_bytes((CORPUS / "archive" / "crash-empty-zip-name").read_bytes())
    try:
        open_archive(source, tmp_path / "extract")
    except InvalidModel:
        pass  # the contract's refusal; anything else fails the test


def test_unhashable_v2_datatype_is_a_400_not_a_crash() -> None:
    """fuzz_oip: a datatype given as a list raised TypeError (a 500) in the lookup."""
    body = (CORPUS / "oip" / "crash-unhashable-datatype").read_bytes()
    with pytest.raises(oip.TensorError, match="Unknown datatype"):
        oip.check_infer_request(oip.parse_json(body))
