"""Token authorization (contract §0.6) without a server: keys, the key file, header parsing,
expiry, refresh, and ``trioserve stop`` deleting the file."""

from __future__ import annotations

import base64
import datetime
import hmac
import json
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from trioserve import auth as auth_module
from trioserve import cli
from trioserve.auth import (
    API,
    AUTH_FAILED,
    INFERENCE,
    KEY_FILE,
    MANAGEMENT,
    TOKEN_API_FAILED,
    InvalidKey,
    TokenAuth,
    bearer_token,
    iso_instant,
    new_key,
    start_token_auth,
)
from trioserve.errors import GRPC_PERMISSION_DENIED


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bearer(key: str) -> str:
    return f"Bearer {key}"


def test_keys_are_128_bit_base64url_and_unique() -> None:
    keys = {new_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in list(keys)[:50]:
        assert len(key) == 22
        assert len(base64.urlsafe_b64decode(key + "==")) == 16
        assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_key_file_has_the_contract_layout_and_mode_0600(tmp_path: Path) -> None:
    auth = start_token_auth(60, tmp_path)
    path = tmp_path / KEY_FILE
    assert auth.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert list(doc) == [MANAGEMENT, INFERENCE, API]
    assert doc[API] == {"key": auth.key(API)}  # the API key never expires
    for kind in (MANAGEMENT, INFERENCE):
        assert list(doc[kind]) == ["key", "expiration time"]
        assert doc[kind]["key"] == auth.key(kind)
        instant = doc[kind]["expiration time"]
        assert instant.endswith("Z")
        expires = datetime.datetime.fromisoformat(instant.replace("Z", "+00:00"))
        left = expires - datetime.datetime.now(datetime.UTC)
        assert datetime.timedelta(minutes=59) < left <= datetime.timedelta(minutes=60)
    assert len({auth.key(MANAGEMENT), auth.key(INFERENCE), auth.key(API)}) == 3
    other = start_token_auth(60, tmp_path)  # a second server in the same directory
    auth.remove()
    assert path.exists()  # holds the other server's keys: left alone
    other.remove()
    assert not path.exists()
    other.remove()  # idempotent


def test_iso_instant_is_java_instant_form() -> None:
    assert iso_instant(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_instant(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("Bearer \t abc", "abc"),
        ("bearer abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer abc def", None),
        ("Basic abc", None),
        (" Bearer abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_header_is_matched_whole(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_each_kind_accepts_only_its_own_key(tmp_path: Path) -> None:
    auth = TokenAuth(tmp_path / KEY_FILE, 60)
    for kind in (INFERENCE, MANAGEMENT, API):
        assert auth.valid(kind, bearer(auth.key(kind)))
        others = {INFERENCE, MANAGEMENT, API} - {kind}
        assert not any(auth.valid(kind, bearer(auth.key(o))) for o in others)
        assert not auth.valid(kind, None)
        assert not auth.valid(kind, bearer(auth.key(kind)[:-1]))
        assert not auth.valid(kind, bearer(auth.key(kind) + "x"))
        assert not auth.valid(kind, bearer("é" * 22))  # non-ASCII never raises
    with pytest.raises(InvalidKey) as info:
        auth.check([INFERENCE], bearer(auth.key(MANAGEMENT)))
    assert info.value.body() == {"code": 400, "type": "InvalidKeyException", "message": AUTH_FAILED}
    assert info.value.grpc_status == GRPC_PERMISSION_DENIED
    auth.check([INFERENCE, MANAGEMENT], bearer(auth.key(MANAGEMENT)))


def test_keys_are_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    auth = TokenAuth(tmp_path / KEY_FILE, 60)
    assert auth.valid(INFERENCE, bearer(auth.key(INFERENCE)))
    assert not auth.valid(INFERENCE, bearer("wrong"))
    assert calls == [
        (auth.key(INFERENCE).encode(), auth.key(INFERENCE).encode()),
        (b"wrong", auth.key(INFERENCE).encode()),
    ]


def test_inference_and_management_keys_expire_the_api_key_does_not(tmp_path: Path) -> None:
    clock = Clock()
    auth = TokenAuth(tmp_path / KEY_FILE, 2, clock=clock)
    clock.now += 119.9
    assert auth.valid(INFERENCE, bearer(auth.key(INFERENCE)))
    clock.now += 0.1
    assert not auth.valid(INFERENCE, bearer(auth.key(INFERENCE)))
    assert not auth.valid(MANAGEMENT, bearer(auth.key(MANAGEMENT)))
    clock.now += 10**9
    assert auth.valid(API, bearer(auth.key(API)))


def test_refresh_needs_the_api_key_and_a_known_type(tmp_path: Path) -> None:
    clock = Clock()
    auth = TokenAuth(tmp_path / KEY_FILE, 1, clock=clock)
    auth.write()
    api = bearer(auth.key(API))
    for kind, header in [
        (INFERENCE, bearer(auth.key(INFERENCE))),
        (INFERENCE, None),
        ("API", api),
        ("", api),
        (None, api),
        ("Inference", api),
    ]:
        with pytest.raises(InvalidKey) as info:
            auth.refresh(kind, header)
        assert info.value.message == TOKEN_API_FAILED
    clock.now += 61  # expired; refresh makes a new key with a new expiry
    old = auth.key(INFERENCE)
    kept = auth.key(MANAGEMENT)
    auth.refresh(INFERENCE, api)
    assert auth.key(INFERENCE) != old
    assert auth.valid(INFERENCE, bearer(auth.key(INFERENCE)))
    assert not auth.valid(INFERENCE, bearer(old))
    assert auth.key(MANAGEMENT) == kept
    doc = json.loads(auth.path.read_text())
    assert doc[INFERENCE]["key"] == auth.key(INFERENCE)
    assert doc[INFERENCE]["expiration time"] == iso_instant(clock.now + 60)
    assert stat.S_IMODE(auth.path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temporary file left


def test_trioserve_stop_deletes_the_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "PID_FILE", tmp_path / ".model_server.pid")
    (tmp_path / KEY_FILE).write_text("{}")
    # A stand-in for the background server: it exits on SIGTERM and is reaped at once, so
    # `stop` sees it gone.
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reaper = threading.Thread(target=process.wait)
    reaper.start()
    cli.PID_FILE.write_text(str(process.pid))
    try:
        assert cli.main(["stop"]) == 0
    finally:
        process.kill()
        reaper.join()
    assert not (tmp_path / KEY_FILE).exists()
    assert not cli.PID_FILE.exists()
