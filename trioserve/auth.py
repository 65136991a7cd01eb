"""Token authorization (contract §0.6): opt in with ``disable_token_authorization=false``.

Three keys: ``inference`` (every inference-API route), ``management`` (every management-API
route) and ``API`` (only the ``/token`` refresh call; it never expires). They are written to
``key_file.json`` in the server's working directory, mode 0600, in TorchServe 0.12's format, and
checked against ``Authorization: Bearer <key>`` (HTTP) or ``authorization`` metadata (gRPC).

Differences from 0.12, deliberate: a key is 16 random bytes (128 bits; 0.12 uses 6, which an
attacker can search), base64url without padding (22 characters); keys are compared in constant
time; ``/token`` is that exact path (0.12 matches the substring, so a model named ``tokenizer``
collides).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from trioserve.errors import GRPC_PERMISSION_DENIED, BadRequest

logger = logging.getLogger(__name__)

KEY_FILE = "key_file.json"
# 128 bits: out of reach of online guessing at any request rate, and of offline search.
KEY_BYTES = 16
INFERENCE, MANAGEMENT, API = "inference", "management", "API"
REFRESHABLE = (MANAGEMENT, INFERENCE)

AUTH_FAILED = (
    "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
)
TOKEN_API_FAILED = (
    "Token Authentication failed. Token either incorrect, expired, or not provided correctly"
)
# TorchServe's pattern, matched against the whole header value.
_BEARER = re.compile(r"Bearer\s+(\S+)")


class InvalidKey(BadRequest):
    """A request without a valid key for its API, or a bad ``/token`` call. Raised by
    :class:`TokenAuth`; the client should send the current key (re-read ``key_file.json``)."""

    type_name = "InvalidKeyException"
    grpc_status = GRPC_PERMISSION_DENIED


@dataclass(frozen=True)
class Key:
    value: str
    expires_at: float | None  # Unix time; None: never


def new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).rstrip(b"=").decode("ascii")


def bearer_token(header: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` value, or None."""
    match = _BEARER.fullmatch(header or "")
    return match[1] if match else None


def iso_instant(when: float) -> str:
    """As Java's ``Instant.toString`` writes it: UTC, milliseconds, ``Z``."""
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TokenAuth:
    """The keys of one server and the file that hands them to its operators.

    ``clock`` is wall-clock time (the file states expiry as an instant); tests pass their own.
    """

    def __init__(
        self, path: Path, expiration_min: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.ttl_s = expiration_min * 60.0
        self.clock = clock
        self._keys = {
            MANAGEMENT: self._fresh(),
            INFERENCE: self._fresh(),
            API: Key(new_key(), None),
        }

    def _fresh(self) -> Key:
        return Key(new_key(), self.clock() + self.ttl_s)

    def key(self, kind: str) -> str:
        return self._keys[kind].value

    def valid(self, kind: str, authorization: str | None) -> bool:
        """Whether ``authorization`` carries the current, unexpired ``kind`` key."""
        token = bearer_token(authorization)
        key = self._keys[kind]
        if token is None or (key.expires_at is not None and self.clock() >= key.expires_at):
            return False
        return hmac.compare_digest(token.encode("utf-8", "replace"), key.value.encode("ascii"))

    def check(self, kinds: Iterable[str], authorization: str | None) -> None:
        """Raises InvalidKey (contract text) unless the header holds one of ``kinds``' keys."""
        if not any(self.valid(kind, authorization) for kind in kinds):
            raise InvalidKey(AUTH_FAILED)

    def refresh(self, kind: str | None, authorization: str | None) -> None:
        """The ``/token?type=`` call: a new ``kind`` key and expiry, written to the file.

        Raises:
            InvalidKey: ``kind`` is not management or inference, or the API key is wrong.
        """
        if kind not in REFRESHABLE or not self.valid(API, authorization):
            raise InvalidKey(TOKEN_API_FAILED)
        self._keys[kind] = self._fresh()
        self.write()
        logger.info("the %s key was regenerated", kind)

    def document(self) -> dict[str, dict[str, str]]:
        """``key_file.json`` as contract §0.6 lays it out."""
        out: dict[str, dict[str, str]] = {}
        for kind, key in self._keys.items():
            entry = {"key": key.value}
            if key.expires_at is not None:
                entry["expiration time"] = iso_instant(key.expires_at)
            out[kind] = entry
        return out

    def write(self) -> None:
        """Replace the key file atomically; it is created 0600 and never exists wider."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".key_file-", suffix=".json")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(self.document(), out, indent=2)
                out.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self) -> None:
        """Delete the key file, unless another server has since written its own there."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads(self.path.read_text(encoding="utf-8"))[API]["key"] == self.key(API):
                self.path.unlink()


def start_token_auth(expiration_min: int, directory: Path) -> TokenAuth:
    """New keys for a starting server, written to ``directory/key_file.json``."""
    auth = TokenAuth(directory / KEY_FILE, expiration_min)
    auth.write()
    logger.info("token authorization is on; keys are in %s", auth.path)
    return auth
