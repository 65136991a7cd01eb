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
# What h11 accepts in a header it sends (RFC 9110 §5.1 token; §5.5 field value, obs-text
# included), for heads written without it.
_FIELD_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(r"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?", re.ASCII)
# Statuses whose responses carry no body (RFC 9110 §6.4.1); HEAD responses carry none either.
NO_BODY_STATUSES = frozenset({204, 304})
# h11 writes no reason phrase unless given one; the contract's answer is "100 Continue".
CONTINUE = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
# h11's hint on the error it raises when an incomplete head outgrows max_incomplete_event_size.
HEAD_TOO_LARGE = 431


def _head_fields(
    response: Response | StreamingResponse, request_id: str, length: int | None, keep: bool
) -> tuple[int, str, list[tuple[str, str]], bool]:
    """Status, reason phrase, headers and whether the connection stays open, for both
    writers below."""
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
    return response.status, reason, headers, keep


def response_head(
    response: Response | StreamingResponse, request_id: str, length: int | None, keep: bool
) -> h11.Response:
    """The response head; ``keep`` says whether the connection stays open after it (it never
    does after an error status).

    Raises:
        h11.LocalProtocolError, ValueError: the handler's status, headers or reason cannot go
            on the wire.
    """
    status, reason, headers, _ = _head_fields(response, request_id, length, keep)
    return h11.Response(
        status_code=status,
        headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        reason=reason.encode("latin-1"),
    )


def head_bytes(
    response: Response | StreamingResponse, request_id: str, length: int | None, keep: bool
) -> bytes:
    """The bytes h11 writes for :func:`response_head` answering a plain HTTP/1.1 request (one
    that asked neither to close nor for HEAD: see http/fastpath.py), made without h11. A body
    of unknown length (``length`` None) is sent chunked.

    Raises:
        ValueError: a status, header or reason h11 would refuse to send.
    """
    status, reason, headers, _ = _head_fields(response, request_id, length, keep)
    if not 200 <= status <= 999:
        raise ValueError(f"status {status} is not a final response status")
    for name, value in headers:
        if not _FIELD_NAME.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"header {name!r} cannot go on the wire")
    if length is None and status not in NO_BODY_STATUSES:
        headers.append(("Transfer-Encoding", "chunked"))  # as h11 adds it: title-cased, last
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


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
