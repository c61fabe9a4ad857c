"""Framing on direct streams, and the hello announcement's payload (trio side).

A frame is a 4-byte big-endian length followed by that many bytes (one
envelope). The hello payload is a list of the sender's listen multiaddrs and a
list of peers it knows (multiaddrs ending in ``/p2p/<peer id>``), each list a
``u8`` count of ``u16``-length-prefixed UTF-8 strings.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass
from typing import Protocol

from libp2p.exceptions import BaseLibp2pError

from p2pgrid.net.errors import FrameError

#: What a peer that vanished mid-stream raises inside py-libp2p.
PEER_ERRORS: tuple[type[BaseException], ...] = (BaseLibp2pError, OSError, EOFError)

_LEN = struct.Struct(">I")
#: Most addresses in each list of a hello; decoders refuse more, encoders send no more.
MAX_HELLO_ADDRS = 64
#: Longest address string in a hello (a multiaddr with a peer id is ~100 bytes).
MAX_HELLO_ADDR_BYTES = 512


class _Stream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


#: A peer that vanished, or one that sent a bad frame: the stream is done.
STREAM_ERRORS: tuple[type[BaseException], ...] = (*PEER_ERRORS, FrameError)


class _Closable(Protocol):
    async def close(self) -> None: ...


async def close_stream(stream: _Closable) -> None:
    """Close our end of a stream; a peer that is already gone is not an error.

    py-libp2p 0.8.1's mplex raises ``RuntimeError("Failed to send close message
    and Mplex isn't shutting down")`` when the connection died under the stream;
    uncaught, it would take the whole host down.
    """
    with contextlib.suppress(*PEER_ERRORS, RuntimeError):
        await stream.close()


async def write_frame(stream: _Stream, data: bytes) -> None:
    await stream.write(_LEN.pack(len(data)) + data)


async def _read_exactly(stream: _Stream, n: int) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    while remaining:
        chunk = await stream.read(remaining)
        if not chunk:
            raise FrameError(f"stream ended {remaining} bytes short of a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


async def read_frame(stream: _Stream, max_bytes: int) -> bytes:
    (length,) = _LEN.unpack(await _read_exactly(stream, _LEN.size))
    if length > max_bytes:
        raise FrameError(f"frame of {length} bytes exceeds {max_bytes}")
    return await _read_exactly(stream, length)


@dataclass(frozen=True)
class Hello:
    """A device's signed announcement: where it listens and whom it knows."""

    listen_addrs: tuple[str, ...]
    known_peers: tuple[str, ...]

    def encode(self) -> bytes:
        """At most :data:`MAX_HELLO_ADDRS` of each list are sent (the rest is dropped)."""
        return _encode_strings(self.listen_addrs) + _encode_strings(self.known_peers)

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        listen, offset = _decode_strings(data, 0)
        known, offset = _decode_strings(data, offset)
        if offset != len(data):
            raise FrameError("trailing bytes after hello")
        return cls(listen, known)


def _encode_strings(items: tuple[str, ...]) -> bytes:
    items = tuple(i for i in items if len(i.encode()) <= MAX_HELLO_ADDR_BYTES)[:MAX_HELLO_ADDRS]
    parts = [bytes([len(items)])]
    for item in items:
        raw = item.encode()
        parts.append(struct.pack(">H", len(raw)) + raw)
    return b"".join(parts)


def _decode_strings(data: bytes, offset: int) -> tuple[tuple[str, ...], int]:
    try:
        count = data[offset]
        offset += 1
        if count > MAX_HELLO_ADDRS:
            raise FrameError(f"hello lists {count} addresses, at most {MAX_HELLO_ADDRS}")
        items = []
        for _ in range(count):
            (length,) = struct.unpack_from(">H", data, offset)
            offset += 2
            raw = data[offset : offset + length]
            if len(raw) != length:
                raise FrameError("truncated hello string")
            if length > MAX_HELLO_ADDR_BYTES:
                raise FrameError(f"hello address of {length} bytes, at most {MAX_HELLO_ADDR_BYTES}")
            items.append(raw.decode())
            offset += length
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise FrameError(f"malformed hello: {exc}") from exc
    return tuple(items), offset
