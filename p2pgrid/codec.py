"""The one byte codec of p2pgrid's binary formats: a :class:`Writer` and a :class:`Reader`.

The log's entries and sync messages (:mod:`p2pgrid.ledger.codec`), the market's
messages (:mod:`p2pgrid.market.codec`) and the agents' payment handshake
(:mod:`p2pgrid.agent.messages`) are all written and read with these. Rules, the
same everywhere (docs/protocol-log.md, docs/market.md):

- integers are unsigned and big-endian; a ``u64`` on the wire holds a value
  below ``2**63`` (SQLite's integers are signed 64-bit);
- ``text`` and ``var16`` are a u16 length and that many bytes (UTF-8 for text),
  with a maximum the format names; ``blob`` has a u32 length;
- a reader that finds missing or trailing bytes, or a value out of range, raises
  the format's error class (:attr:`Writer.error`, :attr:`Reader.error`): a
  format subclasses these and sets its own. Nothing here guesses.
"""

from __future__ import annotations

import struct
from typing import ClassVar, Final

from p2pgrid.errors import ReportableError

U8: Final = struct.Struct(">B")
U16: Final = struct.Struct(">H")
U32: Final = struct.Struct(">I")
U64: Final = struct.Struct(">Q")
MAX_U16: Final = 2**16 - 1
MAX_U32: Final = 2**32 - 1
MAX_U63: Final = 2**63 - 1
HASH_LEN: Final = 32


class CodecError(ReportableError):
    """Bytes that do not follow the format (or a value the format cannot hold)."""


class Writer:
    """Accumulates canonical bytes; a value that does not fit raises :attr:`error`."""

    error: ClassVar[type[Exception]] = CodecError

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def _pack(self, fmt: struct.Struct, value: int) -> None:
        try:
            self._parts.append(fmt.pack(value))
        except struct.error as exc:
            raise self.error(f"{value!r} does not fit {fmt.format}") from exc

    def u8(self, value: int) -> None:
        self._pack(U8, value)

    def u16(self, value: int) -> None:
        self._pack(U16, value)

    def u32(self, value: int) -> None:
        self._pack(U32, value)

    def u64(self, value: int) -> None:
        if isinstance(value, int) and value > MAX_U63:
            raise self.error(f"integer {value} exceeds 2**63-1")
        self._pack(U64, value)

    def hash32(self, value: bytes) -> None:
        if len(value) != HASH_LEN:
            raise self.error(f"hash must be {HASH_LEN} bytes, got {len(value)}")
        self._parts.append(value)

    def var16(self, value: bytes, max_bytes: int) -> None:
        """A u16 length prefix and the bytes (at most ``max_bytes``)."""
        if len(value) > max_bytes:
            raise self.error(f"field of {len(value)} bytes exceeds {max_bytes}")
        self._parts.append(U16.pack(len(value)) + value)

    def text(self, value: str, max_bytes: int) -> None:
        """:meth:`var16` of the UTF-8 encoding."""
        data = value.encode("utf-8")
        if len(data) > max_bytes:
            raise self.error(f"text of {len(data)} bytes exceeds {max_bytes}")
        self.var16(data, max_bytes)

    def blob(self, value: bytes) -> None:
        """A u32 length prefix and the bytes."""
        self._parts.append(U32.pack(len(value)) + value)

    def raw(self, value: bytes) -> None:
        self._parts.append(value)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Consumes canonical bytes; every read checks that the bytes are there."""

    error: ClassVar[type[Exception]] = CodecError

    def __init__(self, data: bytes, offset: int = 0) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise self.error(f"a message is bytes, not {type(data).__name__}")
        self._data = bytes(data)
        self._pos = offset

    def _take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise self.error(f"truncated: needs {end} bytes, has {len(self._data)}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        value: int = U8.unpack(self._take(1))[0]
        return value

    def u16(self) -> int:
        value: int = U16.unpack(self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = U32.unpack(self._take(4))[0]
        return value

    def u64(self) -> int:
        """A u64 on the wire, which must be below ``2**63``."""
        value: int = U64.unpack(self._take(8))[0]
        if value > MAX_U63:
            raise self.error(f"integer {value} exceeds 2**63-1")
        return value

    def hash32(self) -> bytes:
        return self._take(HASH_LEN)

    def raw(self, size: int) -> bytes:
        return self._take(size)

    def var16(self, max_bytes: int) -> bytes:
        size = self.u16()
        if size > max_bytes:
            raise self.error(f"field of {size} bytes exceeds {max_bytes}")
        return self._take(size)

    def text(self, max_bytes: int) -> str:
        size = self.u16()
        if size > max_bytes:
            raise self.error(f"text of {size} bytes exceeds {max_bytes}")
        try:
            return self._take(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error("text is not UTF-8") from exc

    def blob(self, max_size: int) -> bytes:
        """A u32 length prefix and at most ``max_size`` bytes."""
        size = self.u32()
        if size > max_size:
            raise self.error(f"blob of {size} bytes exceeds {max_size}")
        return self._take(size)

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def expect_end(self) -> None:
        if self.remaining:
            raise self.error(f"{self.remaining} trailing bytes")
