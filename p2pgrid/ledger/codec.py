"""Byte-level building blocks of the canonical encoding (see docs/protocol-log.md).

All integers are unsigned and big-endian. Variable-length fields carry a 2-byte
length prefix. A reader that finds trailing or missing bytes raises
:class:`MalformedError`; nothing here guesses.
"""

from __future__ import annotations

import enum
import struct

from p2pgrid.ledger.errors import MalformedError

U8 = struct.Struct(">B")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
MAX_U32 = 2**32 - 1
# SQLite integers are signed 64-bit, so sequence numbers, timestamps and amounts
# are u64 on the wire but must stay below 2**63.
MAX_U63 = 2**63 - 1
MAX_TEXT_BYTES = 1024
HASH_LEN = 32


class FieldType(enum.Enum):
    """The type of one field of a body, which fixes its encoding."""

    U8 = "u8"
    U32 = "u32"
    U64 = "u64"  # value < 2**63
    HASH = "hash32"  # exactly 32 bytes
    TEXT = "text"  # u16 length + UTF-8, at most MAX_TEXT_BYTES


class Writer:
    """Accumulates canonical bytes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> None:
        self._parts.append(U8.pack(value))

    def u32(self, value: int) -> None:
        self._parts.append(U32.pack(value))

    def u64(self, value: int) -> None:
        if value > MAX_U63:
            raise MalformedError(f"integer {value} exceeds 2**63-1")
        self._parts.append(U64.pack(value))

    def hash32(self, value: bytes) -> None:
        if len(value) != HASH_LEN:
            raise MalformedError(f"hash must be {HASH_LEN} bytes, got {len(value)}")
        self._parts.append(value)

    def text(self, value: str) -> None:
        data = value.encode("utf-8")
        if len(data) > MAX_TEXT_BYTES:
            raise MalformedError(f"text of {len(data)} bytes exceeds {MAX_TEXT_BYTES}")
        self._parts.append(U16.pack(len(data)) + data)

    def blob(self, value: bytes) -> None:
        """A u32 length prefix and the bytes (used by sync messages)."""
        self._parts.append(U32.pack(len(value)) + value)

    def raw(self, value: bytes) -> None:
        self._parts.append(value)

    def field(self, kind: FieldType, value: object) -> None:
        if kind is FieldType.TEXT:
            if not isinstance(value, str):
                raise MalformedError("text field needs a str")
            self.text(value)
        elif kind is FieldType.HASH:
            if not isinstance(value, bytes):
                raise MalformedError("hash field needs bytes")
            self.hash32(value)
        else:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise MalformedError(f"{kind.value} field needs a non-negative int")
            try:
                {FieldType.U8: self.u8, FieldType.U32: self.u32, FieldType.U64: self.u64}[kind](
                    value
                )
            except struct.error as exc:
                raise MalformedError(f"{value} does not fit {kind.value}") from exc

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Consumes canonical bytes; every read checks that the bytes are there."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self._data = data
        self._pos = offset

    def _take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise MalformedError("truncated")
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
        value: int = U64.unpack(self._take(8))[0]
        if value > MAX_U63:
            raise MalformedError(f"integer {value} exceeds 2**63-1")
        return value

    def hash32(self) -> bytes:
        return self._take(HASH_LEN)

    def text(self) -> str:
        size: int = U16.unpack(self._take(2))[0]
        if size > MAX_TEXT_BYTES:
            raise MalformedError(f"text of {size} bytes exceeds {MAX_TEXT_BYTES}")
        try:
            return self._take(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError("text is not UTF-8") from exc

    def blob(self, max_size: int) -> bytes:
        size = self.u32()
        if size > max_size:
            raise MalformedError(f"blob of {size} bytes exceeds {max_size}")
        return self._take(size)

    def field(self, kind: FieldType) -> int | bytes | str:
        if kind is FieldType.U8:
            return self.u8()
        if kind is FieldType.U32:
            return self.u32()
        if kind is FieldType.U64:
            return self.u64()
        if kind is FieldType.HASH:
            return self.hash32()
        return self.text()

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def expect_end(self) -> None:
        if self.remaining:
            raise MalformedError(f"{self.remaining} trailing bytes")
