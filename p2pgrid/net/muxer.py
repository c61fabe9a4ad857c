"""The stream multiplexers a host offers, with a work-around for py-libp2p 0.8.1's mplex.

Seen with 50 agent processes on two cores (``bench/net_latency.py --agents 50``):
a host died with ``noise.exceptions.NoiseInvalidMessage: Failed authentication
of message`` raised from mplex's read loop. Two py-libp2p defects meet there:

- mplex writes to the Noise session with no lock of its own; the session
  encrypts (taking the next nonce) *before* the TCP stream's write lock, so two
  concurrent writers can put frames on the wire out of nonce order, and the
  peer cannot decrypt them;
- mplex's read loop turns only I/O errors into a closed connection; any other
  error (an undecryptable frame) escapes and takes the whole host down.

:class:`SafeMplex` serialises each connection's writes (encrypt and send as one
step) and treats an undecryptable frame as that connection's end: the peer is
disconnected and redialled, the host lives on.

Its streams (:class:`BufferedMplexStream`) also answer a read that their buffer
already holds at once. py-libp2p 0.8.1 takes a stream's read-write lock for
every read (two trio locks in, a shielded cancel scope and a lock again out),
and its readers ask for a few bytes at a time: a gossipsub RPC is read as its
varint length one byte per read, then its body, all from the one mplex frame
that the first read buffered. Profiled in ``bench/settlement.py`` (eleven
members in one process), that lock was ~10 % of the process's CPU. A read the
buffer holds returns what the locked path returns (the first ``n`` buffered
bytes, even after a reset, as py-libp2p does); every other read takes that path.
"""

from __future__ import annotations

from typing import Any, Literal

import trio
from libp2p.custom_types import TMuxerOptions, TProtocol
from libp2p.stream_muxer.mplex.datastructures import StreamID
from libp2p.stream_muxer.mplex.exceptions import MplexUnavailable
from libp2p.stream_muxer.mplex.mplex import MPLEX_MESSAGE_CHANNEL_SIZE, MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.mplex.mplex_stream import MplexStream
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from noise.exceptions import NoiseInvalidMessage  # type: ignore[import-untyped]


class BufferedMplexStream(MplexStream):
    """An mplex stream whose reads of bytes already buffered take no lock."""

    async def read(self, n: int | None = None) -> bytes:
        if n is not None and 0 < n <= len(self._buf):
            payload = bytes(self._buf[:n])
            del self._buf[:n]
            return payload
        return await super().read(n)


class SafeMplex(Mplex):
    """Mplex whose writes are serialised, whose bad frames close one connection and
    whose streams read buffered bytes without a lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_lock = trio.Lock()

    async def write_to_stream(self, _bytes: bytes) -> None:
        async with self._write_lock:
            await super().write_to_stream(_bytes)

    async def _initialize_stream(self, stream_id: StreamID, name: str) -> MplexStream:
        # py-libp2p 0.8.1's Mplex._initialize_stream, with the stream class replaced.
        send_channel, receive_channel = trio.open_memory_channel[bytes](MPLEX_MESSAGE_CHANNEL_SIZE)
        stream = BufferedMplexStream(name, stream_id, self, receive_channel)
        async with self.streams_lock:
            self.streams[stream_id] = stream
            self.streams_msg_channels[stream_id] = send_channel
        return stream

    async def read_message(self) -> tuple[int, int, bytes]:
        try:
            return await super().read_message()
        except NoiseInvalidMessage as exc:
            raise MplexUnavailable(f"undecryptable frame, closing the connection: {exc}") from exc


def muxer_options(first: Literal["mplex", "yamux"]) -> TMuxerOptions:
    """Both multiplexers, ``first`` preferred (the dialer's order decides)."""
    mplex = (TProtocol(MPLEX_PROTOCOL_ID), SafeMplex)
    yamux = (TProtocol(YAMUX_PROTOCOL_ID), Yamux)
    return dict([mplex, yamux] if first == "mplex" else [yamux, mplex])
