"""The configuration value: one frozen Config, every key typed and validated. Sans-IO: reading
files and env vars is :mod:`trioserve.config_sources`' job.

Every key of contract §5.2 is a field of :class:`Config` whose metadata names its kind (how text
becomes a value, what is allowed) and whether a ``TS_*`` env var may set it; ``__post_init__``
checks every value against its kind, so a Config built by hand is held to the same rules as one
loaded from a file. Each value's origin is kept in ``Config.sources``.

Deliberate differences from TorchServe 0.12 (DESIGN §2, the docs win where explicit):
``metrics_mode`` defaults to ``prometheus``, token auth is off and the model API on by default; a
boolean that is neither ``true`` nor ``false`` is an error rather than ``false``; an invalid
``metrics_mode`` is an error rather than ``log``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from math import inf
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from trioserve.errors import ConfigError

T = TypeVar("T")

# Error messages quote at most this much of a value: a bad `models` JSON can be kilobytes.
_MAX_SHOWN_VALUE = 200


# --------------------------------------------------------------------------------- addresses
@dataclass(frozen=True)
class Address:
    """A listener address; for ``unix`` host is "" and port 0, and ``path`` is the socket."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


_ADDRESS_EXPECTED = "http(s)://host[:port] or unix:/path"
# A bracketed IPv6 literal (checked by ipaddress below) or a host name / IPv4; the trailing slash
# is tolerated because people paste URLs.
_HOST_PORT = re.compile(r"(?P<host>\[[^\]]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?/?")


def parse_address(value: str, *, default_http_port: int, default_https_port: int) -> Address:
    """Parse ``http(s)://host[:port]`` or ``unix:/path``.

    Raises:
        ConfigError: naming ``value`` when it is neither form or the port is out of range.
    """
    try:
        return _parse_address(value, default_http_port, default_https_port)
    except ValueError as exc:
        raise ConfigError(f"invalid address {value!r} (expected {exc})") from None


def _parse_address(value: str, http_port: int, https_port: int) -> Address:
    scheme, sep, rest = value.strip().partition(":")
    scheme = scheme.lower()
    if sep and scheme == "unix":
        path = rest[2:] if rest.startswith("//") else rest  # unix:///tmp/s is unix:/tmp/s
        if path:
            return Address("unix", "", 0, path)
    elif sep and scheme in ("http", "https") and rest.startswith("//"):
        match = _HOST_PORT.fullmatch(rest[2:])
        if match:
            host = match["host"]
            if host.startswith("["):
                host = host[1:-1]
                try:
                    ipaddress.IPv6Address(host)
                except ValueError:
                    raise ValueError(f"{_ADDRESS_EXPECTED} with a valid IPv6 host") from None
            default_port = https_port if scheme == "https" else http_port
            port = int(match["port"]) if match["port"] else default_port
            if port > 65535:
                raise ValueError(f"{_ADDRESS_EXPECTED} with a port in 0..65535")
            return Address(scheme, host, port)
    raise ValueError(_ADDRESS_EXPECTED)


# ------------------------------------------------------------------------------------- kinds
@dataclass(frozen=True)
class _Kind(Generic[T]):
    """How one key's text becomes a value. ``parse`` is the only validator: it raises ValueError
    (optionally with a more precise "expected" text); a typed value is valid when its rendered
    text parses back to itself, which is how ``Config.__post_init__`` checks hand-built configs."""

    expected: str
    parse: Callable[[str], T]


def _opt(kind: _Kind[T]) -> _Kind[T | None]:
    # Empty text means "unset", as an empty property does in TorchServe.
    return _Kind(f"{kind.expected} or empty", lambda text: kind.parse(text) if text else None)


def _parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError
    return text.lower() == "true"


def _parse_oip(text: str) -> bool:
    return text.lower() == "oip" or _parse_bool(text)  # TorchServe's env form of "on"


