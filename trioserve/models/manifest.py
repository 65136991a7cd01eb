"""Parse a model archive's metadata: ``MAR-INF/MANIFEST.json`` and model-config.yaml (contract
§6.2, §6.3).

Bytes in, values out: no file system, no sockets, no trio. :mod:`trioserve.models.archive` finds
and reads the files (within its size limit) and hands their bytes here. Both come from users, so
every failure is an :class:`~trioserve.errors.InvalidModel` whose message says what is wrong.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from trioserve.errors import InvalidModel

log = logging.getLogger(__name__)

RUNTIMES = frozenset({"python", "python3", "LSP"})

_PARSE_FAILED = "Failed to parse signature.json."


def _text(value: object) -> str | None:
    """A manifest string field. Numbers and booleans become text as TorchServe's Gson reads them
    (hand-written manifests often say ``"modelVersion": 1.0``); objects and lists do not parse."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise InvalidModel(_PARSE_FAILED)


# Manifest fields read verbatim from the "model" section.
_MANIFEST_KEYS = {
    "model_name": "modelName",
    "handler": "handler",
    "serialized_file": "serializedFile",
    "model_file": "modelFile",
    "config_file": "configFile",
    "requirements_file": "requirementsFile",
    "extensions": "extensions",
    "envelope": "envelope",
}


