"""Sans-IO request values: the parsed target and the handler inputs a body produces."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

import multipart

from trioserve.errors import BadRequest
from trioserve.http.routing import Route

# A form with more parts than this is refused: each part becomes an input the worker decodes.
MAX_FORM_PARTS = 1024
# Part headers are small in practice; this bounds the parser's buffering of a hostile header.
MAX_PART_HEADER_BYTES = 8192
# RFC 7578 defines three part headers; a few more leave room for clients that add their own.
MAX_PART_HEADERS = 16


@dataclass(frozen=True)
class Input:
    """One named value for the handler (contract §1.2)."""

    name: str
    value: bytes
    content_type: str = ""


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]  # names with the client's case
    body: bytes = b""
    request_id: str = ""
    remote: str = ""
    path: str = field(init=False)
    segments: tuple[str, ...] = field(init=False)
    query: dict[str, list[str]] = field(init=False)
    model: str = ""  # the model a routed request names, for the access log
    routed: Route | None = None  # the route, once found (admission finds it before the body)

    def __post_init__(self) -> None:
        raw_path, _, raw_query = self.target.partition("?")
        # The common target has neither escapes nor a query: skip the parsers' work then.
        self.path = urllib.parse.unquote(raw_path) if "%" in raw_path else raw_path
        parts = self.path.split("/")
        while parts and parts[-1] == "":
            parts.pop()
        self.segments = tuple(parts[1:]) if parts and parts[0] == "" else tuple(parts)
        self.query = urllib.parse.parse_qs(raw_query, keep_blank_values=True) if raw_query else {}

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def param(self, name: str) -> str | None:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def mime_type(self) -> str:
        value = self.header("content-type") or ""
        return value.split(";", 1)[0].strip().lower()


def body_inputs(request: Request) -> list[Input]:
    """The inputs a request body produces, in order (repeated names are kept; the worker keeps
    the last of each name)."""
    mime = request.mime_type
    if mime == "multipart/form-data":
        return _multipart_inputs(request)
    if mime == "application/x-www-form-urlencoded":
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest("Invalid form body: not UTF-8.") from exc
        try:
            # max_num_fields counts separators before splitting, so a hostile body is refused
            # without building a list of millions of fields first.
            fields = urllib.parse.parse_qsl(
                text, keep_blank_values=True, max_num_fields=MAX_FORM_PARTS
            )
        except ValueError as exc:
            raise BadRequest(f"Too many form fields (limit {MAX_FORM_PARTS}).") from exc
        return [Input(k, v.encode("utf-8")) for k, v in fields]
    return [Input("body", request.body, mime)]


def _multipart_inputs(request: Request) -> list[Input]:
    """One input per part, in order. File parts (those with a filename) carry their part's
    content type without parameters; plain fields carry none (contract §1.2).

    Raises:
        BadRequest: no boundary, a malformed body, or more than ``MAX_FORM_PARTS`` parts.
    """
    _, options = multipart.parse_options_header(request.header("content-type") or "")
    boundary = options.get("boundary")
    if not boundary:
        raise BadRequest("Invalid multipart body: no boundary in Content-Type.")
    inputs: list[Input] = []
    name, content_type, chunks = "", "", bytearray()
    try:
        # Inside the try: the constructor itself refuses some boundaries.
        parser = multipart.PushMultipartParser(
            boundary,
            max_header_size=MAX_PART_HEADER_BYTES,
            max_header_count=MAX_PART_HEADERS,
            max_segment_count=MAX_FORM_PARTS,
        )
        for event in parser.parse(request.body):
            if isinstance(event, multipart.MultipartSegment):
                name = event.name or ""
                is_file = event.filename is not None
                content_type = (event.content_type or "") if is_file else ""
                chunks = bytearray()
            elif event is None:
                inputs.append(Input(name, bytes(chunks), content_type))
            else:
                chunks += event
        # An empty chunk closes the parser and raises if the closing boundary never came.
        # Bytes after the closing boundary are the epilogue (RFC 2046 §5.1.1) and are ignored.
        list(parser.parse(b""))
    except multipart.MultipartError as exc:
        raise BadRequest(f"Invalid multipart body: {exc}") from exc
    return inputs
