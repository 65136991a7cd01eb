"""config.py: file lookup, precedence, parsing, validation messages and recorded sources."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from trioserve.config import Address, Config, default_config, parse_address
from trioserve.config_sources import load_config, parse_properties, parse_toml
from trioserve.errors import ConfigError

# Verbatim from the docs (torchserve-docs.txt, "A model's configuration example"): backslash
# continuations and a trailing comma after the last model, which strict JSON rejects.
DOCS_MODELS = """\
models={\\
  "noop": {\\
    "1.0": {\\
      "defaultVersion": true,\\
      "marName": "noop.mar",\\
      "minWorkers": 1,\\
      "maxWorkers": 1,\\
      "batchSize": 4,\\
      "maxBatchDelay": 100,\\
      "responseTimeout": 120\\
    }\\
  },\\
  "vgg16": {\\
    "1.0": {\\
      "defaultVersion": true,\\
      "marName": "vgg16.mar",\\
      "minWorkers": 1,\\
      "maxWorkers": 4,\\
      "batchSize": 8,\\
      "maxBatchDelay": 100,\\
      "responseTimeout": 120\\
    }\\
  },\\
}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(
    tmp_path: Path, text: str | None = None, *, environ: dict[str, str] | None = None, **flags: Any
) -> Config:
    """Load with ./config.properties holding ``text`` and an empty environment by default."""
    if text is not None:
        write(tmp_path / "config.properties", text)
    return load_config(environ=environ or {}, cwd=tmp_path, **flags)


# ------------------------------------------------------------------------------ defaults


def test_defaults_follow_contract_with_trioserve_differences() -> None:
    config = default_config()
    assert config.inference_address == Address("http", "127.0.0.1", 8080)
    assert config.management_address == Address("http", "127.0.0.1", 8081)
    assert config.metrics_address == Address("http", "127.0.0.1", 8082)
    assert (config.grpc_inference_port, config.grpc_management_port) == (7070, 7071)
    assert config.job_queue_size == 100
    assert config.max_request_size == config.max_response_size == 6553500
    assert config.allowed_urls == ("file://.*", "http(s)?://.*")
    assert config.models == {}
    assert config.model_store is None
    assert config.workflow_store is None
    # Deliberate differences (the docs win where explicit).
    assert config.metrics_mode == "prometheus"
    assert config.disable_token_authorization is True
    assert config.enable_model_api is True
    assert set(config.sources.values()) == {"default"}
    assert config.config_file is None


def test_no_file_anywhere_gives_defaults(tmp_path: Path) -> None:
    assert load(tmp_path) == default_config()


# ------------------------------------------------------------------------------ lookup


def test_docs_models_example_with_continuations_and_trailing_comma(tmp_path: Path) -> None:
    config = load(tmp_path, DOCS_MODELS)
    params = {"defaultVersion": True, "maxBatchDelay": 100, "responseTimeout": 120}
    assert config.models == {
        "noop": {"1.0": {**params, "marName": "noop.mar", "minWorkers": 1, "maxWorkers": 1,
                         "batchSize": 4}},
        "vgg16": {"1.0": {**params, "marName": "vgg16.mar", "minWorkers": 1, "maxWorkers": 4,
                          "batchSize": 8}},
    }  # fmt: skip


def test_trailing_comma_inside_a_string_is_kept(tmp_path: Path) -> None:
    config = load(tmp_path, 'models={"m": {"1.0": {"marName": "a,}.mar",},},}\n')
    assert config.models == {"m": {"1.0": {"marName": "a,}.mar"}}}


def test_lookup_order_env_then_flag_then_cwd_then_defaults(tmp_path: Path) -> None:
    env_file = write(tmp_path / "env.properties", "job_queue_size=1\n")
    flag_file = write(tmp_path / "flag.properties", "job_queue_size=2\n")
    write(tmp_path / "config.properties", "job_queue_size=3\n")
    environ = {"TS_CONFIG_FILE": str(env_file)}

    config = load(tmp_path, environ=environ, ts_config=str(flag_file))
    assert (config.job_queue_size, config.config_file) == (1, str(env_file))
    config = load(tmp_path, ts_config="flag.properties")  # relative to cwd
    assert (config.job_queue_size, config.config_file) == (2, str(flag_file))
    config = load(tmp_path)
    assert (config.job_queue_size, config.config_file) == (3, str(tmp_path / "config.properties"))
    (tmp_path / "config.properties").unlink()
    assert load(tmp_path).job_queue_size == 100


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--ts-config file not found: nope\.properties$"):
        load(tmp_path, ts_config="nope.properties")
    with pytest.raises(ConfigError, match=r"^TS_CONFIG_FILE file not found: /no/such$"):
        load(tmp_path, environ={"TS_CONFIG_FILE": "/no/such"})