@dataclass(frozen=True)
class Manifest:
    """``MAR-INF/MANIFEST.json``: the fields the server acts on, typed; ``raw`` keeps the rest
    (``createdOn``, ``archiverVersion``, user additions) as read."""

    model_name: str | None = None
    model_version: str = "1.0"
    handler: str | None = None
    serialized_file: str | None = None
    model_file: str | None = None
    runtime: str = "python"
    config_file: str | None = None
    requirements_file: str | None = None
    extensions: str | None = None
    envelope: str | None = None
    description: str | None = None
    raw: Mapping[str, object] = field(default_factory=dict, hash=False)

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and validate as the TorchServe frontend does (contract §6.2).

        The model name may be absent: register's ``model_name`` parameter or the file name
        supplies it, so the caller checks it, not this.

        Raises:
            InvalidModel: with TorchServe's message for each failure.
        """
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            raise InvalidModel(_PARSE_FAILED) from None
        if not isinstance(doc, dict):
            raise InvalidModel(_PARSE_FAILED)
        model = doc.get("model")
        if model is None:
            raise InvalidModel("Missing Model entry in manifest file.")
        if not isinstance(model, dict):
            raise InvalidModel(_PARSE_FAILED)
        version = _text(model.get("modelVersion", model.get("version")))
        if version is None:
            raise InvalidModel("Model version is not defined.")
        runtime = doc.get("runtime", "python")
        if not isinstance(runtime, str) or runtime not in RUNTIMES:
            raise InvalidModel("Runtime is not defined or invalid.")
        for key in ("archiverVersion", "createdOn"):
            if key not in doc:
                log.warning("Model manifest has no %s", key)
        texts = {name: _text(model.get(key)) for name, key in _MANIFEST_KEYS.items()}
        description = _text(model.get("description", doc.get("description")))
        return cls(
            model_version=version, runtime=runtime, description=description, raw=doc, **texts
        )

    @classmethod
    def empty(cls) -> Manifest:
        """What an archive without a manifest gets: version 1.0, runtime python, no handler."""
        return cls()


def _bad(key: str, what: str, value: object) -> InvalidModel:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return InvalidModel(f"Invalid model config: {key} must be {what}, got {shown}.")


def _of(kind: type, what: str) -> Callable[[str, object], object]:
    def parse(key: str, value: object) -> object:
        # bool is an int subclass, but `batchSize: true` is a mistake, not 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _bad(key, what, value)
        return value

    return parse


_int, _bool, _str = _of(int, "an integer"), _of(bool, "true or false"), _of(str, "a string")


def _nonneg(key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(key, "an integer >= 0", value)
    return value


def _ints(key: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise _bad(key, "a list of integers", value)
    return tuple(value)


def _key(key: str, parse: Callable[[str, object], object], default: object = None) -> Any:
    """A field read from YAML ``key`` through ``parse``, which raises InvalidModel naming it."""
    return field(default=default, metadata={"key": key, "parse": parse})


@dataclass(frozen=True)
class ModelConfig:
    """model-config.yaml (contract §6.3): the frontend's keys typed, unset ones None or their
    default. Range and cross-key rules (``maxWorkers >= minWorkers``, valid GPU ids) need server
    state and are applied by the caller. ``raw`` is the whole document, which the handler gets
    as ``context.model_yaml_config``."""

    min_workers: int | None = _key("minWorkers", _int)
    max_workers: int | None = _key("maxWorkers", _int)
    batch_size: int | None = _key("batchSize", _int)
    max_batch_delay: int | None = _key("maxBatchDelay", _int)
    response_timeout: int | None = _key("responseTimeout", _int)
    startup_timeout: int | None = _key("startupTimeout", _int)
    device_type: str | None = _key("deviceType", _str)
    device_ids: tuple[int, ...] | None = _key("deviceIds", _ints)
    parallel_type: str | None = _key("parallelType", _str)
    parallel_level: int = _key("parallelLevel", _int, 0)
    max_retry_timeout_sec: int = _key("maxRetryTimeoutInSec", _int, 300)
    client_timeout_ms: int = _key("clientTimeoutInMills", _int, 0)
    job_queue_size: int = _key("jobQueueSize", _int, 0)
    use_job_ticket: bool = _key("useJobTicket", _bool, False)
    use_venv: bool = _key("useVenv", _bool, False)
    sequence_batching: bool = _key("sequenceBatching", _bool, False)
    continuous_batching: bool = _key("continuousBatching", _bool, False)
    sequence_max_idle_ms: int = _key("sequenceMaxIdleMSec", _int, 0)
    sequence_timeout_ms: int = _key("sequenceTimeoutMSec", _int, 0)
    max_sequence_job_queue_size: int = _key("maxSequenceJobQueueSize", _int, 1)
    max_num_sequence: int = _key("maxNumSequence", _int, 1)
    # trioserve's own (not TorchServe's): recycle a worker past these; 0 = off, unset = the
    # server's max_requests_per_worker / max_worker_rss_mb (models/recycling.py).
    max_requests_per_worker: int | None = _key("maxRequestsPerWorker", _nonneg)
    max_worker_rss_mb: int | None = _key("maxWorkerRssMb", _nonneg)
    raw: Mapping[str, object] = field(default_factory=dict, hash=False)

    @classmethod
    def from_yaml(cls, data: bytes) -> ModelConfig:
        """Parse with ``yaml.safe_load`` (no object construction). A key set to null counts as
        unset. ``torchrun.nproc-per-node`` sets ``parallel_level`` unless that key is given.

        Raises:
            InvalidModel: not YAML, not a mapping, or a frontend key of the wrong type (named).
        """
        try:
            doc = yaml.safe_load(data)
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise InvalidModel(f"Invalid model config: not valid YAML{where}.") from None
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise _bad("the document", "a mapping", type(doc).__name__)
        for key in doc:
            if not isinstance(key, str):
                raise _bad("every key", "a string", key)
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.metadata.get("key")
            if key is not None and doc.get(key) is not None:
                values[f.name] = f.metadata["parse"](key, doc[key])
        torchrun = doc.get("torchrun")
        if torchrun is not None:
            if not isinstance(torchrun, dict):
                raise _bad("torchrun", "a mapping", torchrun)
            nproc = torchrun.get("nproc-per-node")
            if nproc is not None and "parallel_level" not in values:
                values["parallel_level"] = _int("torchrun.nproc-per-node", nproc)
        return cls(raw=doc, **values)

    @classmethod
    def empty(cls) -> ModelConfig:
        """What an archive without a config file gets: every default."""
        return cls()
