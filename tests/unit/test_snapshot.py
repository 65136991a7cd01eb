"""models/snapshot.py: snapshot names, latest selection, content round trip, atomic writes."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from trioserve.config import Address, Config, default_config
from trioserve.config_sources import load_config, parse_properties
from trioserve.errors import ConfigError
from trioserve.models import snapshot
from trioserve.models.snapshot import VersionState

NOON = datetime(2026, 1, 12, 12, 0, 0, 123456)

MODELS: dict[str, dict[str, VersionState]] = {
    "echo": {
        "1.0": VersionState("echo.mar", False, 1, 1, 1, 100, 120, 120, "python"),
        "2.0": VersionState("echo_v2.mar", True, 2, 3, 4, 50, 30, 60, "python"),
    },
    "remote": {
        "1.0": VersionState("https://example.com/m/remote.mar", True, 0, 0, 1, 100, 120, 120),
    },
}


def config_for(store: str = "/srv/models", **overrides: Any) -> Config:
    values: dict[str, Any] = {"workflow_store": store, **overrides}
    return dataclasses.replace(
        default_config(),
        inference_address=Address("http", "127.0.0.1", 18080),
        model_store=store,
        **values,
    )


# ------------------------------------------------------------------------------------ names


def test_name_is_local_stamp_to_the_millisecond_and_kind() -> None:
    assert snapshot.next_name([], NOON, "startup") == "20260112120000123-startup.cfg"
    assert snapshot.parse_name("20260112120000123-shutdown.cfg") == (
        datetime(2026, 1, 12, 12, 0, 0, 123000),
        "shutdown",
    )


@pytest.mark.parametrize(
    "name",
    [
        "20260112120000123-other.cfg",
        "2026011212000012-startup.cfg",
        "20261312120000123-startup.cfg",  # month 13
        ".20260112120000123-startup.cfg.abc.tmp",
        "20260112120000123-startup.cfg~",
        "config.properties",
    ],
)
def test_names_that_are_not_snapshots_are_ignored(name: str) -> None:
    assert snapshot.parse_name(name) is None
    assert snapshot.latest([name]) is None


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="startup, snapshot, shutdown"):
        snapshot.next_name([], NOON, "backup")


def test_latest_is_by_stamp_not_by_kind_or_listing_order() -> None:
    names = [
        "20260112120000999-startup.cfg",
        "20260112120001000-snapshot.cfg",  # the newest: one millisecond later
        "20251231235959999-shutdown.cfg",
        "notes.txt",
    ]
    assert snapshot.latest(names) == "20260112120001000-snapshot.cfg"
    assert snapshot.latest(reversed(names)) == "20260112120001000-snapshot.cfg"
    assert snapshot.latest([]) is None


def test_latest_breaks_a_tie_shutdown_then_snapshot_then_startup() -> None:
    tie = [f"20260112120000123-{kind}.cfg" for kind in ("snapshot", "shutdown", "startup")]
    assert snapshot.latest(tie) == "20260112120000123-shutdown.cfg"
    assert snapshot.latest(tie[::2]) == "20260112120000123-snapshot.cfg"


def test_next_name_never_reuses_or_goes_before_an_existing_stamp() -> None:
    taken = ["20260112120000123-startup.cfg"]
    assert snapshot.next_name(taken, NOON, "startup") == "20260112120000124-startup.cfg"
    assert snapshot.next_name(taken, NOON, "snapshot") == "20260112120000124-snapshot.cfg"
    # A clock stepped back (or a DST fall-back, or TorchServe's files) still sorts after.
    earlier = datetime(2026, 1, 12, 11, 0, 0)
    assert snapshot.next_name(taken, earlier, "shutdown") == "20260112120000124-shutdown.cfg"
    # The bump carries over seconds, minutes, hours and days.
    new_year = ["20251231235959999-snapshot.cfg"]
    eve = datetime(2025, 12, 31, 23, 0, 0)
    assert snapshot.next_name(new_year, eve, "snapshot") == "20260101000000000-snapshot.cfg"
    later = datetime(2026, 1, 12, 12, 0, 1)
    assert snapshot.next_name(taken, later, "snapshot") == "20260112120001000-snapshot.cfg"


# ---------------------------------------------------------------------------------- content


def test_model_snapshot_json_shape() -> None:
    value = snapshot.model_snapshot("20260112120000123-snapshot.cfg", 1768215600123, MODELS)
    assert value["name"] == "20260112120000123-snapshot.cfg"
    assert value["created"] == 1768215600123
    assert value["modelCount"] == 3  # versions, as TorchServe counts
    assert value["models"]["echo"]["2.0"] == {
        "defaultVersion": True,
        "marName": "echo_v2.mar",
        "minWorkers": 2,
        "maxWorkers": 3,
        "batchSize": 4,
        "maxBatchDelay": 50,
        "responseTimeout": 30,
        "startupTimeout": 60,
        "runtimeType": "python",
    }
    assert "runtimeType" not in value["models"]["remote"]["1.0"]  # not recorded: left out


def test_render_then_load_round_trips_config_and_models(tmp_path: Path) -> None:
    config = config_for(job_queue_size=7, metrics_mode="log", models={"echo": {"1.0": {}}})
    value = snapshot.model_snapshot("x-snapshot.cfg", 1, MODELS)
    path = tmp_path / "20260112120000123-snapshot.cfg"
    path.write_text(snapshot.render(config, value), encoding="utf-8")
    loaded = load_config(environ={}, cwd=tmp_path, ts_config=str(path))
    assert dataclasses.replace(loaded, model_snapshot=None) == config
    assert loaded.model_snapshot == value
    assert snapshot.restore_plan(loaded.model_snapshot, str(path)) == MODELS


def test_render_writes_addresses_and_store_always_and_no_secrets() -> None:
    config = config_for(keystore_pass="hunter2", load_models="all")
    items = dict(snapshot.config_items(config))
    assert items["inference_address"] == "http://127.0.0.1:18080"
    assert items["management_address"] == "http://127.0.0.1:8081"  # the default, still written
    assert items["metrics_address"] == "http://127.0.0.1:8082"
    assert (items["grpc_inference_port"], items["grpc_management_port"]) == ("7070", "7071")
    assert items["model_store"] == "/srv/models"
    assert "job_queue_size" not in items  # defaults are left out
    assert "workflow_store" not in items  # follows model_store
    assert "load_models" not in items  # model_snapshot replaces it
    text = snapshot.render(config, snapshot.model_snapshot("n", 0, {}))
    assert "hunter2" not in text
    assert "keystore_pass" not in parse_properties(text)
    assert dict(snapshot.config_items(config_for(workflow_store="/wf")))["workflow_store"] == "/wf"


def test_render_keeps_the_files_unknown_keys() -> None:
    config = dataclasses.replace(config_for(), unknown={"vendor_option": "on"})
    assert dict(snapshot.config_items(config))["vendor_option"] == "on"


def test_render_escapes_what_properties_syntax_needs() -> None:
    config = config_for(store="C:\\models #1 = ok")
    tricky = {"m=#!": {"1:0": VersionState("a b\\c\u00e9.mar", True, 1, 1)}}
    text = snapshot.render(config, snapshot.model_snapshot("n", 0, tricky))
    assert text.isascii()
    parsed = parse_properties(text)
    assert parsed["model_store"] == "C:\\models #1 = ok"
    restored = snapshot.restore_plan(json.loads(parsed["model_snapshot"]), "t")
    assert restored == tricky


def test_missing_settings_are_none_and_defaults_false() -> None:
    plan = snapshot.restore_plan({"models": {"m": {"1.0": {"marName": "m.mar"}}}}, "t")
    assert plan == {"m": {"1.0": VersionState("m.mar")}}
    assert snapshot.restore_plan({"modelCount": 0}, "t") == {}


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([], "models must be a JSON object"),
        ({"m": []}, "m is not an object"),
        ({"m": {"1.0": "m.mar"}}, "model m version 1.0 in snap.cfg: expected a JSON object"),
        ({"m": {"1.0": {}}}, "model m version 1.0 in snap.cfg: marName must be"),
        ({"m": {"1.0": {"marName": ""}}}, "marName must be a non-empty string"),
        ({"m": {"1.0": {"marName": "a", "minWorkers": "2"}}}, "minWorkers must be an integer"),
        ({"m": {"1.0": {"marName": "a", "batchSize": True}}}, "batchSize must be an integer"),
        ({"m": {"1.0": {"marName": "a", "maxBatchDelay": -1}}}, "maxBatchDelay must be >= 0"),
        ({"m": {"1.0": {"marName": "a", "defaultVersion": "yes"}}}, "defaultVersion must be"),
        ({"m": {"1.0": {"marName": "a", "runtimeType": 3}}}, "runtimeType must be a string"),
        (
            {"m": {"1.0": {"marName": "a", "minWorkers": 3, "maxWorkers": 2}}},
            "maxWorkers 2 is less than minWorkers 3",
        ),
        (
            {"m": {v: {"marName": v, "defaultVersion": True} for v in ("1.0", "2.0")}},
            r"model m has more than one defaultVersion \(1.0, 2.0\)",
        ),
    ],
)
def test_invalid_model_snapshot_names_where_and_what(models: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        snapshot.restore_plan({"models": models}, "snap.cfg")


# --------------------------------------------------------------------------------------- IO


def test_write_snapshot_creates_the_directory_and_leaves_no_temp_file(tmp_path: Path) -> None:
    directory = tmp_path / "logs" / "config"
    created_ms = 1768215600123
    path = snapshot.write_snapshot(directory, "startup", created_ms, config_for(), MODELS)
    local = datetime.fromtimestamp(created_ms // 1000).replace(microsecond=123000)
    assert path == directory / f"{snapshot.stamp(local)}-startup.cfg"
    assert os.listdir(directory) == [path.name]
    value = json.loads(parse_properties(path.read_text(encoding="utf-8"))["model_snapshot"])
    assert (value["name"], value["created"]) == (path.name, created_ms)
    assert snapshot.latest_in(directory) == path


def test_write_snapshot_never_overwrites_an_existing_name(tmp_path: Path) -> None:
    first = snapshot.write_snapshot(tmp_path, "snapshot", 1768215600123, config_for(), {})
    before = first.read_bytes()
    second = snapshot.write_snapshot(tmp_path, "snapshot", 1768215600123, config_for(), MODELS)
    assert second != first
    assert first.read_bytes() == before
    assert snapshot.latest_in(tmp_path) == second


def test_failed_write_leaves_neither_temp_nor_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        snapshot.write_atomically(tmp_path / "20260112120000123-snapshot.cfg", "a=b\n")
    assert os.listdir(tmp_path) == []


def test_write_atomically_replaces_a_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "20260112120000123-snapshot.cfg"
    target.write_text("old=1\n")
    snapshot.write_atomically(target, "new=2\n")
    assert target.read_text() == "new=2\n"
    assert os.listdir(tmp_path) == [target.name]


def test_latest_in_a_missing_or_empty_directory_is_none(tmp_path: Path) -> None:
    assert snapshot.latest_in(tmp_path / "absent") is None
    assert snapshot.latest_in(tmp_path) is None
    (tmp_path / "20260112120000123-startup.cfg").mkdir()  # a directory is no snapshot
    assert snapshot.latest_in(tmp_path) is None