SNAPSHOT_MODELS = (
    '{"name": "s", "modelCount": 1, "created": 0, "models": {"m": {"1.0": {"marName": "m.mar"}}}}'
)


def write_snapshot_file(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write(directory / name, text)


def test_lookup_order_with_snapshots(tmp_path: Path) -> None:
    """TS_CONFIG_FILE, then --ts-config, then the latest snapshot, then ./config.properties."""
    snapshots = tmp_path / "logs" / "config"
    write_snapshot_file(snapshots, "20260101000000000-shutdown.cfg", "job_queue_size=4\n")
    newest = write_snapshot_file(snapshots, "20260102000000000-startup.cfg", "job_queue_size=5\n")
    write(snapshots / "20260103000000000-notes.cfg", "job_queue_size=6\n")  # not a snapshot
    env_file = write(tmp_path / "env.properties", "job_queue_size=1\n")
    flag_file = write(tmp_path / "flag.properties", "job_queue_size=2\n")
    write(tmp_path / "config.properties", "job_queue_size=3\n")
    rel = Path("logs/config")  # relative to cwd, as $LOG_LOCATION may be

    environ = {"TS_CONFIG_FILE": str(env_file)}
    assert load(tmp_path, environ=environ, snapshot_dir=rel).job_queue_size == 1
    assert load(tmp_path, ts_config=str(flag_file), snapshot_dir=rel).job_queue_size == 2
    config = load(tmp_path, snapshot_dir=rel)
    assert (config.job_queue_size, config.config_file) == (5, str(newest))
    assert config.sources["job_queue_size"] == f"snapshot:{newest}"
    assert load(tmp_path, snapshot_dir=None).job_queue_size == 3  # --ncs: never read
    assert load(tmp_path, snapshot_dir=tmp_path / "empty").job_queue_size == 3


def test_a_snapshot_replaces_config_properties_entirely(tmp_path: Path) -> None:
    snapshots = tmp_path / "snaps"
    write_snapshot_file(snapshots, "20260101000000000-snapshot.cfg", "model_store=/snap\n")
    config = load(tmp_path, "job_queue_size=lots\ndebug=true\n", snapshot_dir=snapshots)
    assert (config.model_store, config.job_queue_size, config.debug) == ("/snap", 100, False)


def test_cli_arguments_win_over_a_snapshot(tmp_path: Path) -> None:
    snapshots = tmp_path / "snaps"
    text = f"model_store=/snap\nmodel_snapshot={SNAPSHOT_MODELS}\n"
    write_snapshot_file(snapshots, "20260101000000000-snapshot.cfg", text)
    restored = load(tmp_path, snapshot_dir=snapshots)
    assert restored.model_store == "/snap"
    assert restored.model_snapshot is not None
    assert restored.model_snapshot["models"] == {"m": {"1.0": {"marName": "m.mar"}}}
    moved = load(tmp_path, snapshot_dir=snapshots, model_store="/cli")
    assert (moved.model_store, moved.workflow_store) == ("/cli", "/cli")
    assert moved.model_snapshot == restored.model_snapshot  # restored from /cli
    replaced = load(tmp_path, snapshot_dir=snapshots, models=["other.mar"])
    assert (replaced.model_snapshot, replaced.load_models) == (None, "other.mar")


def test_models_flag_drops_model_snapshot_from_a_named_file_too(tmp_path: Path) -> None:
    named = write(tmp_path / "x-snapshot.cfg", f"model_snapshot={SNAPSHOT_MODELS}\n")
    assert load(tmp_path, ts_config=str(named)).model_snapshot is not None
    assert load(tmp_path, ts_config=str(named), models=["all"]).model_snapshot is None


# ------------------------------------------------------------------------------ precedence


def test_cli_overrides_file(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "model_store=/file/store\nworkflow_store=/file/wf\nload_models=all\n"
        "enable_model_api=false\ndisable_token_authorization=false\n",
        model_store="/cli/store",
        workflow_store="/cli/wf",
        models=["a=a.mar", "b.mar"],
        enable_model_api=True,
        disable_token_auth=True,
    )
    assert config.model_store == "/cli/store"
    assert config.workflow_store == "/cli/wf"
    assert config.load_models == "a=a.mar,b.mar"
    assert config.enable_model_api is True
    assert config.disable_token_authorization is True
    assert config.sources["load_models"] == "cli:--models"
    assert config.sources["enable_model_api"] == "cli:--enable-model-api"


def test_one_way_flags_left_off_do_not_override_file(tmp_path: Path) -> None:
    config = load(tmp_path, "enable_model_api=false\ndisable_token_authorization=false\n")
    assert config.enable_model_api is False
    assert config.disable_token_authorization is False


def test_workflow_store_defaults_to_model_store(tmp_path: Path) -> None:
    assert load(tmp_path, "model_store=/m\n").workflow_store == "/m"
    assert load(tmp_path, model_store="/cli").workflow_store == "/cli"


def test_env_vars_need_enable_envvars_config(tmp_path: Path) -> None:
    environ = {"TS_JOB_QUEUE_SIZE": "7", "TS_MODEL_STORE": "/env"}
    assert load(tmp_path, "job_queue_size=5\n", environ=environ).job_queue_size == 5
    config = load(
        tmp_path,
        "enable_envvars_config=true\njob_queue_size=5\n",
        environ=environ,
        model_store="/cli",
    )
    assert config.job_queue_size == 7
    assert config.model_store == "/env"  # env beats the CLI (contract §5.1)
    assert config.sources["job_queue_size"] == "env:TS_JOB_QUEUE_SIZE"


def test_env_no_value_from_a_kubernetes_template_is_unset(tmp_path: Path) -> None:
    environ = {"TS_SERVICE_ENVELOPE": "<no value>", "TS_JOB_QUEUE_SIZE": "<no value>"}
    config = load(tmp_path, "enable_envvars_config=true\njob_queue_size=5\n", environ=environ)
    assert (config.service_envelope, config.job_queue_size) == (None, 5)
    environ["TS_SERVICE_ENVELOPE"] = "kservev2"
    config = load(tmp_path, "enable_envvars_config=true\n", environ=environ)
    assert config.service_envelope == "kservev2"


def test_env_cannot_switch_env_config_on_or_set_starred_keys(tmp_path: Path) -> None:
    environ = {"TS_ENABLE_ENVVARS_CONFIG": "true", "TS_JOB_QUEUE_SIZE": "7"}
    assert load(tmp_path, environ=environ).job_queue_size == 100
    environ = {"TS_MODELS": '{"m": {}}', "TS_IO_RATIO": "3"}
    config = load(tmp_path, "enable_envvars_config=true\n", environ=environ)
    assert (config.models, config.io_ratio) == ({}, 50)


def test_env_name_exceptions(tmp_path: Path) -> None:
    environ = {
        "TS_TOKEN_EXPIRATION_TIME_MIN": "5",
        "TS_HEADER_KEY_SEQUENCE_ID": "x-seq",
        "TS_TOKEN_EXPIRATION_MIN": "9",  # the regular spelling is not the one TorchServe reads
    }
    config = load(tmp_path, "enable_envvars_config=true\n", environ=environ)
    assert config.token_expiration_min == 5
    assert config.ts_header_key_sequence_id == "x-seq"


def test_open_inference_protocol_env_oip_needs_no_gate(tmp_path: Path) -> None:
    config = load(tmp_path, environ={"TS_OPEN_INFERENCE_PROTOCOL": "oip"})
    assert config.ts_open_inference_protocol is True


def test_ts_allowed_urls_needs_use_env_allowed_urls(tmp_path: Path) -> None:
    environ = {"TS_ALLOWED_URLS": "https://example.com/.*"}
    config = load(tmp_path, "enable_envvars_config=true\n", environ=environ)
    assert config.allowed_urls == ("file://.*", "http(s)?://.*")
    text = "enable_envvars_config=true\nuse_env_allowed_urls=true\n"
    assert load(tmp_path, text, environ=environ).allowed_urls == ("https://example.com/.*",)


# ------------------------------------------------------------------------------ formats


def test_toml_gives_the_same_config_as_properties(tmp_path: Path) -> None:
    props = write(
        tmp_path / "a.properties",
        "inference_address=https://0.0.0.0:8443\njob_queue_size=10\nenable_metrics_api=false\n"
        "allowed_urls=https://a/.*,file://.*\nmetrics_mode=log\n" + DOCS_MODELS,
    )
    toml = write(
        tmp_path / "a.toml",
        'inference_address = "https://0.0.0.0:8443"\njob_queue_size = 10\n'
        'enable_metrics_api = false\nallowed_urls = ["https://a/.*", "file://.*"]\n'
        'metrics_mode = "log"\n'
        '[models.noop."1.0"]\ndefaultVersion = true\nmarName = "noop.mar"\nminWorkers = 1\n'
        "maxWorkers = 1\nbatchSize = 4\nmaxBatchDelay = 100\nresponseTimeout = 120\n"
        '[models.vgg16."1.0"]\ndefaultVersion = true\nmarName = "vgg16.mar"\nminWorkers = 1\n'
        "maxWorkers = 4\nbatchSize = 8\nmaxBatchDelay = 100\nresponseTimeout = 120\n",
    )
    from_props = load(tmp_path, ts_config=str(props))
    from_toml = load(tmp_path, ts_config=str(toml))
    assert from_toml == from_props
    assert from_toml != default_config()
    assert from_toml.sources["job_queue_size"] == f"toml:{toml}"
    assert from_props.sources["job_queue_size"] == f"file:{props}"


def test_parse_toml_renders_scalars_as_properties_text() -> None:
    assert parse_toml(b"a = true\nb = 5\nc = 'x'\nd = [1, 2]\n") == {
        "a": "true",
        "b": "5",
        "c": "x",
        "d": "1,2",
    }
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_toml("a = ")


def test_parse_properties_handles_comments_escapes_and_continuations() -> None:
    text = "# comment\n! also\nkey = a\\\n    b\npath=C:\\\\x\nuni=\\u00e9\n"
    assert parse_properties(text) == {"key": "ab", "path": "C:\\x", "uni": "é"}


def test_env_reference_substitution(tmp_path: Path) -> None:
    config = load(tmp_path, "model_store=$$STORE$$/models\n", environ={"STORE": "/srv"})
    assert config.model_store == "/srv/models"
    with pytest.raises(ConfigError, match=r"^Invalid Environment Variable STORE"):
        load(tmp_path, "model_store=$$STORE$$\n")


def test_unknown_key_warns_and_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trioserve.config_sources"):
        config = load(tmp_path, "metrics_colour=blue\njob_queue_size=3\n")
    assert config.unknown == {"metrics_colour": "blue"}
    assert config.job_queue_size == 3
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "metrics_colour" in caplog.records[0].getMessage()


def test_metrics_format_is_the_docs_key_with_one_value(tmp_path: Path) -> None:
    assert load(tmp_path, "metrics_format=Prometheus\n").metrics_format == "prometheus"
    with pytest.raises(ConfigError, match="metrics_format"):
        load(tmp_path, "metrics_format=json\n")


def test_values_are_stripped_and_case_folded(tmp_path: Path) -> None:
    config = load(tmp_path, "model_store=/m  \nmetrics_mode=LEGACY\ndebug=TRUE\n")
    assert (config.model_store, config.metrics_mode, config.debug) == ("/m", "legacy", True)


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("job_queue_size", "abc", "an integer >= 1"),
        ("job_queue_size", "0", "an integer >= 1"),
        ("default_response_timeout", "-1", "an integer >= 0"),
        ("max_request_size", "1.5", "an integer >= 1"),
        ("grpc_inference_port", "70000", "an integer in 0..65535"),
        ("io_ratio", "101", "an integer in 1..100"),
        ("number_of_gpu", "two", "an integer >= 0 or empty"),
        ("enable_metrics_api", "yes", "true or false"),
        ("metrics_mode", "json", "one of log, prometheus, legacy"),
        ("service_envelope", "xml", "one of body, json, kserve, kservev2"),
        ("models", "not json", "a JSON object {model: {version: {parameter: value}}}"),
        ("models", '{"m": {"1.0": 5}}', "a JSON object {model: {version:"),
        ("models", "[]", "a JSON object"),
        ("inference_address", "localhost:8080", "http(s)://host[:port] or unix:/path"),
        ("management_address", "http://h:99999", "a port in 0..65535"),
        ("allowed_urls", "file://.*,(", "comma-separated regular expressions"),
        ("blacklist_env_vars", "[", "a regular expression"),
        ("grpc_inference_address", "", "a non-empty string"),
    ],
)
def test_bad_value_names_key_value_and_allowed(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"{key}={value}\n")
    message = str(info.value)
    assert message.startswith(f"invalid value for {key}: {value!r} (expected ")
    assert expected in message
    assert f"from file:{tmp_path / 'config.properties'}" in message