def _int(low: int, high: float = inf) -> _Kind[int]:
    def parse(text: str) -> int:
        # At most 18 digits: int() has its own digit limit and longer is nonsense here.
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", text) or not low <= int(text) <= high:
            raise ValueError
        return int(text)

    return _Kind(f"an integer >= {low}" if high == inf else f"an integer in {low}..{high}", parse)


def _parse_name(text: str) -> str:
    if not text:
        raise ValueError
    return text


def _choice(*options: str) -> _Kind[str]:
    def parse(text: str) -> str:
        if text.lower() not in options:
            raise ValueError
        return text.lower()

    return _Kind(f"one of {', '.join(options)} (case-insensitive)", parse)


def _parse_regex(text: str, expected: str = "a regular expression") -> str:
    try:
        re.compile(text, re.IGNORECASE)  # matched case-insensitively, as TorchServe does
    except re.error as exc:
        raise ValueError(f"{expected} ({text!r}: {exc})") from None
    return text


def _parse_patterns(text: str) -> tuple[str, ...]:
    # Comma-split like TorchServe (so a pattern cannot hold a comma); blanks around are noise.
    expected = "comma-separated regular expressions"
    return tuple(_parse_regex(p.strip(), expected) for p in text.split(",") if p.strip())


# A JSON string (kept) or a comma right before a closing bracket (dropped): Gson, which
# TorchServe reads `models` with, tolerates the latter and the docs' example relies on it.
_TRAILING_COMMA = re.compile(r'("(?:[^"\\]|\\.)*")|,(?=\s*[}\]])')
_MODELS_EXPECTED = "a JSON object {model: {version: {parameter: value}}}"


