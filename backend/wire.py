"""Frame codec for the frontend <-> worker channel (``protos/worker.proto``).

A frame is a 4-byte big-endian length followed by one protobuf message. The decoder is sans-IO:
feed it bytes with :meth:`FrameDecoder.receive_data`, then call :meth:`FrameDecoder.next_frame`
until it returns ``None``. It is the one module imported by both the frontend and the worker.
"""

from __future__ import annotations

import struct
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from backend._proto import worker_pb2 as pb

__all__ = ["MAX_FRAME_BYTES", "FrameDecoder", "FrameError", "encode_frame", "pb"]

# A batch carries up to batch_size request bodies, each capped by max_request_size (6.5 MB by
# default); 1 GiB leaves room for large batches while still refusing a corrupt length prefix
# before any memory is reserved for it.
MAX_FRAME_BYTES = 1 << 30

_LENGTH = struct.Struct(">I")

M = TypeVar("M", bound=Message)


class FrameError(Exception):
    """The peer sent bytes that are not a valid frame. The channel cannot recover: close it."""


def encode_frame(message: Message) -> bytes:
    payload: bytes = message.SerializeToString()
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME_BYTES} limit")
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder(Generic[M]):
    """Turns a byte stream into messages of one type.

    The buffer is consumed from the front with an offset, so a frame delivered byte by byte costs
    linear time overall.
    """

    def __init__(self, message_type: type[M], *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._type = message_type
        self._max = max_frame_bytes
        self._buf = bytearray()
        self._pos = 0

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending_bytes(self) -> int:
        return len(self._buf) - self._pos

    @property
    def missing_bytes(self) -> int:
        """How many more bytes the frame in progress needs (0: none begun, or its length not
        read yet). A reader sizes its next read by it: a read buffer far larger than the data
        costs an allocation per call, one far smaller a call per slice of a big frame."""
        pending = self.pending_bytes
        if pending < _LENGTH.size:
            return 0
        (length,) = _LENGTH.unpack_from(self._buf, self._pos)
        return max(0, _LENGTH.size + int(length) - pending)

    def next_frame(self) -> M | None:
        """The next complete message, or ``None`` if more data is needed.

        Raises:
            FrameError: the length prefix is over the limit or the payload does not parse.
        """
        if self.pending_bytes < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buf, self._pos)
        if length > self._max:
            raise FrameError(f"frame length {length} exceeds the {self._max} byte limit")
        start = self._pos + _LENGTH.size
        if len(self._buf) - start < length:
            return None
        message: M = self._type()
        view = memoryview(self._buf)[start : start + length]  # parsed in place, not copied
        try:
            message.ParseFromString(view)  # type: ignore[arg-type]
        except DecodeError as exc:
            raise FrameError(f"undecodable frame: {exc}") from exc
        finally:
            view.release()  # the buffer is compacted below: no view may outlive this call
        self._pos = start + length
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        return message
