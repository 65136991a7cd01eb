"""Sans-IO request parsing: the target (contract §0.1) and the inputs a body produces (§1.2)."""

from __future__ import annotations

import pytest

from trioserve.errors import BadRequest
from trioserve.http.request import MAX_FORM_PARTS, Input, Request, body_inputs

# (target, path, segments, query)
TARGET_CASES: list[tuple[str, str, tuple[str, ...], dict[str, list[str]]]] = [
    ("/", "/", (), {}),
    ("//", "//", (), {}),
    ("/ping", "/ping", ("ping",), {}),
    ("/models/", "/models/", ("models",), {}),
    ("/models//", "/models//", ("models",), {}),
    ("/models/x/1.0/", "/models/x/1.0/", ("models", "x", "1.0"), {}),
    ("/a//b", "/a//b", ("a", "", "b"), {}),
    ("/predictions/my%20model", "/predictions/my model", ("predictions", "my model"), {}),
    ("/predictions/a%2Fb", "/predictions/a/b", ("predictions", "a", "b"), {}),
    ("/models/%7Bm%7D", "/models/{m}", ("models", "{m}"), {}),
    ("/a%3Fb?c=d", "/a?b", ("a?b",), {"c": ["d"]}),
    ("/ping?", "/ping", ("ping",), {}),
    ("/models?limit=2", "/models", ("models",), {"limit": ["2"]}),
    ("/models/?limit=2", "/models/", ("models",), {"limit": ["2"]}),
    ("/x?a=1&a=2&b=", "/x", ("x",), {"a": ["1", "2"], "b": [""]}),
    ("/x?q=a%20b+c&flag", "/x", ("x",), {"q": ["a b c"], "flag": [""]}),
    ("/x?url=http%3A%2F%2Fh%2Fm.mar", "/x", ("x",), {"url": ["http://h/m.mar"]}),
    ("/caf%C3%A9", "/café", ("café",), {}),
    ("*", "*", ("*",), {}),
]


@pytest.mark.parametrize(("target", "path", "segments", "query"), TARGET_CASES)
def test_target_is_decoded_split_and_trailing_empty_segments_dropped(
    target: str, path: str, segments: tuple[str, ...], query: dict[str, list[str]]
) -> None:
    request = Request("GET", target, [])
    assert request.path == path
    assert request.segments == segments
    assert request.query == query


def test_param_is_first_value_and_none_when_absent() -> None:
    request = Request("GET", "/models?limit=5&limit=6&empty=", [])
    assert request.param("limit") == "5"
    assert request.param("empty") == ""
    assert request.param("missing") is None


def test_header_lookup_ignores_case_keeps_first_and_client_case() -> None:
    headers = [("X-Custom-Case", "one"), ("x-custom-case", "two")]
    request = Request("GET", "/", headers)
    assert request.header("x-CUSTOM-case") == "one"
    assert request.header("absent") is None
    assert request.headers == headers


@pytest.mark.parametrize(
    ("content_type", "mime"),
    [
        (None, ""),
        ("application/json", "application/json"),
        ("text/plain; charset=utf-8", "text/plain"),
        ("  Application/JSON ;charset=UTF-8", "application/json"),
        ("image/png;", "image/png"),
    ],
)
def test_raw_body_is_one_body_input_with_mime_type_without_params(
    content_type: str | None, mime: str
) -> None:
    headers = [] if content_type is None else [("Content-Type", content_type)]
    request = Request("POST", "/predictions/m", headers, b"\x00\x01raw;body")
    assert request.mime_type == mime
    assert body_inputs(request) == [Input("body", b"\x00\x01raw;body", mime)]


def test_empty_raw_body_still_gives_a_body_input() -> None:
    assert body_inputs(Request("GET", "/predictions/m", [])) == [Input("body", b"", "")]


def form(body: bytes, content_type: str = "application/x-www-form-urlencoded") -> Request:
    return Request("POST", "/predictions/m", [("Content-Type", content_type)], body)


