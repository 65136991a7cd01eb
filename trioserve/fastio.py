"""Socket reads and writes that skip the scheduler when the kernel can serve them at once.

Every trio socket operation is a checkpoint: even a ``send`` the kernel takes whole, or a
``recv`` of bytes already buffered, yields to the scheduler and costs ~18 µs here, against
~1 µs for the system call itself. A request crosses four such operations in the frontend (the
client's socket and the worker's, each way), so the hot paths first try the call directly on
the descriptor and fall back to trio only when it would block.

Skipping the checkpoint is safe where the caller yields elsewhere on every round (the HTTP
loop waits for its reader; a worker's reader waits for frames). A reader that could find data
ready forever (a worker streaming chunks as fast as it can) yields every ``FAIR_EVERY``
immediate reads through :class:`FastReader`, so other tasks and cancellation still get their
turn.
"""

from __future__ import annotations

import os

import trio

# Immediate reads in a row before a reader yields anyway.
FAIR_EVERY = 16


def _fd(stream: trio.abc.Stream) -> int | None:
    """The descriptor under a plain socket stream; None for anything else (TLS, pipes, test
    streams), which then always goes through trio."""
    if type(stream) is trio.SocketStream:
        return stream.socket.fileno()
    return None


def send_now(stream: trio.abc.Stream, data: bytes | bytearray | memoryview) -> int:
    """Write as much of ``data`` as the kernel takes without waiting; returns the bytes
    written (0 when the socket buffer is full or the stream is not a plain socket).

    Raises:
        trio.BrokenResourceError: the peer is gone.
    """
    fd = _fd(stream)
    if fd is None or fd < 0:
        return 0
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:  # EPIPE, ECONNRESET: what trio would report as broken
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


async def send_all(stream: trio.abc.Stream, data: bytes | bytearray | memoryview) -> None:
    """``stream.send_all(data)``, minus the scheduler pass when the kernel takes it whole."""
    sent = send_now(stream, data)
    if sent < len(data):
        await stream.send_all(memoryview(data)[sent:])


class FastReader:
    """``receive_some`` for one stream that returns buffered bytes without a scheduler pass,
    at most ``FAIR_EVERY`` times in a row."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._fd = _fd(stream)
        self._streak = 0

    async def receive_some(self, max_bytes: int) -> bytes:
        """Bytes received (``b""`` at EOF).

        Raises:
            trio.BrokenResourceError: the connection was reset.
        """
        fd = self._fd
        if fd is not None and self._streak < FAIR_EVERY:
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
            else:
                self._streak += 1
                return data
        self._streak = 0
        return bytes(await self.stream.receive_some(max_bytes))
