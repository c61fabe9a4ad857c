"""Byte-level building blocks of the negotiation messages (see docs/market.md).

Integers are unsigned big-endian; amounts and energies are u64 below 2**63 (so
that they fit SQLite's signed integers, like the log's). A reader that finds
missing or trailing bytes raises :class:`MessageError`; nothing here guesses.
"""

from __future__ import annotations

import struct
from typing import Final

from p2pgrid.market.errors import MessageError

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

MAX_U16: Final = 2**16 - 1
MAX_U32: Final = 2**32 - 1
MAX_U63: Final = 2**63 - 1
HASH_LEN: Final = 32
SITE_ID_LEN: Final = 8  # as in the net envelope: 8 bytes, 16 hex digits in Python


def check_uint(name: str, value: int, maximum: int) -> None:
    """Raise :class:`MessageError` unless ``0 <= value <= maximum`` (and an int)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise MessageError(f"{name} must be an integer in 0..{maximum}, got {value!r}")


class Writer:
    """Accumulates canonical bytes (values are checked by the message first)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> None:
        self._parts.append(_U8.pack(value))

    def u16(self, value: int) -> None:
        self._parts.append(_U16.pack(value))

    def u32(self, value: int) -> None:
        self._parts.append(_U32.pack(value))

    def u64(self, value: int) -> None:
        self._parts.append(_U64.pack(value))

    def raw(self, value: bytes) -> None:
        self._parts.append(value)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Consumes canonical bytes; every read checks that the bytes are there."""

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MessageError(f"a message is bytes, not {type(data).__name__}")
        self._data = bytes(data)
        self._pos = 0

    def _take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise MessageError(f"truncated: needs {end} bytes, has {len(self._data)}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        value: int = _U8.unpack(self._take(1))[0]
        return value

    def u16(self) -> int:
        value: int = _U16.unpack(self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self._take(4))[0]
        return value

    def u63(self) -> int:
        value: int = _U64.unpack(self._take(8))[0]
        if value > MAX_U63:
            raise MessageError(f"integer {value} exceeds 2**63-1")
        return value

    def raw(self, size: int) -> bytes:
        return self._take(size)

    def expect_end(self) -> None:
        left = len(self._data) - self._pos
        if left:
            raise MessageError(f"{left} trailing bytes")
