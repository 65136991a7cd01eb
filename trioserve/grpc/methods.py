"""grpcio method handlers for a service object, from its proto service descriptor.

Each RPC of the descriptor is served by the service's method of the same name (asyncio side):
``async def Unary(request, context) -> reply``, ``async def Streamed(request, context)`` (replies
written through the bridge), ``async def Duplex(requests, context)``. Messages cross grpcio as
bytes so the bridge can apply TorchServe's size limits and texts; a :class:`CallError` from the
method, or from the key check before it, ends the call with its status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from trioserve.grpc.bridge import Bridge, CallError

# Checks a call's invocation metadata before its method runs (raises CallError to refuse).
Check = Callable[[Iterable[tuple[str, Any]]], None]


def _message_class(method: MethodDescriptor) -> type[Message]:
    return message_factory.GetMessageClass(method.input_type)


def _behaviour(
    bridge: Bridge, method: MethodDescriptor, fn: Callable[..., Any], check: Check | None
) -> grpc.RpcMethodHandler:
    kind = _message_class(method)

    async def guarded(context: grpc.aio.ServicerContext, request: Callable[[], Any]) -> Any:
        """Every RPC's one path: the key check, then the request (decoded here, so a bad one
        is refused like any other error), the method counted as in flight, the reply's bytes
        (None for a streamed reply, already written); a CallError ends the call."""
        try:
            if check is not None:
                check(context.invocation_metadata() or ())
            with bridge.track():
                reply = await fn(request(), context)
            return None if reply is None else bridge.encode(reply)
        except CallError as exc:
            await context.abort(exc.code, exc.details)
            raise AssertionError("unreachable: abort raises") from None

    if method.client_streaming:

        async def duplex(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            await guarded(context, lambda: bridge.requests(raw, kind))

        return grpc.stream_stream_rpc_method_handler(duplex)

    if method.server_streaming:

        async def streamed(data: bytes, context: grpc.aio.ServicerContext) -> None:
            await guarded(context, lambda: bridge.decode(data, kind))

        return grpc.unary_stream_rpc_method_handler(streamed)

    async def unary(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        reply: bytes = await guarded(context, lambda: bridge.decode(data, kind))
        return reply

    return grpc.unary_unary_rpc_method_handler(unary)


def generic_handlers(
    service: object,
    descriptor: ServiceDescriptor,
    bridge: Bridge,
    *,
    check: Check | None = None,
    names: Iterable[str] = (),
) -> list[grpc.GenericRpcHandler]:
    """Handlers serving ``descriptor``'s RPCs with ``service``'s methods, under the service's
    full name and under each of ``names`` (the same service known by another package)."""
    handlers = {
        method.name: _behaviour(bridge, method, getattr(service, method.name), check)
        for method in descriptor.methods
    }
    return [
        grpc.method_handlers_generic_handler(name, handlers)
        for name in (descriptor.full_name, *names)
    ]