def test_bad_value_message_format_exactly(tmp_path: Path) -> None:
    path = write(tmp_path / "c", "job_queue_size=abc")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, environ={"TS_CONFIG_FILE": str(path)})
    assert str(info.value) == (
        f"invalid value for job_queue_size: 'abc' (expected an integer >= 1), from file:{path}"
    )


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    environ = {"TS_DEBUG": "maybe"}
    with pytest.raises(ConfigError, match=re.escape("'maybe' (expected true or false")) as info:
        load(tmp_path, "enable_envvars_config=true\n", environ=environ)
    assert str(info.value).endswith("from env:TS_DEBUG")


def test_hand_built_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"^invalid value for job_queue_size: '0'"):
        Config(job_queue_size=0)
    with pytest.raises(ConfigError, match=r"^invalid value for debug: '1'"):
        Config(debug=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^invalid value for metrics_address: 'ftp://h:1'"):
        Config(metrics_address=Address("ftp", "h", 1))
    with pytest.raises(ConfigError, match="set together"):
        Config(private_key_file="key.pem")
    assert dataclasses.replace(default_config(), job_queue_size=5).job_queue_size == 5


# ------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("http://127.0.0.1:8080", Address("http", "127.0.0.1", 8080)),
        ("http://0.0.0.0", Address("http", "0.0.0.0", 8081)),
        ("https://0.0.0.0", Address("https", "0.0.0.0", 8444)),
        ("HTTPS://example.com:8443/", Address("https", "example.com", 8443)),
        ("http://[::1]:9000", Address("http", "::1", 9000)),
        ("https://[::]", Address("https", "::", 8444)),
        ("http://localhost:0", Address("http", "localhost", 0)),
        ("unix:/tmp/ts.sock", Address("unix", "", 0, "/tmp/ts.sock")),
        ("unix:///tmp/ts.sock", Address("unix", "", 0, "/tmp/ts.sock")),
    ],
)
def test_parse_address(value: str, address: Address) -> None:
    assert parse_address(value, default_http_port=8081, default_https_port=8444) == address


