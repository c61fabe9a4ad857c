"""The mplex streams of p2pgrid's hosts (p2pgrid.net.muxer): a read that the
stream's buffer holds returns at once, every other read as py-libp2p's does."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from libp2p.stream_muxer.mplex.datastructures import StreamID
from libp2p.stream_muxer.mplex.exceptions import MplexStreamReset

from p2pgrid.net import TrioBridge
from p2pgrid.net.muxer import BufferedMplexStream


def _stream() -> tuple[trio.MemorySendChannel[bytes], BufferedMplexStream]:
    send, receive = trio.open_memory_channel[bytes](8)
    muxed_conn: Any = None  # reads never touch the connection
    return send, BufferedMplexStream("s", StreamID(1, True), muxed_conn, receive)


async def test_a_frame_is_read_in_pieces_in_order(bridge: TrioBridge) -> None:
    async def scenario() -> list[bytes]:
        send, stream = _stream()
        await send.send(b"\x05hello")  # one mplex frame: a varint length and a body
        await send.send(b"\x03abc")
        return [
            await stream.read(1),
            await stream.read(5),
            await stream.read(1),
            await stream.read(10),  # more than is buffered: the locked path
        ]

    assert await bridge.run(scenario) == [b"\x05", b"hello", b"\x03", b"abc"]


async def test_a_buffered_read_does_not_wait_for_the_streams_lock(bridge: TrioBridge) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        send, stream = _stream()
        await send.send(b"\x02ok")
        first = await stream.read(1)
        await stream.rw_lock.acquire_write()  # a writer holds the stream
        with trio.fail_after(5):
            rest = await stream.read(2)
        stream.rw_lock.release_write()
        return first, rest

    assert await bridge.run(scenario) == (b"\x02", b"ok")


async def test_buffered_bytes_are_read_after_a_reset_then_the_reset_is_raised(
    bridge: TrioBridge,
) -> None:
    async def scenario() -> bytes:
        send, stream = _stream()
        await send.send(b"\x02ok")
        assert await stream.read(1) == b"\x02"
        stream.event_reset.set()
        await send.aclose()
        rest = await stream.read(2)
        with pytest.raises(MplexStreamReset):
            await stream.read(1)
        return rest

    assert await bridge.run(scenario) == b"ok"
