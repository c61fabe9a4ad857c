"""The negotiation messages' encoding (see docs/market.md) on the shared byte codec.

:class:`Writer` and :class:`Reader` are :mod:`p2pgrid.codec`'s, raising
:class:`MessageError`. Integers are unsigned big-endian; amounts and energies
are u64 below 2**63 (so that they fit SQLite's signed integers, like the log's).
A reader that finds missing or trailing bytes raises :class:`MessageError`;
nothing here guesses.
"""

from __future__ import annotations

from typing import Final

from p2pgrid import codec
from p2pgrid.codec import HASH_LEN, MAX_U16, MAX_U32, MAX_U63
from p2pgrid.market.errors import MessageError

__all__ = [
    "HASH_LEN",
    "MAX_U16",
    "MAX_U32",
    "MAX_U63",
    "SITE_ID_LEN",
    "Reader",
    "Writer",
    "check_uint",
]

SITE_ID_LEN: Final = 8  # as in the net envelope: 8 bytes, 16 hex digits in Python


def check_uint(name: str, value: int, maximum: int) -> None:
    """Raise :class:`MessageError` unless ``0 <= value <= maximum`` (and an int)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise MessageError(f"{name} must be an integer in 0..{maximum}, got {value!r}")


class Writer(codec.Writer):
    """The shared writer for market messages (values are checked by the message first)."""

    error = MessageError


class Reader(codec.Reader):
    """The shared reader for market messages: raises :class:`MessageError`."""

    error = MessageError
