"""Configuration sources: a properties or TOML file, env vars and CLI flags, folded in order of
precedence into one :class:`~trioserve.config.Config` by :func:`load_config`.

Sans-IO except for finding and reading the one chosen config file: ``environ``, ``cwd`` and the
snapshot directory are passed in. Each value's origin (``file:…``, ``toml:…``, ``snapshot:…``,
``env:TS_…``, ``cli:--…``) is recorded in ``Config.sources`` for ``trioserve config --effective``.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType

import javaproperties

from trioserve.config import Config, parse_value
from trioserve.errors import ConfigError
from trioserve.models import snapshot

log = logging.getLogger(__name__)

# Every key, in field order, and the env var that may set it (field metadata "env": True for
# TS_<KEY>, a name of its own, or False when only the file may set it, §5.2's `*`).
_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Config) if f.metadata)
_ENV_NAMES: dict[str, str] = {
    f.name: f"TS_{f.name.upper()}" if f.metadata["env"] is True else f.metadata["env"]
    for f in fields(Config)
    if f.metadata and f.metadata["env"]
}
# What Go templates (KServe renders a runtime's env with them) write for a missing value.
NO_VALUE = "<no value>"


# ------------------------------------------------------------------------------- file formats


def parse_properties(text: str) -> dict[str, str]:
    """Java properties (``\\`` continuations, ``#``/``!`` comments, escapes) to a dict."""
    try:
        return dict(javaproperties.loads(text))
    except ValueError as exc:  # a bad \\u escape
        raise ConfigError(f"invalid properties file: {exc}") from None


_JSON_KEYS = frozenset({"models", "model_snapshot"})


def parse_toml(data: bytes | str) -> dict[str, str]:
    """The same keys from TOML, each value rendered as the properties text it stands for."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        doc = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"invalid TOML: {exc}") from None
    return {key: _toml_text(key, value) for key, value in doc.items()}


def _toml_text(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict) or (isinstance(value, list) and key in _JSON_KEYS):
        return json.dumps(value, default=str)
    if isinstance(value, list):
        return ",".join(_toml_text(key, v) for v in value)
    return str(value)


_ENV_REFERENCE = re.compile(r"\$\$([^$]+)\$\$")


def _substitute(key: str, value: str, environ: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match[1]
        if name not in environ:
            raise ConfigError(f"Invalid Environment Variable {name} (referenced by {key})")
        return environ[name]

    return _ENV_REFERENCE.sub(replace, value)


# ------------------------------------------------------------------------------------ loading
def _choose_file(
    environ: Mapping[str, str], cwd: Path, ts_config: str | None, snapshot_dir: Path | None
) -> tuple[Path | None, bool]:
    """The file to read and whether it is a config snapshot (contract §5.1): TS_CONFIG_FILE,
    then --ts-config, then the latest snapshot in ``snapshot_dir``, then ./config.properties."""
    if environ.get("TS_CONFIG_FILE"):
        named, by = environ["TS_CONFIG_FILE"], "TS_CONFIG_FILE"
    elif ts_config is not None:
        named, by = ts_config, "--ts-config"
    else:
        latest = None if snapshot_dir is None else snapshot.latest_in(cwd / snapshot_dir)
        if latest is not None:
            return latest, True
        local = cwd / "config.properties"
        return (local if local.is_file() else None), False
    path = cwd / named  # an absolute name replaces cwd
    if not path.is_file():
        raise ConfigError(f"{by} file not found: {named}")
    return path, False


def _read_file(path: Path) -> tuple[dict[str, str], str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if path.suffix.lower() == ".toml":
        return parse_toml(data), f"toml:{path}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # what java.util.Properties.load(InputStream) assumes
    return parse_properties(text), f"file:{path}"


def load_config(
    *,
    environ: Mapping[str, str],
    cwd: Path,
    ts_config: str | None = None,
    model_store: str | None = None,
    models: Sequence[str] | None = None,
    workflow_store: str | None = None,
    enable_model_api: bool = False,
    disable_token_auth: bool = False,
    snapshot_dir: Path | None = None,
) -> Config:
    """Fold file, CLI flags and env vars (precedence low to high) into a Config.

    ``environ`` and ``cwd`` are passed in rather than read so callers and tests control them.
    ``enable_model_api`` and ``disable_token_auth`` can only switch their setting one way.

    ``snapshot_dir`` is where config snapshots live (``{LOG_LOCATION|logs}/config``, relative
    to ``cwd``), or None for ``--ncs``. With no TS_CONFIG_FILE and no ``--ts-config`` the latest
    snapshot there is the file, and ./config.properties is not read. Explicit command-line
    arguments are never overridden by a snapshot: ``--model-store`` is where its archives are
    looked up, and ``--models`` replaces its models (its ``model_snapshot`` is dropped, whichever
    file it came from, so ``load_models`` applies).

    Raises:
        ConfigError: a named file is missing or unreadable, a ``$$NAME$$`` has no env var, or a
            value is invalid (the message names key, value, what is allowed and the source).
    """
    path, from_snapshot = _choose_file(environ, cwd, ts_config, snapshot_dir)
    raw: dict[str, tuple[str, str]] = {}  # key -> (text, source)
    unknown: dict[str, str] = {}
    if path is not None:
        values, source = _read_file(path)
        if from_snapshot:
            source = f"snapshot:{path}"
            log.info("configuration restored from snapshot %s", path)
        for key, text in values.items():
            if key in _KEYS:
                raw[key] = (_substitute(key, text, environ), source)
            else:
                log.warning("unknown config key %r in %s is ignored", key, path)
                unknown[key] = text

    flags = {
        "model_store": (model_store, "--model-store"),
        "workflow_store": (workflow_store, "--workflow-store"),
        "load_models": (",".join(models) if models else None, "--models"),
        "enable_model_api": ("true" if enable_model_api else None, "--enable-model-api"),
        "disable_token_authorization": (
            "true" if disable_token_auth else None,
            "--disable-token-auth",
        ),
    }
    for key, (value, flag) in flags.items():
        if value is not None:
            raw[key] = (value, f"cli:{flag}")
    if models and raw.pop("model_snapshot", None) is not None:
        log.info("--models given: the models of the config snapshot are not restored")

    def from_file(key: str) -> bool:
        # Only the file can set these two (§5.2 `*`), so `raw` holds the file's value if any.
        return key in raw and bool(parse_value(key, *raw[key]))

    if from_file("enable_envvars_config"):
        env_urls = from_file("use_env_allowed_urls")
        for key, name in _ENV_NAMES.items():
            # A Kubernetes template with a missing label renders "<no value>": that is unset.
            if environ.get(name, NO_VALUE) != NO_VALUE and (key != "allowed_urls" or env_urls):
                raw[key] = (environ[name], f"env:{name}")
    oip = environ.get("TS_OPEN_INFERENCE_PROTOCOL", "")
    if oip.strip().lower() == "oip":  # honoured by TorchServe without enable_envvars_config
        raw["ts_open_inference_protocol"] = (oip, "env:TS_OPEN_INFERENCE_PROTOCOL")

    typed = {key: parse_value(key, text, source) for key, (text, source) in raw.items()}
    sources = dict.fromkeys(_KEYS, "default") | {key: src for key, (_, src) in raw.items()}
    if "workflow_store" not in raw:
        typed["workflow_store"] = typed.get("model_store")
    return Config(
        **typed,
        sources=MappingProxyType(sources),
        unknown=MappingProxyType(unknown),
        config_file=None if path is None else str(path),
    )
