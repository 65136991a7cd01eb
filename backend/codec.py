"""Conversions between wire messages and what handlers see (contract §7.2, §7.4)."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from backend.wire import pb


def decode_value(value: bytes, content_type: str, decode: bool) -> Any:
    """An input value as a handler receives it."""
    if decode and content_type == "application/json":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if decode and content_type.startswith("text"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return bytearray(value)


def request_data(request: pb.Request, decode: bool) -> dict[str, Any]:
    """One element of the handler's ``data`` list; a repeated name keeps its last value."""
    return {i.name: decode_value(i.value, i.content_type, decode) for i in request.inputs}


def request_headers(request: pb.Request) -> dict[str, Any]:
    """Request headers plus one ``{input name: {"content-type": ct}}`` entry per input."""
    headers: dict[str, Any] = {h.name: h.value for h in request.headers}
    for item in request.inputs:
        headers[item.name] = {"content-type": item.content_type}
    return headers


class UnsupportedOutput(Exception):
    """A handler returned something that cannot become a response body."""


def encode_output(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    # Only a handler that imported torch can return a tensor; importing it here for every
    # other handler would cost seconds on the first response (enough to trip a short
    # response_timeout).
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()
    try:
        return json.dumps(value, indent=2).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise UnsupportedOutput(str(exc)) from exc
