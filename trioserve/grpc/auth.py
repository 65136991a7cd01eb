"""Token authorization for gRPC (contract §0.6): every call on the inference server needs the
inference key, every call on the management server the management key, as ``authorization:
Bearer <key>`` metadata. A call without it ends PERMISSION_DENIED before its method runs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from trioserve.auth import AUTH_FAILED, TokenAuth
from trioserve.grpc.bridge import CallError
from trioserve.grpc.methods import Check


def require_key(auth: TokenAuth, kind: str) -> Check:
    """The metadata check for ``kind``'s key, for ``methods.generic_handlers``."""

    def check(metadata: Iterable[tuple[str, Any]]) -> None:
        value = next((v for k, v in metadata if k == "authorization"), None)
        if not auth.valid(kind, value if isinstance(value, str) else None):
            raise CallError(grpc.StatusCode.PERMISSION_DENIED, AUTH_FAILED)

    return check