# (body, inputs): url-encoded fields carry no content type; repeated names keep their order.
FORM_CASES: list[tuple[bytes, list[Input]]] = [
    (b"", []),
    (b"a=1", [Input("a", b"1")]),
    (b"a=1&b=x+y&a=2", [Input("a", b"1"), Input("b", b"x y"), Input("a", b"2")]),
    (b"empty=&flag", [Input("empty", b""), Input("flag", b"")]),
    (b"t=caf%C3%A9&k%20ey=%26", [Input("t", "café".encode()), Input("k ey", b"&")]),
]


@pytest.mark.parametrize(("body", "inputs"), FORM_CASES)
def test_urlencoded_form_gives_one_input_per_field(body: bytes, inputs: list[Input]) -> None:
    assert body_inputs(form(body)) == inputs
    assert body_inputs(form(body, "Application/X-WWW-Form-Urlencoded; charset=utf-8")) == inputs


def test_urlencoded_form_that_is_not_utf8_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="not UTF-8"):
        body_inputs(form(b"a=\xff"))


def test_urlencoded_form_field_count_is_limited() -> None:
    at_limit = b"&".join(b"f%d=v" % i for i in range(MAX_FORM_PARTS))
    assert len(body_inputs(form(at_limit))) == MAX_FORM_PARTS
    with pytest.raises(BadRequest, match="Too many form fields"):
        body_inputs(form(at_limit + b"&one=more"))


BOUNDARY = "----trioserveBoundary7MA4YWxk"


def part(
    name: str, value: bytes, *, filename: str | None = None, content_type: str | None = None
) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"Content-Disposition: {disposition}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return f"--{BOUNDARY}\r\n{head}\r\n".encode() + value + b"\r\n"


def multipart_body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def multipart_request(body: bytes, content_type: str | None = None) -> Request:
    value = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return Request("POST", "/predictions/m", [("Content-Type", value)], body)


# (name, body, inputs): the multipart round-trip table.
MULTIPART_CASES: list[tuple[str, bytes, list[Input]]] = [
    ("no parts", multipart_body(), []),
    ("one plain field", multipart_body(part("data", b"plain")), [Input("data", b"plain")]),
    (
        "one file part",
        multipart_body(part("data", b"\x89PNG\r\n", filename="a.png", content_type="image/png")),
        [Input("data", b"\x89PNG\r\n", "image/png")],
    ),
    (
        "file part content type loses params and case",
        multipart_body(
            part("d", b"{}", filename="a.json", content_type="Application/JSON; charset=utf-8")
        ),
        [Input("d", b"{}", "application/json")],
    ),
    (
        "plain field with a content type carries none",
        multipart_body(part("f", b"text", content_type="text/plain")),
        [Input("f", b"text")],
    ),
    (
        "file part without a content type",
        multipart_body(part("f", b"x", filename="x.bin")),
        [Input("f", b"x")],
    ),
    (
        "several parts, repeated names kept in order",
        multipart_body(
            part("data", b"first", filename="a", content_type="application/octet-stream"),
            part("field", b"plain"),
            part("data", b"second", filename="b", content_type="application/octet-stream"),
        ),
        [
            Input("data", b"first", "application/octet-stream"),
            Input("field", b"plain"),
            Input("data", b"second", "application/octet-stream"),
        ],
    ),
    (
        "empty part values",
        multipart_body(part("a", b""), part("b", b"", filename="e", content_type="text/csv")),
        [Input("a", b""), Input("b", b"", "text/csv")],
    ),
    (
        "value that contains a boundary-like line",
        multipart_body(part("a", f"--{BOUNDARY}x\r\n--{BOUNDARY[:-1]}".encode())),
        [Input("a", f"--{BOUNDARY}x\r\n--{BOUNDARY[:-1]}".encode())],
    ),
    (
        "preamble before the first boundary",
        b"ignored preamble\r\n" + multipart_body(part("a", b"1")),
        [Input("a", b"1")],
    ),
]


@pytest.mark.parametrize(
    ("body", "inputs"), [c[1:] for c in MULTIPART_CASES], ids=[c[0] for c in MULTIPART_CASES]
)
def test_multipart_parts_become_inputs(body: bytes, inputs: list[Input]) -> None:
    assert body_inputs(multipart_request(body)) == inputs


