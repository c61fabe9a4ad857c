"""The agents' payment handshake for a budget share (kinds 0x0310-0x031F).

After a requester accepted an offer (market ``ShareOffer``), it sends the giver
a :class:`ShareInvoice`: the request id, the granted amount and a BOLT11 invoice
of its own lnd for exactly that amount. The giver checks and pays it, records
the share in its log, and answers with a :class:`ShareReceipt` carrying the
payment preimage and its signed ``share`` log entry (which the requester ingests
at once instead of waiting for gossip).

Encoding: version byte ``0x01``, then the fields in order; ``hash32`` is 32
bytes, ``u64`` big-endian, ``bytes16`` a u16 length then that many bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Final, Self

from p2pgrid.market import MessageError

VERSION: Final = 1
KIND_SHARE_INVOICE: Final = 0x0310
KIND_SHARE_RECEIPT: Final = 0x0311
KIND_SALE_OFFER: Final = 0x0312
MAX_FIELD_BYTES: Final = 4096


def _pack_bytes(data: bytes) -> bytes:
    if len(data) > MAX_FIELD_BYTES:
        raise MessageError(f"field of {len(data)} bytes exceeds {MAX_FIELD_BYTES}")
    return struct.pack(">H", len(data)) + data


def _unpack(data: bytes, n_fixed: int, n_var: int) -> tuple[bytes, list[bytes]]:
    """Split ``version || fixed || var...`` strictly; raises on any deviation."""
    if len(data) < 1 + n_fixed or data[0] != VERSION:
        raise MessageError("truncated message or unknown version")
    fixed, pos, out = data[1 : 1 + n_fixed], 1 + n_fixed, []
    for _ in range(n_var):
        if pos + 2 > len(data):
            raise MessageError("truncated message")
        (length,) = struct.unpack_from(">H", data, pos)
        if length > MAX_FIELD_BYTES or pos + 2 + length > len(data):
            raise MessageError("field length out of range")
        out.append(data[pos + 2 : pos + 2 + length])
        pos += 2 + length
    if pos != len(data):
        raise MessageError("trailing bytes")
    return fixed, out


def _ascii(bolt11: bytes) -> str:
    try:
        return bolt11.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MessageError("bolt11 is not ASCII") from exc


@dataclass(frozen=True, slots=True)
class ShareInvoice:
    KIND: ClassVar[int] = KIND_SHARE_INVOICE
    request_id: bytes
    amount_msat: int
    bolt11: str

    def __post_init__(self) -> None:
        if len(self.request_id) != 32 or not 0 < self.amount_msat < 2**63:
            raise MessageError("request_id is 32 bytes and amount_msat within 1..2^63-1")

    def encode(self) -> bytes:
        head = bytes([VERSION]) + self.request_id + struct.pack(">Q", self.amount_msat)
        return head + _pack_bytes(self.bolt11.encode())

    @classmethod
    def decode(cls, data: bytes) -> Self:
        fixed, (bolt11,) = _unpack(data, 40, 1)
        return cls(fixed[:32], struct.unpack(">Q", fixed[32:])[0], _ascii(bolt11))


@dataclass(frozen=True, slots=True)
class ShareReceipt:
    KIND: ClassVar[int] = KIND_SHARE_RECEIPT
    request_id: bytes
    preimage: bytes
    share_entry: bytes  # the giver's signed ``share`` log entry

    def __post_init__(self) -> None:
        if len(self.request_id) != 32 or len(self.preimage) != 32:
            raise MessageError("request_id and preimage are 32 bytes")

    def encode(self) -> bytes:
        return bytes([VERSION]) + self.request_id + self.preimage + _pack_bytes(self.share_entry)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        fixed, (entry,) = _unpack(data, 64, 1)
        return cls(fixed[:32], fixed[32:], entry)


@dataclass(frozen=True, slots=True)
class SaleOffer:
    """A producer's answer to a ``Bid``: ``energy_wh`` for ``amount_msat`` (the
    cleared trade), payable with ``bolt11`` (an invoice of the seller's lnd)."""

    KIND: ClassVar[int] = KIND_SALE_OFFER
    bid_id: bytes
    energy_wh: int
    amount_msat: int
    bolt11: str

    def __post_init__(self) -> None:
        if len(self.bid_id) != 32 or not 0 < self.energy_wh < 2**63:
            raise MessageError("bid_id is 32 bytes and energy_wh within 1..2^63-1")
        if not 0 < self.amount_msat < 2**63:
            raise MessageError("amount_msat within 1..2^63-1")

    def encode(self) -> bytes:
        head = bytes([VERSION]) + self.bid_id + struct.pack(">QQ", self.energy_wh, self.amount_msat)
        return head + _pack_bytes(self.bolt11.encode())

    @classmethod
    def decode(cls, data: bytes) -> Self:
        fixed, (bolt11,) = _unpack(data, 48, 1)
        energy, amount = struct.unpack(">QQ", fixed[32:])
        return cls(fixed[:32], energy, amount, _ascii(bolt11))
