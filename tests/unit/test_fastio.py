"""The direct socket paths: what the kernel takes at once skips the scheduler, nothing is lost
when it cannot, a gone peer is reported as trio would, and a reader still yields."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from trioserve import fastio


def _pair() -> tuple[trio.SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


async def test_send_now_writes_without_a_checkpoint() -> None:
    stream, peer = _pair()
    with peer:
        with trio.testing.assert_no_checkpoints():
            await fastio.send_all(stream, b"hello")
        assert peer.recv(100) == b"hello"
        await stream.aclose()


async def test_send_all_finishes_through_trio_when_the_buffer_fills() -> None:
    stream, peer = _pair()
    payload = bytes(range(256)) * 40_000  # ~10 MB: far more than the socket buffers hold
    received = bytearray()
    peer.setblocking(False)
    with peer:

        async def drain() -> None:
            while len(received) < len(payload):
                await trio.lowlevel.wait_readable(peer)
                received.extend(peer.recv(1 << 20))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await fastio.send_all(stream, payload)
        assert bytes(received) == payload
        await stream.aclose()


async def test_send_now_returns_zero_on_a_full_buffer() -> None:
    stream, peer = _pair()
    with peer:
        chunk = b"x" * 65536
        while fastio.send_now(stream, chunk):
            pass
        assert fastio.send_now(stream, b"more") == 0
        await stream.aclose()


async def test_a_gone_peer_is_a_broken_resource() -> None:
    stream, peer = _pair()
    peer.close()
    with pytest.raises(trio.BrokenResourceError):
        fastio.send_now(stream, b"x" * 65536)  # a unix socket whose peer closed: EPIPE
    await stream.aclose()


async def test_other_streams_always_go_through_trio() -> None:
    send, receive = trio.testing.memory_stream_pair()
    assert fastio.send_now(send, b"abc") == 0
    await fastio.send_all(send, b"abc")
    assert await fastio.FastReader(receive).receive_some(10) == b"abc"


async def test_reader_yields_at_least_every_fair_every_reads() -> None:
    stream, peer = _pair()
    with peer:
        peer.sendall(b"y" * (fastio.FAIR_EVERY * 4))
        reader = fastio.FastReader(stream)
        for _ in range(2):
            for _ in range(fastio.FAIR_EVERY):
                with trio.testing.assert_no_checkpoints():  # straight from the kernel
                    assert await reader.receive_some(1) == b"y"
            with trio.testing.assert_checkpoints():  # ...then one read lets others run
                assert await reader.receive_some(1) == b"y"
        await stream.aclose()


async def test_reader_sees_eof() -> None:
    stream, peer = _pair()
    peer.sendall(b"last")
    peer.close()
    reader = fastio.FastReader(stream)
    assert await reader.receive_some(100) == b"last"
    assert await reader.receive_some(100) == b""
    await stream.aclose()
