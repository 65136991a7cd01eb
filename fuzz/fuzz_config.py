"""Fuzz target: config file bytes -> ``load_config``, as a properties file and as TOML.

Contract: any bytes either give a Config or raise ``ConfigError`` (which names the key and the
value), nothing else; and every value of a Config that loads renders back (as ``trioserve
config --effective`` shows it) to text that parses to the same value.

Run under atheris (``python fuzz/fuzz_config.py [atheris/libFuzzer flags]``) or, without it,
``python fuzz/fuzz_config.py --smoke N [--seed S]`` to check N generated inputs.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import _harness

from trioserve.config import Config, parse_value
from trioserve.config_sources import load_config
from trioserve.errors import ConfigError

logging.disable(logging.CRITICAL)  # unknown keys and snapshots log; the fuzzer needs silence
# re warns about a regex such as "[[a]" (a future set syntax): the user's pattern, not a bug.
warnings.filterwarnings("ignore", category=FutureWarning)
# Under atheris, libFuzzer exits without running atexit: `nox -s fuzz` points
# TRIOSERVE_FUZZ_TMP into its scratch directory, which it removes.
WORK = Path(tempfile.mkdtemp(prefix="fuzz-config-", dir=os.environ.get("TRIOSERVE_FUZZ_TMP")))
atexit.register(shutil.rmtree, WORK, True)
# What a value may reference as $$NAME$$ (anything else is the "Invalid Environment Variable").
ENVIRON = {"MODEL_HOME": "/srv/models", "TS_JOB_QUEUE_SIZE": "7"}
MASKED = frozenset({"keystore_pass"})

SEEDS: list[bytes] = [
    b"inference_address=https://0.0.0.0:8443\nmanagement_address=unix:/tmp/m.sock\n"
    b"private_key_file=/k.pem\ncertificate_file=/c.pem\nmodel_store=$$MODEL_HOME$$\n",
    b"# comment\n! bang\nload_models=all\njob_queue_size = 10\ndefault_workers_per_model:2\n"
    b"allowed_urls=https://s3.amazonaws.com/.*,file:///models/.*\n"
    b'models={\\\n  "m": {"1.0": {"minWorkers": 1, "batchSize": 4,}}\\\n}\n',
    b"enable_envvars_config=true\nhttp_header_timeout=2.5\nhttp_max_connections=10\n"
    b"metrics_mode=LEGACY\ndisable_token_authorization=false\nkey\\u0041=\\u00e9\n",
    b'model_store = "/models"\njob_queue_size = 5\nenable_metrics_api = false\n'
    b'allowed_urls = ["http://a/.*", "file://.*"]\nhttp_body_timeout = 0.5\n'
    b'models = { m = { "1.0" = { minWorkers = 1 } } }\n',
    b"[section]\nx = 1\n",
    b"blacklist_env_vars=(AWS|SECRET).*\nservice_envelope=kservev2\nio_ratio=100\n",
]


def _load(data: bytes, suffix: str) -> Config | None:
    path = WORK / f"config{suffix}"
    path.write_bytes(data)
    try:
        return load_config(environ=ENVIRON, cwd=WORK, ts_config=path.name)
    except ConfigError:
        return None


def check(data: bytes) -> None:
    for suffix in (".properties", ".toml"):
        config = _load(data, suffix)
        if config is None:
            continue
        for key, text, _ in config.effective():
            if key not in MASKED:
                assert parse_value(key, text, "fuzz") == getattr(config, key), (key, text)


TOKENS = [b"\n", b"=", b"\\", b"\\u", b"$$", b"[", b"{", b'"', b",", b"#", b"(", b"*"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    return _harness.splice(rng, data, TOKENS, SEEDS)


def main(argv: list[str]) -> int:
    return _harness.main(
        argv, name="config", doc=__doc__ or "", check=check, seeds=SEEDS, mutate=mutate
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
