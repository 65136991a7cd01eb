"""Response heads for the connection loop: what goes on the wire for a ``Response`` (contract
§0.2), and the fixed answers the loop gives by itself (400/431 for a bad head, 500 for a bug)."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

import h11

from trioserve.errors import BadRequest, InternalServerError
from trioserve.http.response import COMMON_HEADERS, Response, StreamingResponse, error_response

logger = logging.getLogger("trioserve.http.connection")

# Framing belongs to this layer: a handler's own values for these would contradict ours.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
# A reason phrase is written raw into the status line; anything but these is refused (RFC 9112
# §4: HTAB, SP, VCHAR, obs-text), so a handler cannot inject a header.
_REASON_OK = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Statuses whose responses carry no body (RFC 9110 §6.4.1); HEAD responses carry none either.
NO_BODY_STATUSES = frozenset({204, 304})
# h11 writes no reason phrase unless given one; the contract's answer is "100 Continue".
CONTINUE = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
# h11's hint on the error it raises when an incomplete head outgrows max_incomplete_event_size.
HEAD_TOO_LARGE = 431


def response_head(
    response: Response | StreamingResponse, request_id: str, length: int | None, keep: bool
) -> h11.Response:
    """The response head; ``keep`` says whether the connection stays open after it (it never
    does after an error status).

    Raises:
        h11.LocalProtocolError, ValueError: the handler's status, headers or reason cannot go
            on the wire.
    """
    headers: list[tuple[str, str]] = [("x-request-id", request_id), *COMMON_HEADERS]
    headers.extend(kv for kv in response.headers if kv[0].lower() not in _FRAMING_HEADERS)
    if response.content_type:
        headers.append(("content-type", response.content_type))
    if length is not None and response.status != 204:
        headers.append(("content-length", str(length)))
    keep = keep and response.status < 400
    headers.append(("connection", "keep-alive" if keep else "close"))
    reason = response.reason
    if not reason or not _REASON_OK.fullmatch(reason):
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
    return h11.Response(
        status_code=response.status,
        headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        reason=reason.encode("latin-1"),
    )


def checked_head(
    response: Response | StreamingResponse, request_id: str, length: int | None, keep: bool
) -> h11.Response | None:
    """:func:`response_head`, or None (logged) when the handler's response is not valid HTTP."""
    try:
        return response_head(response, request_id, length, keep)
    except (h11.LocalProtocolError, ValueError):
        logger.exception("a response (status %s) is not valid HTTP", response.status)
        return None


def internal_error() -> Response:
    return error_response(InternalServerError("Internal server error."))


def head_error(too_large: bool) -> Response:
    """400 "Invalid HTTP message." (contract §0.1), or 431 for a head over the size limit."""
    if too_large:
        return error_response(BadRequest("Request Header Fields Too Large", code=431))
    return error_response(BadRequest("Invalid HTTP message."))


def head_size(event: h11.Request) -> int:
    """The head's size as parsed: request line and header lines, each with its CRLF."""
    line = len(event.method) + len(event.target) + len(b"  HTTP/1.1\r\n")
    return line + sum(len(k) + len(v) + 4 for k, v in event.headers.raw_items()) + 2
