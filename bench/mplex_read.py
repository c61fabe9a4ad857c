"""Benchmark: the CPU of reading gossipsub RPCs from one mplex stream.

py-libp2p's pubsub reads each RPC as its varint length, one byte per read, then
its body, all from the one mplex frame the first read buffered. This reads
``--rpcs`` frames of ``--size`` bytes that way from py-libp2p 0.8.1's
``MplexStream`` and from p2pgrid's :class:`~p2pgrid.net.muxer.BufferedMplexStream`
(which answers reads its buffer holds without the stream's lock), in one
``trio.run``, and prints the CPU per RPC of each (best of ``--repeat``):

    .venv/bin/python bench/mplex_read.py --rpcs 20000 --size 300
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import trio
from libp2p.stream_muxer.mplex.datastructures import StreamID
from libp2p.stream_muxer.mplex.mplex_stream import MplexStream
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

from p2pgrid.net.muxer import BufferedMplexStream


async def cpu_per_rpc(kind: type[MplexStream], rpcs: int, size: int) -> float:
    send, receive = trio.open_memory_channel[bytes](1)  # py-libp2p's channel size
    muxed_conn: Any = None  # reads never touch the connection
    stream = kind("bench", StreamID(1, True), muxed_conn, receive)
    frame = encode_varint_prefixed(bytes(size))

    async def feed() -> None:
        async with send:
            for _ in range(rpcs):
                await send.send(frame)

    start = time.process_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        for _ in range(rpcs):
            body = await read_varint_prefixed_bytes_limited(stream, 1 << 20)
            assert len(body) == size
    return (time.process_time() - start) / rpcs


async def main(args: argparse.Namespace) -> None:
    for kind in (MplexStream, BufferedMplexStream):
        best = min([await cpu_per_rpc(kind, args.rpcs, args.size) for _ in range(args.repeat)])
        print(f"{kind.__name__:<22}{best * 1e6:8.1f} us of CPU per RPC read")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rpcs", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=300, help="bytes of each RPC")
    parser.add_argument("--repeat", type=int, default=5)
    trio.run(main, parser.parse_args())
