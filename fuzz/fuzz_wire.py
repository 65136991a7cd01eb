"""Fuzz target: bytes from a worker channel -> ``FrameDecoder``, for both message types.

Contract (STYLE "Fuzz contract"): any bytes yield frames or raise ``FrameError``, nothing else;
fed whole or one byte at a time they give the same frames and the same error; every frame that
comes out re-encodes and decodes to itself.

Run under atheris (``python fuzz/fuzz_wire.py [atheris/libFuzzer flags]``) or, without it,
``python fuzz/fuzz_wire.py --smoke N [--seed S]`` to check N generated inputs.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable
from typing import Any

import _harness
from google.protobuf.message import Message

from backend.wire import FrameDecoder, FrameError, encode_frame, pb

# Small, so a fuzzed length prefix hits the limit as well as the payload path.
MAX_FRAME = 1 << 16
TYPES: tuple[type[Message], ...] = (pb.ToWorker, pb.FromWorker)

SEEDS: list[bytes] = [
    encode_frame(pb.ToWorker(load=pb.Load(model_name="m", model_version="1.0", batch_size=2))),
    encode_frame(
        pb.ToWorker(
            batch=pb.Batch(
                batch_id=3,
                command=pb.EXPLAIN,
                requests=[
                    pb.Request(
                        request_id="r",
                        headers=[pb.Header(name="explain", value="True")],
                        inputs=[pb.Input(name="data", content_type="image/png", value=b"\x89P")],
                    )
                ],
            )
        )
    )
    + encode_frame(pb.ToWorker()),
    encode_frame(
        pb.FromWorker(
            result=pb.BatchResult(
                batch_id=3,
                code=200,
                final=True,
                responses=[pb.Response(request_id="r", status=200, body=b"ok")],
                metrics=[pb.Metric(name="HandlerTime", unit="ms", value=1.0)],
            )
        )
    ),
    encode_frame(pb.FromWorker(loaded=pb.Loaded(code=500, message="boom"))),
]


def decode(message_type: type[Message], chunks: Iterable[bytes]) -> tuple[list[bytes], bool]:
    """(each frame re-serialized, whether a FrameError ended the stream)."""
    decoder: FrameDecoder[Any] = FrameDecoder(message_type, max_frame_bytes=MAX_FRAME)
    frames: list[bytes] = []
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            while (message := decoder.next_frame()) is not None:
                again: FrameDecoder[Any] = FrameDecoder(message_type)
                again.receive_data(encode_frame(message))
                assert again.next_frame() == message, message
                frames.append(message.SerializeToString())
    except FrameError:
        return frames, True
    return frames, False


def check(data: bytes) -> None:
    for message_type in TYPES:
        whole = decode(message_type, [data])
        one_by_one = decode(message_type, (data[i : i + 1] for i in range(len(data))))
        assert whole == one_by_one, (message_type, data, whole, one_by_one)


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        at = rng.randint(0, len(out))
        if op == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.randbytes(rng.randint(1, 6))
        elif op == 2:
            del out[at : at + rng.randint(1, 8)]
        else:
            out += rng.choice(SEEDS)
    return bytes(out)


def generate(rng: random.Random, pool: list[bytes]) -> bytes:
    if rng.random() < 0.2:
        payload = rng.randbytes(rng.randint(0, 64))
        return len(payload).to_bytes(4, "big") + payload
    return mutate(rng, rng.choice(pool))


def main(argv: list[str]) -> int:
    return _harness.main(
        argv,
        name="wire",
        doc=__doc__ or "",
        check=check,
        seeds=SEEDS,
        mutate=mutate,
        generate=generate,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
