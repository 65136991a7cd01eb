"""Config snapshots (contract §5.4): what a snapshot file holds, what it is called and which one
is the latest, so a restart restores every model, version, default and worker count.

A snapshot is a Java-properties file: the configuration (every key not at its built-in default,
plus the addresses and ``model_store`` always) and ``model_snapshot``, a JSON object
``{"name", "modelCount", "created", "models": {name: {version: {...}}}}``. It is named
``{yyyyMMddHHmmssSSS}-{startup|snapshot|shutdown}.cfg`` in local time, as TorchServe names it.

Sans-IO except the last three functions (list a directory, write a file atomically): nothing
here imports trio; async callers run :func:`write_snapshot` in a thread.

Rules:
- A new name is never at or before the newest stamp already in the directory (it is bumped by
  1 ms instead), so no file is overwritten and the newest write is always the one restored,
  across clock steps, DST and files TorchServe wrote in the same directory.
- The latest snapshot is chosen by the stamp in its name (ties: shutdown, then snapshot, then
  startup), never by modification time; files not named like a snapshot are ignored.
- Secrets (``keystore_pass``) are never written, and neither is ``load_models``:
  ``model_snapshot`` replaces it on restore.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import javaproperties

from trioserve.config import Config, default_config
from trioserve.errors import ConfigError

KINDS = ("startup", "snapshot", "shutdown")  # also the tie-break order of one stamp
_NAME = re.compile(r"(?P<stamp>[0-9]{17})-(?P<kind>startup|snapshot|shutdown)\.cfg")
_STAMP = "%Y%m%d%H%M%S"  # then three digits of milliseconds
# Written whatever their value, so a restart binds the same listeners and finds the archives.
_ALWAYS = frozenset(
    {
        "inference_address",
        "management_address",
        "metrics_address",
        "grpc_inference_address",
        "grpc_management_address",
        "grpc_inference_port",
        "grpc_management_port",
        "model_store",
    }
)
_NEVER = frozenset({"keystore_pass", "load_models", "model_snapshot"})


# ------------------------------------------------------------------------------------ names
def stamp(when: datetime) -> str:
    """``yyyyMMddHHmmssSSS`` of a (naive, local) time."""
    return when.strftime(_STAMP) + f"{when.microsecond // 1000:03d}"


def parse_name(name: str) -> tuple[datetime, str] | None:
    """The time and kind a snapshot file name carries, or None for any other name."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    text = match["stamp"]
    try:
        when = datetime.strptime(text[:14], _STAMP)
    except ValueError:
        return None
    return when + timedelta(milliseconds=int(text[14:])), match["kind"]


def _order(name: str) -> tuple[datetime, int] | None:
    parsed = parse_name(name)
    return None if parsed is None else (parsed[0], KINDS.index(parsed[1]))


def latest(names: Iterable[str]) -> str | None:
    """The snapshot name with the newest stamp (ties: shutdown > snapshot > startup)."""
    ranked = [(order, name) for name in names if (order := _order(name)) is not None]
    return max(ranked)[1] if ranked else None


def next_name(existing: Iterable[str], now: datetime, kind: str) -> str:
    """The name for a ``kind`` snapshot taken at ``now``, later than every snapshot name in
    ``existing`` (bumped to 1 ms after the newest one when the clock is not past it)."""
    if kind not in KINDS:
        raise ValueError(f"snapshot kind must be one of {', '.join(KINDS)}, not {kind!r}")
    when = now.replace(microsecond=now.microsecond // 1000 * 1000)
    stamps = [parsed[0] for name in existing if (parsed := parse_name(name)) is not None]
    if stamps and max(stamps) >= when:
        when = max(stamps) + timedelta(milliseconds=1)
    return f"{stamp(when)}-{kind}.cfg"


# ----------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class VersionState:
    """One model version as a snapshot records it. None: not recorded (a restore then chooses
    the value as a register without that parameter would)."""

    mar_name: str
    default: bool = False
    min_workers: int | None = None
    max_workers: int | None = None
    batch_size: int | None = None
    max_batch_delay: int | None = None
    response_timeout: int | None = None
    startup_timeout: int | None = None
    runtime_type: str | None = None

    def to_json(self) -> dict[str, object]:
        values: dict[str, object] = {"defaultVersion": self.default, "marName": self.mar_name}
        for key, attr in _INT_KEYS.items():
            if getattr(self, attr) is not None:
                values[key] = getattr(self, attr)
        if self.runtime_type is not None:
            values["runtimeType"] = self.runtime_type
        return values


_INT_KEYS = {
    "minWorkers": "min_workers",
    "maxWorkers": "max_workers",
    "batchSize": "batch_size",
    "maxBatchDelay": "max_batch_delay",
    "responseTimeout": "response_timeout",
    "startupTimeout": "startup_timeout",
}

Models = Mapping[str, Mapping[str, VersionState]]


def model_snapshot(name: str, created_ms: int, models: Models) -> dict[str, Any]:
    """The ``model_snapshot`` JSON value; ``modelCount`` counts versions, as TorchServe does."""
    return {
        "name": name,
        "modelCount": sum(len(versions) for versions in models.values()),
        "created": created_ms,
        "models": {
            model: {version: state.to_json() for version, state in versions.items()}
            for model, versions in models.items()
        },
    }


def restore_plan(snapshot: Mapping[str, Any], source: str) -> dict[str, dict[str, VersionState]]:
    """The model versions a ``model_snapshot`` value records, checked.

    Raises:
        ConfigError: naming ``source``, the model, the version and the key that is wrong.
    """
    models = snapshot.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"invalid model_snapshot in {source}: models must be a JSON object")
    plan: dict[str, dict[str, VersionState]] = {}
    for model, versions in models.items():
        if not isinstance(versions, dict):
            raise ConfigError(f"invalid model_snapshot in {source}: {model} is not an object")
        plan[model] = {
            version: _version_state(values, f"model {model} version {version} in {source}")
            for version, values in versions.items()
        }
        defaults = [v for v, state in plan[model].items() if state.default]
        if len(defaults) > 1:
            raise ConfigError(
                f"invalid model_snapshot in {source}: model {model} has more than one "
                f"defaultVersion ({', '.join(defaults)})"
            )
    return plan


