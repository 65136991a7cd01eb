"""``trioserve.archiver`` on its own (contract §6.1, §6.2, §6.4): the manifest, what is staged
and skipped, each output format, the checks, and the ``archive`` subcommand."""

from __future__ import annotations

import json
import re
import tarfile
import warnings
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from trioserve import archiver, cli
from trioserve.archiver import ArchiverError, ArchiveSpec, create_archive, manifest
from trioserve.models.archive import open_archive

with warnings.catch_warnings():
    # torch-model-archiver's __init__ reads its version file without closing it.
    warnings.simplefilter("ignore", ResourceWarning)
    from model_archiver.manifest_components.manifest import Manifest as TheirManifest
    from model_archiver.manifest_components.model import Model as TheirModel

NOW = datetime(2024, 9, 24, 10, 0, 0)


def spec(tmp_path: Path, **overrides: object) -> ArchiveSpec:
    values: dict[str, object] = {
        "model_name": "m",
        "version": "1.0",
        "handler": str(tmp_path / "handler.py"),
        "export_path": str(tmp_path / "out"),
    }
    values.update(overrides)
    return ArchiveSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "handler.py").write_text("def handle(data, context):\n    return data\n")
    (tmp_path / "out").mkdir()
    return tmp_path


def zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return sorted(zf.namelist())


# -- the manifest -------------------------------------------------------------------------------
def test_manifest_has_the_archivers_keys_in_order_with_unset_ones_left_out() -> None:
    doc = manifest(ArchiveSpec("m", "1.0", "image_classifier"), NOW)
    assert doc == {
        "createdOn": "24/09/2024 10:00:00",
        "runtime": "python",
        "model": {"modelName": "m", "handler": "image_classifier", "modelVersion": "1.0"},
        "archiverVersion": "0.12.0",
    }
    assert list(doc) == ["createdOn", "runtime", "model", "archiverVersion"]


def test_manifest_names_files_by_basename_and_keeps_the_handler_function() -> None:
    doc = manifest(
        ArchiveSpec(
            "m",
            "2.0",
            "dir/my_handler.py:serve",
            serialized_file="/abs/weights.pt",
            model_file="src/model.py",
            requirements_file="deps/requirements.txt",
            config_file="conf/model-config.yaml",
        ),
        NOW,
    )
    assert list(doc["model"]) == [  # type: ignore[call-overload]
        "modelName",
        "serializedFile",
        "handler",
        "modelFile",
        "modelVersion",
        "requirementsFile",
        "configFile",
    ]
    assert doc["model"] == {
        "modelName": "m",
        "serializedFile": "weights.pt",
        "handler": "my_handler.py:serve",
        "modelFile": "model.py",
        "modelVersion": "2.0",
        "requirementsFile": "requirements.txt",
        "configFile": "model-config.yaml",
    }


def test_created_on_is_day_month_year_and_time() -> None:
    created = manifest(ArchiveSpec("m", "1.0", "base_handler"))["createdOn"]
    assert re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d", str(created))


@pytest.mark.parametrize(
    "flags",
    [
        {"handler": "image_classifier"},
        {"handler": "h.py:fn", "serialized_file": "a/w.pt", "model_file": "b/m.py"},
        {"handler": "h.py", "requirements_file": "r.txt", "config_file": "c.yaml"},
        {"handler": "h.py", "runtime": "python3"},
    ],
)
def test_manifest_matches_torch_model_archivers_own_classes(flags: dict[str, str]) -> None:
    runtime = flags.pop("runtime", "python")
    ours = manifest(ArchiveSpec("m", "3.1", runtime=runtime, **flags), NOW)
    model = TheirModel(
        model_name="m",
        serialized_file=flags.get("serialized_file"),
        handler=flags["handler"],
        model_file=flags.get("model_file"),
        model_version="3.1",
        requirements_file=flags.get("requirements_file"),
        config_file=flags.get("config_file"),
    )
    theirs = json.loads(str(TheirManifest(runtime=runtime, model=model)))
    skip = ("createdOn", "archiverVersion")
    assert {k: v for k, v in ours.items() if k not in skip} == {
        k: v for k, v in theirs.items() if k not in skip
    }


# -- staging and skipping -----------------------------------------------------------------------
def test_default_handler_names_are_not_copied(tree: Path) -> None:
    (tree / "model.py").write_text("x = 1\n")
    path = create_archive(spec(tree, handler="object_detector", model_file=str(tree / "model.py")))
    assert zip_names(path) == ["MAR-INF/MANIFEST.json", "model.py"]


def test_handler_with_a_function_is_copied_as_its_file(tree: Path) -> None:
    path = create_archive(spec(tree, handler=f"{tree / 'handler'}:handle"))
    assert zip_names(path) == ["MAR-INF/MANIFEST.json", "handler.py"]
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]["handler"] == "handler:handle"


def test_extra_files_take_files_globs_and_flattened_directories(tree: Path) -> None:
    extras = tree / "extras"
    (extras / "sub").mkdir(parents=True)
    (extras / "a.txt").write_text("a")
    (extras / "sub" / "b.txt").write_text("b")
    (tree / "one.json").write_text("{}")
    (tree / "w1.bin").write_text("1")
    (tree / "w2.bin").write_text("2")
    path = create_archive(spec(tree, extra_files=f"{extras},{tree / 'one.json'},{tree}/w*.bin"))
    assert zip_names(path) == [
        "MAR-INF/MANIFEST.json",
        "a.txt",
        "handler.py",
        "one.json",
        "sub/b.txt",
        "w1.bin",
        "w2.bin",
    ]


