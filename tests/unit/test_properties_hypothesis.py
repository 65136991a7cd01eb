"""Property tests for the sans-IO parsers: request targets, multipart bodies, the worker wire
codec and properties files. Each states a round trip (or a "never raises anything but our
error") over generated inputs, where the table tests pin the cases people thought of."""

from __future__ import annotations

import itertools
import urllib.parse

import javaproperties
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backend.wire import FrameDecoder, FrameError, encode_frame, pb
from trioserve.config import parse_value
from trioserve.config_sources import parse_properties
from trioserve.errors import BadRequest, ConfigError
from trioserve.http.request import Input, Request, body_inputs

settings.register_profile(
    "trioserve", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("trioserve")

# A path segment as a client writes it before percent-encoding: any text but "/" (an encoded
# "%2F" is decoded and then split on, as TorchServe does).
segment = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=12)
query_values = st.dictionaries(
    st.text(min_size=1, max_size=8), st.lists(st.text(max_size=8), min_size=1, max_size=3)
)


# ---------------------------------------------------------------------------- request targets
@given(st.lists(segment, max_size=6), query_values, st.integers(0, 2))
def test_target_round_trips_to_segments_and_query(
    segments: list[str], query: dict[str, list[str]], trailing: int
) -> None:
    path = "/" + "/".join(urllib.parse.quote(s, safe="") for s in segments) + "/" * trailing
    target = path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
    request = Request("GET", target, [])
    assert request.segments == tuple(segments)
    assert request.query == query
    for name, values in query.items():
        assert request.param(name) == values[0]


@given(st.text(max_size=64))
def test_any_target_parses_without_raising(target: str) -> None:
    request = Request("GET", target, [])
    assert not request.segments or request.segments[-1] != ""


# -------------------------------------------------------------------------------- multipart
part_name = st.text(st.sampled_from("abcXYZ019_-."), min_size=1, max_size=10)
parts = st.lists(
    st.tuples(
        part_name,
        st.binary(max_size=200),
        st.one_of(st.none(), part_name),  # filename
        st.sampled_from(["image/png", "text/plain", "application/octet-stream"]),
    ),
    min_size=1,
    max_size=6,
)


def encode_multipart(boundary: str, items: list[tuple[str, bytes, str | None, str]]) -> bytes:
    out = bytearray()
    for name, value, filename, content_type in items:
        out += f"--{boundary}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += disposition.encode() + b"\r\n"
        if filename is not None:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


@given(parts, st.text(st.sampled_from("abcdef0123456789"), min_size=8, max_size=30))
def test_multipart_round_trips_every_part_in_order(
    items: list[tuple[str, bytes, str | None, str]], token: str
) -> None:
    boundary = f"hyp{token}"
    assume(all(f"--{boundary}".encode() not in value for _, value, _, _ in items))
    body = encode_multipart(boundary, items)
    headers = [("Content-Type", f"multipart/form-data; boundary={boundary}")]
    inputs = body_inputs(Request("POST", "/predictions/m", headers, body))
    assert inputs == [
        Input(name, value, content_type if filename is not None else "")
        for name, value, filename, content_type in items
    ]


@given(st.binary(max_size=300))
def test_any_multipart_body_parses_or_is_bad_request(body: bytes) -> None:
    headers = [("Content-Type", "multipart/form-data; boundary=b")]
    try:
        body_inputs(Request("POST", "/predictions/m", headers, b"--b\r\n" + body))
    except BadRequest:
        pass


# ------------------------------------------------------------------------------- wire codec
wire_inputs = st.lists(
    st.builds(
        pb.Input,
        name=st.text(max_size=8),
        content_type=st.sampled_from(["", "image/png", "application/json"]),
        value=st.binary(max_size=64),
    ),
    max_size=3,
)
to_worker = st.one_of(
    st.builds(
        lambda name, version, size: pb.ToWorker(
            load=pb.Load(model_name=name, model_version=version, batch_size=size)
        ),
        st.text(max_size=10),
        st.text(max_size=5),
        st.integers(0, 2**31 - 1),
    ),
    st.builds(
        lambda batch_id, ids, inputs: pb.ToWorker(
            batch=pb.Batch(
                batch_id=batch_id,
                command=pb.PREDICT,
                requests=[pb.Request(request_id=i, inputs=inputs) for i in ids],
            )
        ),
        st.integers(0, 2**63 - 1),
        st.lists(st.text(max_size=12), max_size=4),
        wire_inputs,
    ),
)


@given(st.lists(to_worker, max_size=5), st.lists(st.integers(0, 4096), max_size=8))
def test_frames_round_trip_however_the_stream_is_split(
    messages: list[pb.ToWorker], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    decoder: FrameDecoder[pb.ToWorker] = FrameDecoder(pb.ToWorker)
    out: list[pb.ToWorker] = []
    for start, end in itertools.pairwise(points):
        decoder.receive_data(stream[start:end])
        while (message := decoder.next_frame()) is not None:
            out.append(message)
    assert out == messages


@given(st.integers(65, 2**32 - 1))
def test_a_frame_longer_than_the_limit_is_refused_from_its_prefix(length: int) -> None:
    decoder: FrameDecoder[pb.ToWorker] = FrameDecoder(pb.ToWorker, max_frame_bytes=64)
    decoder.receive_data(length.to_bytes(4, "big"))
    with pytest.raises(FrameError):
        decoder.next_frame()


# ------------------------------------------------------------------------- properties files
# Keys and values of any text; javaproperties escapes what the format needs escaping.
properties = st.dictionaries(st.text(max_size=12), st.text(max_size=24), max_size=8)


@given(properties)
def test_properties_round_trip(values: dict[str, str]) -> None:
    text = javaproperties.dumps(values, timestamp=None)
    assert parse_properties(text) == values


@given(st.text(max_size=200))
def test_any_properties_text_parses_or_is_config_error(text: str) -> None:
    try:
        parsed = parse_properties(text)
    except ConfigError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


@given(st.integers(1, 10**12))
def test_integer_keys_round_trip(value: int) -> None:
    assert parse_value("job_queue_size", f" {value} ", "test") == value


@given(st.decimals(min_value="0.001", max_value="100000", places=3))
def test_timeout_keys_take_decimal_seconds(value: object) -> None:
    text = str(value)
    assert parse_value("http_header_timeout", text, "test") == float(text)


@given(st.text(max_size=20))
def test_any_text_for_a_key_is_a_value_or_config_error(text: str) -> None:
    for key in ("http_body_timeout", "http_max_connections", "inference_address", "debug"):
        error = None
        try:
            parse_value(key, text, "test")
        except ConfigError as exc:
            error = str(exc)
        assert error is None or key in error