@pytest.mark.parametrize(
    ("body", "inputs"), [c[1:] for c in MULTIPART_CASES], ids=[c[0] for c in MULTIPART_CASES]
)
def test_multipart_epilogue_after_closing_boundary_is_ignored(
    body: bytes, inputs: list[Input]
) -> None:
    junk = b"trailing junk\r\n--" + BOUNDARY.encode() + b"\r\nnot a part"
    assert body_inputs(multipart_request(body + junk)) == inputs


@pytest.mark.parametrize(
    "content_type",
    [
        f'multipart/form-data; boundary="{BOUNDARY}"',
        f"Multipart/Form-Data; charset=utf-8; Boundary={BOUNDARY}",
    ],
)
def test_multipart_boundary_may_be_quoted_and_mime_type_any_case(content_type: str) -> None:
    body = multipart_body(part("a", b"1"))
    assert body_inputs(multipart_request(body, content_type)) == [Input("a", b"1")]


def test_multipart_boundary_case_is_significant() -> None:
    body = multipart_body(part("a", b"1"))
    with pytest.raises(BadRequest):
        body_inputs(multipart_request(body, f"multipart/form-data; boundary={BOUNDARY.lower()}"))


MALFORMED_MULTIPART: list[tuple[str, bytes, str | None]] = [
    ("empty body", b"", None),
    ("no boundary param", multipart_body(part("a", b"1")), "multipart/form-data"),
    ("empty boundary", multipart_body(part("a", b"1")), 'multipart/form-data; boundary=""'),
    ("no closing boundary", multipart_body(part("a", b"1"))[: -len(BOUNDARY) - 6], None),
    ("cut inside part headers", f"--{BOUNDARY}\r\nContent-Disp".encode(), None),
    ("garbage", b"this is not multipart at all", None),
    (
        "missing content-disposition",
        f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        None,
    ),
    (
        "disposition not form-data",
        f'--{BOUNDARY}\r\nContent-Disposition: attachment; name="a"\r\n\r\n'
        f"x\r\n--{BOUNDARY}--".encode(),
        None,
    ),
    (
        "bare LF line breaks",
        f'--{BOUNDARY}\nContent-Disposition: form-data; name="a"\n\nx\n--{BOUNDARY}--\n'.encode(),
        None,
    ),
    (
        "bytes glued to the first boundary",
        f"--{BOUNDARY}xx\r\n".encode() + multipart_body(part("a", b"1")),
        None,
    ),
    (
        "header without colon",
        f"--{BOUNDARY}\r\nnot a header\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        None,
    ),
    (
        "oversized part header",
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{"a" * 10000}"\r\n\r\n'.encode(),
        None,
    ),
    (
        "too many part headers",
        f"--{BOUNDARY}\r\n".encode()
        + b"".join(b"X-H%d: v\r\n" % i for i in range(40))
        + b'Content-Disposition: form-data; name="a"\r\n\r\nx\r\n'
        + f"--{BOUNDARY}--".encode(),
        None,
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [c[1:] for c in MALFORMED_MULTIPART],
    ids=[c[0] for c in MALFORMED_MULTIPART],
)
def test_malformed_multipart_is_bad_request(body: bytes, content_type: str | None) -> None:
    with pytest.raises(BadRequest, match=r"^Invalid multipart body") as caught:
        body_inputs(multipart_request(body, content_type))
    assert caught.value.code == 400
    assert caught.value.type_name == "BadRequestException"


def test_multipart_part_count_is_limited() -> None:
    at_limit = multipart_body(*(part(f"p{i}", b"v") for i in range(MAX_FORM_PARTS)))
    assert len(body_inputs(multipart_request(at_limit))) == MAX_FORM_PARTS
    over = multipart_body(*(part(f"p{i}", b"v") for i in range(MAX_FORM_PARTS + 1)))
    with pytest.raises(BadRequest, match=r"^Invalid multipart body: .*segment count"):
        body_inputs(multipart_request(over))