@pytest.mark.parametrize(
    "value",
    ["garbage", "", "localhost:8080", "ftp://h:1", "http://", "http://h:99999", "http://[zz]:1",
     "http://::1:80", "http://h:80/path", "unix:"],
)  # fmt: skip
def test_parse_address_rejects(value: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"invalid address {value!r}")):
        parse_address(value, default_http_port=80, default_https_port=443)


def test_address_tls_and_rendering() -> None:
    assert Address("https", "h", 1).tls
    assert not Address("http", "h", 1).tls
    assert not Address("unix", "", 0, "/s").tls
    assert str(Address("http", "::1", 80)) == "http://[::1]:80"
    assert str(Address("unix", "", 0, "/s")) == "unix:/s"


def test_address_default_ports_per_key(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "inference_address=https://0.0.0.0\nmanagement_address=https://0.0.0.0\n"
        "metrics_address=http://0.0.0.0\n",
    )
    assert config.inference_address.port == 443
    assert config.management_address.port == 8444
    assert config.metrics_address.port == 8082


# ------------------------------------------------------------------------------ sources


def test_sources_record_each_origin(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "enable_envvars_config=true\njob_queue_size=5\n",
        environ={"TS_DEBUG": "true"},
        model_store="/m",
    )
    path = tmp_path / "config.properties"
    assert config.sources["job_queue_size"] == f"file:{path}"
    assert config.sources["debug"] == "env:TS_DEBUG"
    assert config.sources["model_store"] == "cli:--model-store"
    assert config.sources["metrics_mode"] == "default"


def test_effective_lists_every_key_sorted(tmp_path: Path) -> None:
    config = load(tmp_path, "keystore_pass=secret\njob_queue_size=5\n")
    rows = config.effective()
    keys = [f.name for f in dataclasses.fields(Config)]
    assert [key for key, _, _ in rows] == sorted(set(keys) - {"sources", "unknown", "config_file"})
    table = {key: (value, source) for key, value, source in rows}
    assert table["job_queue_size"] == ("5", f"file:{tmp_path / 'config.properties'}")
    assert table["debug"] == ("false", "default")
    assert table["inference_address"] == ("http://127.0.0.1:8080", "default")
    assert table["allowed_urls"][0] == "file://.*,http(s)?://.*"
    assert table["keystore_pass"][0] == "********"
    assert "secret" not in repr(config)


def test_effective_values_load_back_to_the_same_config(tmp_path: Path) -> None:
    original = load(tmp_path, DOCS_MODELS + "number_of_gpu=2\nservice_envelope=kserve\n")
    text = "".join(
        f"{key}={value}\n" for key, value, _ in original.effective() if key != "keystore_pass"
    )
    assert load(tmp_path, text) == original
