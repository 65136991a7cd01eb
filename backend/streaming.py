"""``send_intermediate_predict_response`` (contract §7.5); inside workers also reachable as
``ts.handler_utils.utils`` and the deprecated ``ts.protocol.otf_message_handler``."""

from __future__ import annotations

import os
from typing import Any

from backend.context import Context


def send_intermediate_predict_response(
    ret: list[Any], req_id_map: dict[int, str], message: str, code: int, context: Context
) -> None:
    """Send one streamed chunk per request of the batch before the handler returns.

    In a multi-process (torchrun) handler only rank 0 answers, as in TorchServe.
    """
    if str(os.environ.get("LOCAL_RANK", "0")) != "0":
        return
    if context._send_intermediate is None:
        raise RuntimeError("streaming responses need a worker channel")
    context._send_intermediate(ret, req_id_map, message, code)