def test_skipped_files_and_directories_stay_out(tree: Path) -> None:
    extras = tree / "extras"
    for d in ("__pycache__", "__MACOSX", ".git", "keep/.cache"):
        (extras / d).mkdir(parents=True)
        (extras / d / "x.txt").write_text("x")
    for f in ("mod.pyc", ".DS_Store", "old.mar", "keep/ok.txt"):
        (extras / f).write_text("x")
    (extras / "MAR-INF").mkdir()
    (extras / "MAR-INF" / "MANIFEST.json").write_text('{"stale": true}')
    path = create_archive(spec(tree, extra_files=str(extras)))
    assert zip_names(path) == ["MAR-INF/MANIFEST.json", "handler.py", "keep/ok.txt"]
    with zipfile.ZipFile(path) as zf:
        assert "stale" not in json.loads(zf.read("MAR-INF/MANIFEST.json"))


def test_a_missing_extra_file_is_an_error_and_an_unmatched_glob_a_warning(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ArchiverError, match="File does not exist"):
        create_archive(spec(tree, extra_files=str(tree / "nope.txt")))
    create_archive(spec(tree, extra_files=f"{tree}/*.none"))
    assert "did not match any file" in capsys.readouterr().err


# -- formats -------------------------------------------------------------------------------------
def test_default_format_is_a_deflated_zip_and_zip_store_a_stored_one(tree: Path) -> None:
    for fmt, method in (("default", zipfile.ZIP_DEFLATED), ("zip-store", zipfile.ZIP_STORED)):
        path = create_archive(spec(tree, archive_format=fmt, force=True))
        assert path.name == "m.mar"
        with zipfile.ZipFile(path) as zf:
            assert {i.compress_type for i in zf.infolist()} == {method}


def test_tgz_puts_everything_under_the_model_name(tree: Path) -> None:
    path = create_archive(spec(tree, archive_format="tgz"))
    assert path.name == "m.tar.gz"
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == ["m/MAR-INF/MANIFEST.json", "m/handler.py"]


def test_no_archive_writes_a_directory(tree: Path) -> None:
    path = create_archive(spec(tree, archive_format="no-archive"))
    assert path == tree / "out" / "m"
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        "MAR-INF/MANIFEST.json",
        "handler.py",
    ]


@pytest.mark.parametrize("fmt", ["default", "zip-store", "tgz", "no-archive"])
def test_every_format_opens_as_a_model_archive(tree: Path, fmt: str) -> None:
    path = create_archive(spec(tree, archive_format=fmt, version="4.2"))
    opened = open_archive(path, tree / "extracted")
    assert opened.manifest.model_name == "m"
    assert opened.manifest.model_version == "4.2"
    assert opened.manifest.handler == "handler.py"
    assert (opened.model_dir / "handler.py").is_file()


# -- checks --------------------------------------------------------------------------------------
def test_an_existing_archive_needs_force(tree: Path) -> None:
    create_archive(spec(tree))
    with pytest.raises(ArchiverError, match="already exists"):
        create_archive(spec(tree))
    (tree / "handler.py").write_text("def handle(data, context):\n    return []\n")
    path = create_archive(spec(tree, force=True))
    with zipfile.ZipFile(path) as zf:
        assert b"return []" in zf.read("handler.py")
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.mar"]  # no partial left


def test_force_writes_into_an_existing_no_archive_directory(tree: Path) -> None:
    target = tree / "out" / "m"
    target.mkdir()
    (target / "kept.txt").write_text("mine")
    create_archive(spec(tree, archive_format="no-archive", force=True))
    assert (target / "kept.txt").read_text() == "mine"
    assert (target / "MAR-INF" / "MANIFEST.json").is_file()


@pytest.mark.parametrize("name", ["-lead", "has space", "slash/name", "", "ünï"])
def test_model_names_outside_the_pattern_are_refused(tree: Path, name: str) -> None:
    with pytest.raises(ArchiverError, match="special characters"):
        create_archive(spec(tree, model_name=name))


def test_export_path_must_be_a_directory(tree: Path) -> None:
    with pytest.raises(ArchiverError, match="is not a directory"):
        create_archive(spec(tree, export_path=str(tree / "missing")))


def test_a_missing_handler_file_is_an_error_and_leaves_nothing(tree: Path) -> None:
    with pytest.raises(ArchiverError, match="handler file not found"):
        create_archive(spec(tree, handler=str(tree / "absent.py")))
    assert list((tree / "out").iterdir()) == []


# -- the subcommand ------------------------------------------------------------------------------
def test_archive_subcommand_takes_torch_model_archivers_flags(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "req.txt").write_text("")
    (tree / "cfg.yaml").write_text("batchSize: 2\n")
    argv = [
        "archive",
        "--model-name",
        "m",
        "-v",
        "1.5",
        "--handler",
        str(tree / "handler.py"),
        "-r",
        str(tree / "req.txt"),
        "-c",
        str(tree / "cfg.yaml"),
        "--runtime",
        "python3",
        "--export-path",
        str(tree / "out"),
        "--archive-format",
        "zip-store",
    ]
    assert cli.main(argv) == 0
    assert "Successfully exported model m" in capsys.readouterr().out
    assert cli.main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli.main([*argv, "-f"]) == 0
    with zipfile.ZipFile(tree / "out" / "m.mar") as zf:
        doc = json.loads(zf.read("MAR-INF/MANIFEST.json"))
    assert doc["runtime"] == "python3"
    assert doc["model"]["requirementsFile"] == "req.txt"
    assert doc["model"]["configFile"] == "cfg.yaml"


def test_archive_subcommand_requires_name_version_and_handler() -> None:
    with pytest.raises(SystemExit):
        archiver.run(["--model-name", "m", "--handler", "h.py"])
