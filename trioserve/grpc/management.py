"""The gRPC management service (contract §4.2): thin adapters to the api/management cores
REST uses. Zero and empty fields mean "unset" (proto3 cannot tell them apart)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from trioserve.api import management as api
from trioserve.api.register import RegisterParams
from trioserve.api.state import ServerState
from trioserve.errors import BadRequest, ServeError
from trioserve.grpc._proto import management_pb2 as mpb
from trioserve.grpc.bridge import Bridge, CallError, Context, json_text
from trioserve.grpc.status import management_error

Req = TypeVar("Req")
DESCRIPTOR = mpb.DESCRIPTOR.services_by_name["ManagementAPIsService"]
# ListModels without a limit returns a page of this many (0.12 returned none: contract §10.4).
DEFAULT_LIST_LIMIT = 100


def _set(value: int) -> int | None:
    return value if value > 0 else None


class ManagementService:
    def __init__(self, state: ServerState, bridge: Bridge) -> None:
        self._state = state
        self._bridge = bridge

    async def _unary(
        self,
        request: Req,
        context: Context,
        core: Callable[[Req], Awaitable[str]],
        *,
        model_api: bool = False,
    ) -> mpb.ManagementResponse:
        if model_api and not self._state.config.enable_model_api:
            raise CallError(grpc.StatusCode.PERMISSION_DENIED, "Model API disabled")
        try:
            text = await self._bridge.run(context, core, request)
        except ServeError as exc:
            raise management_error(exc) from None
        return mpb.ManagementResponse(msg=text)

    async def DescribeModel(
        self, request: mpb.DescribeModelRequest, context: Context
    ) -> mpb.ManagementResponse:
        return await self._unary(request, context, self._describe)

    async def ListModels(
        self, request: mpb.ListModelsRequest, context: Context
    ) -> mpb.ManagementResponse:
        return await self._unary(request, context, self._list)

    async def RegisterModel(
        self, request: mpb.RegisterModelRequest, context: Context
    ) -> mpb.ManagementResponse:
        return await self._unary(request, context, self._register, model_api=True)

    async def ScaleWorker(
        self, request: mpb.ScaleWorkerRequest, context: Context
    ) -> mpb.ManagementResponse:
        return await self._unary(request, context, self._scale)

    async def SetDefault(
        self, request: mpb.SetDefaultRequest, context: Context
    ) -> mpb.ManagementResponse:
        return await self._unary(request, context, self._set_default)

    async def UnregisterModel(
        self, request: mpb.UnregisterModelRequest, context: Context
    ) -> mpb.ManagementResponse:
        return await self._unary(request, context, self._unregister, model_api=True)

    # Trio side: parse the message, call the core, render the reply text.

    async def _describe(self, request: mpb.DescribeModelRequest) -> str:
        body: Any = await api.describe(
            self._state,
            request.model_name,
            request.model_version or None,
            customized=request.customized,
            request_id=str(uuid.uuid4()),
        )
        return json_text(body)

    async def _list(self, request: mpb.ListModelsRequest) -> str:
        limit = _set(request.limit) or DEFAULT_LIST_LIMIT
        return json_text(api.list_page(self._state, limit, request.next_page_token))

    async def _register(self, request: mpb.RegisterModelRequest) -> str:
        params = RegisterParams(
            url=request.url or None,
            model_name=request.model_name or None,
            handler=request.handler or None,
            runtime=request.runtime or None,
            batch_size=_set(request.batch_size),
            max_batch_delay=_set(request.max_batch_delay),
            initial_workers=_set(request.initial_workers),
            synchronous=request.synchronous,
            response_timeout=_set(request.response_timeout),
            startup_timeout=_set(request.startup_timeout),
            s3_sse_kms=request.s3_sse_kms,
        )
        return (await api.register_version(self._state, params)).text

    async def _scale(self, request: mpb.ScaleWorkerRequest) -> str:
        # min_worker 0 is "unset", so 1: gRPC cannot scale to zero (as in TorchServe).
        min_workers = _set(request.min_worker) or 1
        reply = await api.scale(
            self._state,
            request.model_name,
            request.model_version or None,
            min_workers,
            _set(request.max_worker),
            request.synchronous,
        )
        return reply.text

    async def _set_default(self, request: mpb.SetDefaultRequest) -> str:
        reply = await api.set_default_version(
            self._state, request.model_name, request.model_version
        )
        return reply.text

    async def _unregister(self, request: mpb.UnregisterModelRequest) -> str:
        if not request.model_name:
            raise BadRequest("Parameter model_name is required.")
        reply = await api.unregister_version(
            self._state, request.model_name, request.model_version or None
        )
        return reply.text
