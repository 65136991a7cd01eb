"""Token authorization for gRPC (contract §0.6): every call on the inference server needs the
inference key, every call on the management server the management key, as ``authorization:
Bearer <key>`` metadata. A call without it ends PERMISSION_DENIED before its handler runs."""

from __future__ import annotations

from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from trioserve.auth import AUTH_FAILED, TokenAuth


def require_key(server: Server, auth: TokenAuth, kind: str) -> None:
    """Check ``kind``'s key on every call ``server`` receives (grpclib's RecvRequest event runs
    before the method, and a GRPCError raised there becomes the call's status)."""

    async def on_request(event: RecvRequest) -> None:
        value = event.metadata.get("authorization")
        if not auth.valid(kind, value if isinstance(value, str) else None):
            raise GRPCError(Status.PERMISSION_DENIED, AUTH_FAILED)

    listen(server, RecvRequest, on_request)
