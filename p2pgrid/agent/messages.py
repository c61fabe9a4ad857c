"""The agents' payment handshake for a budget share (kinds 0x0310-0x031F).

After a requester accepted an offer (market ``ShareOffer``), it sends the giver
a :class:`ShareInvoice`: the request id, the granted amount and a BOLT11 invoice
of its own lnd for exactly that amount. The giver checks and pays it, records
the share in its log, and answers with a :class:`ShareReceipt` carrying the
payment preimage and its signed ``share`` log entry (which the requester ingests
at once instead of waiting for gossip).

Encoding (the shared :mod:`p2pgrid.codec`): version byte ``0x01``, then the
fields in order; ``hash32`` is 32 bytes, ``u64`` big-endian, ``bytes16`` a u16
length then that many bytes (at most ``MAX_FIELD_BYTES``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Self

from p2pgrid.market import MessageError
from p2pgrid.market.codec import Reader, Writer

VERSION: Final = 1
KIND_SHARE_INVOICE: Final = 0x0310
KIND_SHARE_RECEIPT: Final = 0x0311
KIND_SALE_OFFER: Final = 0x0312
MAX_FIELD_BYTES: Final = 4096


def _writer() -> Writer:
    w = Writer()
    w.u8(VERSION)
    return w


def _reader(data: bytes) -> Reader:
    r = Reader(data)
    if (version := r.u8()) != VERSION:
        raise MessageError(f"unknown version {version}")
    return r


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
        w = _writer()
        w.raw(self.request_id)
        w.u64(self.amount_msat)
        w.var16(self.bolt11.encode(), MAX_FIELD_BYTES)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = _reader(data)
        request_id, amount, bolt11 = r.hash32(), r.u64(), r.var16(MAX_FIELD_BYTES)
        r.expect_end()
        return cls(request_id, amount, _ascii(bolt11))


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
        w = _writer()
        w.raw(self.request_id)
        w.raw(self.preimage)
        w.var16(self.share_entry, MAX_FIELD_BYTES)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = _reader(data)
        request_id, preimage, entry = r.hash32(), r.hash32(), r.var16(MAX_FIELD_BYTES)
        r.expect_end()
        return cls(request_id, preimage, entry)


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
        w = _writer()
        w.raw(self.bid_id)
        w.u64(self.energy_wh)
        w.u64(self.amount_msat)
        w.var16(self.bolt11.encode(), MAX_FIELD_BYTES)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = _reader(data)
        bid_id, energy, amount = r.hash32(), r.u64(), r.u64()
        bolt11 = r.var16(MAX_FIELD_BYTES)
        r.expect_end()
        return cls(bid_id, energy, amount, _ascii(bolt11))
