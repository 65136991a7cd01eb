"""The worker frame codec: one case table walked by the encoder and the decoder."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from google.protobuf.message import Message

import backend.wire
from backend.wire import MAX_FRAME_BYTES, FrameDecoder, FrameError, encode_frame, pb

TO_WORKER: list[tuple[str, pb.ToWorker]] = [
    ("empty", pb.ToWorker()),
    (
        "load",
        pb.ToWorker(
            load=pb.Load(
                model_name="mnist",
                model_version="1.0",
                model_dir="/tmp/models/mnist",
                handler="handler.py:handle",
                batch_size=4,
                gpu_id=-1,
                envelope="kservev2",
                limit_max_image_pixels=True,
                decode_input_request=True,
                manifest_json='{"model": {"modelName": "mnist"}}',
                model_yaml_json='{"minWorkers": 1}',
            )
        ),
    ),
    ("empty batch", pb.ToWorker(batch=pb.Batch(batch_id=0, command=pb.DESCRIBE))),
    (
        "batch",
        pb.ToWorker(
            batch=pb.Batch(
                batch_id=2**64 - 1,
                command=pb.EXPLAIN,
                requests=[
                    pb.Request(
                        request_id="6f1c7f0e-1",
                        headers=[
                            pb.Header(name="X-Custom-Case", value="kept"),
                            pb.Header(name="explain", value="True"),
                            pb.Header(name="url_path", value=""),
                        ],
                        inputs=[
                            pb.Input(name="data", content_type="image/png", value=b"\x89PNG\0"),
                            pb.Input(name="data", value=b"second"),
                            pb.Input(name="field", value="héllo".encode()),
                        ],
                    ),
                    pb.Request(request_id="r2", inputs=[pb.Input(name="body", value=b"")]),
                ],
            )
        ),
    ),
    (
        "large input",
        pb.ToWorker(
            batch=pb.Batch(
                batch_id=1,
                requests=[
                    pb.Request(inputs=[pb.Input(name="body", value=bytes(range(256)) * 300)])
                ],
            )
        ),
    ),
]

FROM_WORKER: list[tuple[str, pb.FromWorker]] = [
    ("empty", pb.FromWorker()),
    ("loaded", pb.FromWorker(loaded=pb.Loaded(code=200, message="loaded"))),
    ("load failed", pb.FromWorker(loaded=pb.Loaded(code=500, message="No module named 'x'"))),
    (
        "result",
        pb.FromWorker(
            result=pb.BatchResult(
                batch_id=7,
                code=200,
                final=True,
                responses=[
                    pb.Response(
                        request_id="r1",
                        status=201,
                        reason="Custom",
                        content_type="application/json",
                        headers=[pb.Header(name="ts_stream_next", value="false")],
                        body=b'{"k": 1}',
                    ),
                    pb.Response(request_id="r2", status=200, body=b""),
                ],
                metrics=[
                    pb.Metric(
                        name="HandlerTime",
                        unit="ms",
                        value=1.5,
                        dimensions=[pb.Header(name="ModelName", value="m")],
                        type="gauge",
                        request_id="r1",
                    )
                ],
            )
        ),
    ),
    (
        "intermediate chunk",
        pb.FromWorker(
            result=pb.BatchResult(
                batch_id=8, final=False, responses=[pb.Response(request_id="r", body=b"hel")]
            )
        ),
    ),
    ("batch error", pb.FromWorker(result=pb.BatchResult(batch_id=9, code=507, message="OOM"))),
]

CASES: list[tuple[str, Message]] = [
    *((f"to_worker/{name}", msg) for name, msg in TO_WORKER),
    *((f"from_worker/{name}", msg) for name, msg in FROM_WORKER),
]
IDS = [name for name, _ in CASES]
MESSAGES = [msg for _, msg in CASES]


def decode_all(decoder: FrameDecoder[Any]) -> list[Message]:
    out: list[Message] = []
    while (message := decoder.next_frame()) is not None:
        out.append(message)
    return out


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_frame_is_length_prefix_then_payload(message: Message) -> None:
    frame = encode_frame(message)
    payload = message.SerializeToString()
    assert frame == struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_round_trip_fed_whole(message: Message) -> None:
    decoder = FrameDecoder(type(message))
    assert decoder.next_frame() is None
    decoder.receive_data(encode_frame(message))
    assert decode_all(decoder) == [message]
    assert decoder.pending_bytes == 0


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_round_trip_fed_byte_by_byte(message: Message) -> None:
    frame = encode_frame(message)
    decoder = FrameDecoder(type(message))
    got: list[Message] = []
    for i in range(len(frame)):
        assert got == [], f"a frame came out after {i} of {len(frame)} bytes"
        decoder.receive_data(frame[i : i + 1])
        got.extend(decode_all(decoder))
    assert got == [message]
    assert decoder.pending_bytes == 0


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_round_trip_with_trailing_partial_frame(message: Message) -> None:
    decoder = FrameDecoder(type(message))
    following = encode_frame(message)
    decoder.receive_data(encode_frame(message) + following[:3])
    assert decode_all(decoder) == [message]
    assert decoder.pending_bytes == 3
    decoder.receive_data(following[3:])
    assert decode_all(decoder) == [message]


@pytest.mark.parametrize(
    ("message_type", "messages"),
    [
        (pb.ToWorker, [m for _, m in TO_WORKER]),
        (pb.FromWorker, [m for _, m in FROM_WORKER]),
    ],
    ids=["to_worker", "from_worker"],
)
@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_concatenated_frames_come_out_in_order(
    message_type: type[Message], messages: list[Message], chunk: int
) -> None:
    stream = b"".join(encode_frame(m) for m in messages * 3)
    decoder: FrameDecoder[Any] = FrameDecoder(message_type)
    got: list[Message] = []
    for i in range(0, len(stream), chunk):
        decoder.receive_data(stream[i : i + chunk])
        got.extend(decode_all(decoder))
    assert got == messages * 3
    assert decoder.pending_bytes == 0


def test_many_frames_past_the_compaction_threshold() -> None:
    # Enough frames that the consumed prefix is dropped several times along the way.
    messages = [pb.FromWorker(loaded=pb.Loaded(code=i, message="x" * 500)) for i in range(1000)]
    decoder = FrameDecoder(pb.FromWorker)
    got: list[Message] = []
    for message in messages:
        decoder.receive_data(encode_frame(message))
        got.extend(decode_all(decoder))
    assert got == messages


def test_over_limit_length_prefix_raises_before_payload_arrives() -> None:
    decoder = FrameDecoder(pb.ToWorker, max_frame_bytes=1000)
    decoder.receive_data(struct.pack(">I", 1001)[:3])
    assert decoder.next_frame() is None  # the prefix itself is still incomplete
    decoder.receive_data(struct.pack(">I", 1001)[3:])
    with pytest.raises(FrameError, match="1001"):
        decoder.next_frame()


def test_limit_is_inclusive() -> None:
    message = pb.ToWorker(load=pb.Load(model_name="m" * 100))
    frame = encode_frame(message)
    decoder = FrameDecoder(pb.ToWorker, max_frame_bytes=len(frame) - 4)
    decoder.receive_data(frame)
    assert decoder.next_frame() == message


def test_default_limit_refuses_a_corrupt_prefix_before_payload() -> None:
    decoder = FrameDecoder(pb.FromWorker)
    decoder.receive_data(struct.pack(">I", MAX_FRAME_BYTES + 1))
    with pytest.raises(FrameError):
        decoder.next_frame()
    other = FrameDecoder(pb.FromWorker)
    other.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(FrameError):
        other.next_frame()


def test_encode_refuses_a_message_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend.wire, "MAX_FRAME_BYTES", 10)
    with pytest.raises(FrameError):
        encode_frame(pb.FromWorker(loaded=pb.Loaded(message="x" * 20)))


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",  # truncated varint tag
        b"\x00",  # field number 0
        b"\x07",  # wire type 7 does not exist
        b"\x0a\x05abc",  # length-delimited field longer than the payload
        b"\x0a\x02\x0a\xff",  # nested message with a truncated length
        b"\x12\x03\x1a\x01\x0a\x01\xff",  # proto3 string field with invalid UTF-8
    ],
)
def test_garbage_payload_raises_frame_error(payload: bytes) -> None:
    decoder = FrameDecoder(pb.ToWorker)
    decoder.receive_data(struct.pack(">I", len(payload)) + payload)
    with pytest.raises(FrameError, match="undecodable"):
        decoder.next_frame()


def test_frame_error_is_sticky() -> None:
    decoder = FrameDecoder(pb.ToWorker)
    decoder.receive_data(struct.pack(">I", 1) + b"\xff" + encode_frame(pb.ToWorker()))
    for _ in range(2):
        with pytest.raises(FrameError):
            decoder.next_frame()