def _version_state(values: object, where: str) -> VersionState:
    def bad(what: str) -> ConfigError:
        return ConfigError(f"invalid model_snapshot entry for {where}: {what}")

    if not isinstance(values, dict):
        raise bad("expected a JSON object")
    mar = values.get("marName")
    if not isinstance(mar, str) or not mar:
        raise bad(f"marName must be a non-empty string, got {mar!r}")
    default = values.get("defaultVersion", False)
    if not isinstance(default, bool):
        raise bad(f"defaultVersion must be true or false, got {default!r}")
    ints: dict[str, int | None] = {}
    for key, attr in _INT_KEYS.items():
        value = values.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad(f"{key} must be an integer, got {value!r}")
        if value is not None and value < 0:
            raise bad(f"{key} must be >= 0, got {value}")
        ints[attr] = value
    low, high = ints["min_workers"], ints["max_workers"]
    if low is not None and high is not None and high < low:
        raise bad(f"maxWorkers {high} is less than minWorkers {low}")
    runtime = values.get("runtimeType")
    if runtime is not None and not isinstance(runtime, str):
        raise bad(f"runtimeType must be a string, got {runtime!r}")
    return VersionState(mar, default, runtime_type=runtime, **ints)


# ------------------------------------------------------------------------------ properties
def config_items(config: Config) -> list[tuple[str, str]]:
    """The configuration as properties: each key whose value is not the built-in default, the
    addresses and ``model_store`` always, and the unknown keys the file had, sorted."""
    defaults = {key: value for key, value, _ in default_config().effective()}
    items: dict[str, str] = {}
    for key, value, _ in config.effective():
        if key in _NEVER or (key not in _ALWAYS and value == defaults[key]):
            continue
        if key == "workflow_store" and config.workflow_store == config.model_store:
            continue  # left out, it follows model_store (a --model-store given at restore too)
        items[key] = value
    for key, value in config.unknown.items():
        items.setdefault(key, value)
    return sorted(items.items())


def render(config: Config, snapshot: Mapping[str, Any]) -> str:
    """The snapshot file's text: ``config``'s properties and ``model_snapshot``."""
    items = [*config_items(config), ("model_snapshot", json.dumps(snapshot))]
    return javaproperties.dumps(
        items, comments=f"trioserve config snapshot {snapshot.get('name', '')}", timestamp=False
    )


# -------------------------------------------------------------------------------------- IO
def latest_in(directory: Path) -> Path | None:
    """The latest snapshot file in ``directory``; None when there is none (or no directory)."""
    try:
        names = [entry.name for entry in os.scandir(directory) if entry.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return None
    name = latest(names)
    return None if name is None else directory / name


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old file or the whole new one, never a
    part: a temporary file in the same directory, fsync, ``os.replace``, fsync the directory.

    Resource handling: the temporary file is removed whatever fails.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return  # no directory handle on this platform: the rename is still atomic
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_snapshot(
    directory: Path, kind: str, created_ms: int, config: Config, models: Models
) -> Path:
    """Write a ``kind`` snapshot of ``config`` and ``models`` taken at ``created_ms`` (epoch ms)
    into ``directory`` (created if missing); returns its path. Blocking: run it in a thread.

    Raises:
        OSError: the directory or file cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.fromtimestamp(created_ms // 1000).replace(microsecond=created_ms % 1000 * 1000)
    name = next_name(os.listdir(directory), now, kind)
    path = directory / name
    write_atomically(path, render(config, model_snapshot(name, created_ms, models)))
    return path