def _json_object(expected: str, depth: int) -> _Kind[dict[str, Any]]:
    """A JSON object whose values are objects ``depth`` levels down."""

    def objects(value: object, levels: int) -> bool:
        return isinstance(value, dict) and (
            levels == 0 or all(objects(v, levels - 1) for v in value.values())
        )

    def parse(text: str) -> dict[str, Any]:
        try:
            data = json.loads(_TRAILING_COMMA.sub(lambda m: m[1] or "", text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{expected}; {exc}") from None
        if not isinstance(data, dict) or not objects(data, depth):
            raise ValueError
        return data

    return _Kind(expected, parse)


def _address(http_port: int, https_port: int) -> _Kind[Address]:
    return _Kind(_ADDRESS_EXPECTED, lambda text: _parse_address(text, http_port, https_port))


def _m(kind: _Kind[Any], *, env: bool | str = True) -> dict[str, object]:
    """Field metadata: env=True means ``TS_<KEY>``, False not settable by env (§5.2's `*`)."""
    return {"kind": kind, "env": env}


_BOOL = _m(_Kind("true or false (case-insensitive)", _parse_bool))
_PORT = _m(_int(0, 65535))
_NONNEG = _m(_int(0))
_POS = _m(_int(1))
_OPT_NONNEG = _m(_opt(_int(0)))
_OPT_POS = _m(_opt(_int(1)))
_TEXT = _m(_Kind("a string", str))
_NAME_KIND = _Kind("a non-empty string", _parse_name)
_NAME = _m(_NAME_KIND)
_OPT_TEXT = _m(_opt(_Kind("a string", str)))
_NO_ENV_BOOL = _m(_Kind("true or false (case-insensitive)", _parse_bool), env=False)
_NO_ENV_TEXT = _m(_opt(_Kind("a string", str)), env=False)


def _parse_seconds(text: str) -> float:
    # Plain decimals only ("2", "0.5"): what a hand-built value renders back to, too.
    if not re.fullmatch(r"[0-9]{1,9}(?:\.[0-9]{1,9})?", text) or float(text) <= 0:
        raise ValueError
    return float(text)


_SECONDS = _m(_Kind("a number of seconds > 0", _parse_seconds))


def _parse_http_url(text: str) -> str:
    # scheme://host[:port][/path]; a query, fragment or user info has no place in an endpoint.
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(?:/[^\s?#@]*)?", text, re.IGNORECASE):
        raise ValueError
    return text


_HTTP_URL = _Kind("an http(s)://host[:port][/path] URL", _parse_http_url)


def _all_default() -> Mapping[str, str]:
    return MappingProxyType(dict.fromkeys(_KINDS, "default"))


def _no_unknown() -> Mapping[str, str]:
    return MappingProxyType({})


# ------------------------------------------------------------------------------------ Config
@dataclass(frozen=True)
class Config:
    """Every contract §5.2 key, typed and validated. Build with ``config_sources.load_config`` or
    :func:`default_config`; ``Config(...)`` validates too. Equality ignores where values came
    from (``sources``, ``unknown``, ``config_file``).

    Raises:
        ConfigError: from construction, naming the key, the value and what is allowed.
    """

    inference_address: Address = field(
        default=Address("http", "127.0.0.1", 8080), metadata=_m(_address(80, 443))
    )
    management_address: Address = field(
        default=Address("http", "127.0.0.1", 8081), metadata=_m(_address(8081, 8444))
    )
    metrics_address: Address = field(
        default=Address("http", "127.0.0.1", 8082), metadata=_m(_address(8082, 8445))
    )
    grpc_inference_address: str = field(default="127.0.0.1", metadata=_NAME)
    grpc_management_address: str = field(default="127.0.0.1", metadata=_NAME)
    grpc_inference_port: int = field(default=7070, metadata=_PORT)
    grpc_management_port: int = field(default=7071, metadata=_PORT)
    # None: no limit (TorchServe's "infinite").
    grpc_inference_max_connection_age_ms: int | None = field(default=None, metadata=_OPT_POS)
    grpc_management_max_connection_age_ms: int | None = field(default=None, metadata=_OPT_POS)
    grpc_inference_max_connection_age_grace_ms: int | None = field(
        default=None, metadata=_OPT_NONNEG
    )
    grpc_management_max_connection_age_grace_ms: int | None = field(
        default=None, metadata=_OPT_NONNEG
    )
    enable_grpc_ssl: bool = field(default=False, metadata=_BOOL)
    keystore: str | None = field(default=None, metadata=_OPT_TEXT)
    keystore_pass: str = field(default="changeit", metadata=_TEXT, repr=False)
    keystore_type: str = field(default="PKCS12", metadata=_NAME)
    private_key_file: str | None = field(default=None, metadata=_OPT_TEXT)
    certificate_file: str | None = field(default=None, metadata=_OPT_TEXT)
    model_store: str | None = field(default=None, metadata=_OPT_TEXT)
    workflow_store: str | None = field(default=None, metadata=_OPT_TEXT)  # loaded: model_store
    load_models: str | None = field(default=None, metadata=_OPT_TEXT)
    models: dict[str, dict[str, dict[str, object]]] = field(
        default_factory=dict, metadata=_m(_json_object(_MODELS_EXPECTED, 2), env=False)
    )
    model_snapshot: dict[str, Any] | None = field(
        default=None, metadata=_m(_opt(_json_object("a JSON object", 0)), env=False)
    )
    default_workers_per_model: int = field(default=0, metadata=_NONNEG)  # 0: #GPUs or #CPUs
    default_response_timeout: int = field(default=120, metadata=_NONNEG)
    default_startup_timeout: int = field(default=120, metadata=_NONNEG)
    unregister_model_timeout: int = field(default=120, metadata=_NONNEG)
    # trioserve's own: how long SIGTERM/SIGINT wait for accepted requests before cancelling.
    drain_timeout: int = field(default=30, metadata=_NONNEG)
    job_queue_size: int = field(default=100, metadata=_POS)
    number_of_gpu: int | None = field(default=None, metadata=_OPT_NONNEG)  # None: all visible
    # trioserve's own: recycle a worker past this many requests / this RSS (0: never); a model's
    # yaml maxRequestsPerWorker / maxWorkerRssMb beats them.
    max_requests_per_worker: int = field(default=0, metadata=_NONNEG)
    max_worker_rss_mb: int = field(default=0, metadata=_NONNEG)
    number_of_netty_threads: int = field(default=0, metadata=_NONNEG)
    netty_client_threads: int = field(default=0, metadata=_NONNEG)
    max_request_size: int = field(default=6553500, metadata=_POS)
    max_response_size: int = field(default=6553500, metadata=_POS)
    # trioserve's own: what one HTTP client may hold (docs/limits.md; http/limits.py says why).
    http_max_header_bytes: int = field(default=65536, metadata=_POS)  # larger: 431
    http_header_timeout: float = field(default=10.0, metadata=_SECONDS)  # from its first byte
    http_body_timeout: float = field(default=30.0, metadata=_SECONDS)  # + 1 s per 16 KiB read
    http_keepalive_timeout: float = field(default=30.0, metadata=_SECONDS)
    http_write_timeout: float = field(default=30.0, metadata=_SECONDS)  # per 64 KiB sent
    http_max_connections: int = field(default=1000, metadata=_POS)  # per listener; then 503
    http_max_requests_per_connection: int = field(default=1000, metadata=_POS)
    limit_max_image_pixels: bool = field(default=True, metadata=_BOOL)
    allowed_urls: tuple[str, ...] = field(
        default=("file://.*", "http(s)?://.*"),
        metadata=_m(_Kind("comma-separated regular expressions", _parse_patterns)),
    )
    use_env_allowed_urls: bool = field(default=False, metadata=_NO_ENV_BOOL)
    # trioserve's own: where s3://bucket/key URLs go (path-style); None: boto3's endpoint
    # setting (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL), else AWS.
    s3_endpoint_url: str | None = field(default=None, metadata=_m(_opt(_HTTP_URL)))
    install_py_dep_per_model: bool = field(default=False, metadata=_BOOL)
    decode_input_request: bool = field(default=True, metadata=_BOOL)
    default_service_handler: str | None = field(default=None, metadata=_OPT_TEXT)
    service_envelope: str | None = field(
        default=None, metadata=_m(_opt(_choice("body", "json", "kserve", "kservev2")))
    )
    metrics_mode: str = field(
        default="prometheus", metadata=_m(_choice("log", "prometheus", "legacy"))
    )
    # The docs' key (§5.3.12): the /metrics format; prometheus is the only one.
    metrics_format: str = field(default="prometheus", metadata=_m(_choice("prometheus")))
    metrics_config: str | None = field(default=None, metadata=_OPT_TEXT)  # None: built-in yaml
    model_metrics_auto_detect: bool = field(default=False, metadata=_BOOL)
    disable_system_metrics: bool = field(default=False, metadata=_BOOL)
    system_metrics_cmd: str | None = field(default=None, metadata=_NO_ENV_TEXT)
    metric_time_interval: int = field(default=60, metadata=_m(_int(1), env=False))
    enable_metrics_api: bool = field(default=True, metadata=_BOOL)
    enable_envvars_config: bool = field(default=False, metadata=_NO_ENV_BOOL)
    blacklist_env_vars: str = field(
        default="", metadata=_m(_Kind("a regular expression", _parse_regex))
    )
    cors_allowed_origin: str | None = field(default=None, metadata=_OPT_TEXT)
    cors_allowed_methods: str | None = field(default=None, metadata=_OPT_TEXT)
    cors_allowed_headers: str | None = field(default=None, metadata=_OPT_TEXT)
    prefer_direct_buffer: bool = field(default=False, metadata=_BOOL)
    async_logging: bool = field(default=False, metadata=_BOOL)
    initial_worker_port: int = field(default=9000, metadata=_PORT)
    initial_distribution_port: int = field(default=29500, metadata=_PORT)
    model_server_home: str | None = field(default=None, metadata=_OPT_TEXT)  # None: install dir
    ipex_enable: bool = field(default=False, metadata=_BOOL)
    ipex_gpu_enable: bool = field(default=False, metadata=_BOOL)
    cpu_launcher_enable: bool = field(default=False, metadata=_BOOL)
    cpu_launcher_args: str | None = field(default=None, metadata=_OPT_TEXT)
    ts_open_inference_protocol: bool = field(
        default=False,
        metadata=_m(_Kind("true, false or oip", _parse_oip), env="TS_OPEN_INFERENCE_PROTOCOL"),
    )
    token_expiration_min: int = field(
        default=60, metadata=_m(_int(1), env="TS_TOKEN_EXPIRATION_TIME_MIN")
    )
    ts_header_key_sequence_id: str = field(
        default="ts_request_sequence_id", metadata=_m(_NAME_KIND, env="TS_HEADER_KEY_SEQUENCE_ID")
    )
    ts_header_key_sequence_start: str = field(
        default="ts_request_sequence_start",
        metadata=_m(_NAME_KIND, env="TS_HEADER_KEY_SEQUENCE_START"),
    )
    ts_header_key_sequence_end: str = field(
        default="ts_request_sequence_end", metadata=_m(_NAME_KIND, env="TS_HEADER_KEY_SEQUENCE_END")
    )
    disable_token_authorization: bool = field(default=True, metadata=_BOOL)
    enable_model_api: bool = field(default=True, metadata=_BOOL)
    debug: bool = field(default=False, metadata=_BOOL)
    cpp_log_config: str | None = field(default=None, metadata=_OPT_TEXT)
    use_native_io: bool = field(default=True, metadata=_NO_ENV_BOOL)
    io_ratio: int = field(default=50, metadata=_m(_int(1, 100), env=False))
    vmargs: str | None = field(default=None, metadata=_NO_ENV_TEXT)
    plugins_path: str | None = field(default=None, metadata=_NO_ENV_TEXT)

    sources: Mapping[str, str] = field(default_factory=_all_default, compare=False, repr=False)
    unknown: Mapping[str, str] = field(default_factory=_no_unknown, compare=False, repr=False)
    config_file: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for key, kind in _KINDS.items():
            value = getattr(self, key)
            text = _render(value)
            try:
                ok = kind.parse(text) == value
            except ValueError as exc:
                raise _invalid(
                    key, text, str(exc) or kind.expected, self.sources.get(key)
                ) from None
            if not ok:
                raise _invalid(key, text, kind.expected, self.sources.get(key))
        if (self.private_key_file is None) != (self.certificate_file is None):
            raise ConfigError(
                "private_key_file and certificate_file must be set together "
                f"(got private_key_file={self.private_key_file!r}, "
                f"certificate_file={self.certificate_file!r})"
            )

    def effective(self) -> list[tuple[str, str, str]]:
        """``(key, rendered value, source)`` for every key, sorted by key; secrets masked."""
        return [
            (
                key,
                "********" if key in _SECRETS else _render(getattr(self, key)),
                self.sources.get(key, "default"),
            )
            for key in sorted(_KINDS)
        ]


_KINDS: dict[str, _Kind[Any]] = {f.name: f.metadata["kind"] for f in fields(Config) if f.metadata}
_SECRETS = frozenset({"keystore_pass"})


def _render(value: object) -> str:
    """The text form a key would have in a properties file (what ``effective`` shows)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _invalid(key: str, value: str, expected: str, source: str | None = None) -> ConfigError:
    shown = value if len(value) <= _MAX_SHOWN_VALUE else value[:_MAX_SHOWN_VALUE] + "..."
    where = f", from {source}" if source and source != "default" else ""
    return ConfigError(f"invalid value for {key}: {shown!r} (expected {expected}){where}")


def parse_value(key: str, text: str, source: str) -> Any:
    """``key``'s typed value from ``text`` as read from ``source``; raises ConfigError naming all
    three and what is allowed. Stripped: Java keeps trailing blanks ("model_store=/models ")."""
    kind = _KINDS[key]
    try:
        return kind.parse(text.strip())
    except ValueError as exc:
        raise _invalid(key, text, str(exc) or kind.expected, source) from None


def default_config() -> Config:
    """The built-in defaults, as if no file, env var or flag were given."""
    return Config()
