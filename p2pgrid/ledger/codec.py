"""The log's canonical encoding (see docs/protocol-log.md) on the shared byte codec.

:class:`Writer` and :class:`Reader` are :mod:`p2pgrid.codec`'s, raising
:class:`MalformedError`, with the log's text limit and the body field types
(:class:`FieldType`). All integers are unsigned and big-endian. A reader that
finds trailing or missing bytes raises :class:`MalformedError`; nothing here guesses.
"""

from __future__ import annotations

import enum

from p2pgrid import codec
from p2pgrid.codec import HASH_LEN, MAX_U32, MAX_U63, U16
from p2pgrid.ledger.errors import MalformedError

__all__ = [
    "HASH_LEN",
    "MAX_BYTES_FIELD",
    "MAX_TEXT_BYTES",
    "MAX_U32",
    "MAX_U63",
    "U16",
    "FieldType",
    "Reader",
    "Writer",
]

MAX_TEXT_BYTES = 1024
#: The longest ``bytes`` field (version 4): a signed entry of another site as evidence.
MAX_BYTES_FIELD = 2048
PUBKEY_LEN = 33


class FieldType(enum.Enum):
    """The type of one field of a body, which fixes its encoding."""

    U8 = "u8"
    U32 = "u32"
    U64 = "u64"  # value < 2**63
    HASH = "hash32"  # exactly 32 bytes
    TEXT = "text"  # u16 length + UTF-8, at most MAX_TEXT_BYTES
    PUBKEY = "pubkey33"  # exactly 33 bytes (a compressed secp256k1 key)
    BYTES = "bytes"  # u16 length + raw bytes, at most MAX_BYTES_FIELD


class Writer(codec.Writer):
    """The shared writer for log bytes: raises :class:`MalformedError`."""

    error = MalformedError

    def text(self, value: str, max_bytes: int = MAX_TEXT_BYTES) -> None:
        super().text(value, max_bytes)

    def field(self, kind: FieldType, value: object) -> None:
        if kind is FieldType.TEXT:
            if not isinstance(value, str):
                raise MalformedError("text field needs a str")
            self.text(value)
        elif kind is FieldType.HASH:
            if not isinstance(value, bytes):
                raise MalformedError("hash field needs bytes")
            self.hash32(value)
        elif kind is FieldType.PUBKEY:
            if not isinstance(value, bytes) or len(value) != PUBKEY_LEN:
                raise MalformedError(f"pubkey field needs {PUBKEY_LEN} bytes")
            self.raw(value)
        elif kind is FieldType.BYTES:
            if not isinstance(value, bytes):
                raise MalformedError("bytes field needs bytes")
            self.var16(value, MAX_BYTES_FIELD)
        else:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise MalformedError(f"{kind.value} field needs a non-negative int")
            {FieldType.U8: self.u8, FieldType.U32: self.u32, FieldType.U64: self.u64}[kind](value)


class Reader(codec.Reader):
    """The shared reader for log bytes: raises :class:`MalformedError`."""

    error = MalformedError

    def text(self, max_bytes: int = MAX_TEXT_BYTES) -> str:
        return super().text(max_bytes)

    def field(self, kind: FieldType) -> int | bytes | str:
        if kind is FieldType.U8:
            return self.u8()
        if kind is FieldType.U32:
            return self.u32()
        if kind is FieldType.U64:
            return self.u64()
        if kind is FieldType.HASH:
            return self.hash32()
        if kind is FieldType.PUBKEY:
            return self.raw(PUBKEY_LEN)
        if kind is FieldType.BYTES:
            return self.var16(MAX_BYTES_FIELD)
        return self.text()
