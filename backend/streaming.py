"""``send_intermediate_predict_response`` (contract §7.5)."""

from __future__ import annotations

from typing import Any

from backend.context import Context


def send_intermediate_predict_response(
    ret: list[Any], req_id_map: dict[int, str], message: str, code: int, context: Context
) -> None:
    """Send one streamed chunk per request of the batch before the handler returns."""
    if context._send_intermediate is None:
        raise RuntimeError("streaming responses need a worker channel")
    context._send_intermediate(ret, req_id_map, message, code)
