"""The agents' payment handshakes (kinds 0x0310-0x031F): a budget share, a sale.

After a requester accepted an offer (market ``ShareOffer``), it sends the giver
a :class:`ShareInvoice`: the request id, the granted amount and a BOLT11 invoice
of its own lnd for exactly that amount. The giver checks and pays it, records
the share in its log, and answers with a :class:`ShareReceipt` carrying the
payment preimage and its signed ``share`` log entry (which the requester ingests
at once instead of waiting for gossip).

After a round of the pooled auction closed, a buyer sends each seller it has a
trade with a :class:`TradeRequest` naming the round and the book it cleared
(the devices whose ``order`` entries it used, and their book id); the seller
recomputes that clearing from its own log and answers a :class:`SaleOffer`
whose ``bid_id`` is the book id, with an invoice for exactly the trade.

Between sites (docs/market.md, section 6.3): a buyer asks a producer of a
neighbouring site for energy of a round with a :class:`SiteTradeRequest`; the
producer answers a :class:`SiteSaleOffer` carrying its signed ``order`` entry
(the ask) and an invoice; once paid, the buyer hands it a
:class:`SiteSaleReceipt` with its signed ``site_sale`` entry, and the producer
answers one with its own.

Near the end of a period a device short of allowance sends its site peers an
:class:`AllowanceRequest`; a peer that sells leftover allowance answers an
:class:`AllowanceOffer` with an invoice of its lnd for the price; the buyer
pays it and sends the preimage in an :class:`AllowancePaid`; the seller logs
its ``allowance_sale`` and answers an :class:`AllowanceReceipt` holding that
signed entry (docs/market.md, section 2.9).

Encoding (the shared :mod:`p2pgrid.codec`): version byte ``0x01``, then the
fields in order; ``hash32`` is 32 bytes, ``u64`` big-endian, ``bytes16`` a u16
length then that many bytes (at most ``MAX_FIELD_BYTES``).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import ClassVar, Final, Self

from p2pgrid.market import MessageError, Party
from p2pgrid.market.codec import Reader, Writer

VERSION: Final = 1
KIND_SHARE_INVOICE: Final = 0x0310
KIND_SHARE_RECEIPT: Final = 0x0311
KIND_SALE_OFFER: Final = 0x0312
KIND_TRADE_REQUEST: Final = 0x0313
KIND_SITE_TRADE_REQUEST: Final = 0x0314
KIND_SITE_SALE_OFFER: Final = 0x0315
KIND_SITE_SALE_RECEIPT: Final = 0x0316
KIND_ALLOWANCE_REQUEST: Final = 0x0318
KIND_ALLOWANCE_OFFER: Final = 0x0319
KIND_ALLOWANCE_PAID: Final = 0x031A
KIND_ALLOWANCE_RECEIPT: Final = 0x031B
#: The devices a book may list (a TradeRequest's count is a u16).
MAX_BOOK_DEVICES: Final = 1024
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
    """A seller's answer to a :class:`TradeRequest`: ``energy_wh`` for
    ``amount_msat`` (the cleared trade), payable with ``bolt11`` (an invoice of
    the seller's lnd); ``bid_id`` is the book id of the round's clearing."""

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


@dataclass(frozen=True, slots=True)
class TradeRequest:
    """A buyer asks a seller to invoice its trade of round (``period``,
    ``interval``) as cleared from the ``order`` entries of ``devices``
    (ascending), whose book id is ``book_id``.

    Layout: ``version u8, period u32, interval u32, book_id hash32, count u16,
    count x device u32``."""

    KIND: ClassVar[int] = KIND_TRADE_REQUEST
    period: int
    interval: int
    book_id: bytes
    devices: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.book_id) != 32 or not 0 <= self.period < 2**32:
            raise MessageError("book_id is 32 bytes and period a u32")
        if not 0 <= self.interval < 2**32:
            raise MessageError("interval is a u32")
        if not 1 <= len(self.devices) <= MAX_BOOK_DEVICES:
            raise MessageError(f"a book lists 1..{MAX_BOOK_DEVICES} devices")
        if any(not 0 <= d < 2**32 for d in self.devices) or any(
            a >= b for a, b in itertools.pairwise(self.devices)
        ):
            raise MessageError("a book's devices are u32s, strictly ascending")

    def encode(self) -> bytes:
        w = _writer()
        w.u32(self.period)
        w.u32(self.interval)
        w.raw(self.book_id)
        w.u16(len(self.devices))
        for device in self.devices:
            w.u32(device)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = _reader(data)
        period, interval, book = r.u32(), r.u32(), r.hash32()
        count = r.u16()
        if count > MAX_BOOK_DEVICES:
            raise MessageError(f"{count} devices exceed {MAX_BOOK_DEVICES}")
        devices = tuple(r.u32() for _ in range(count))
        r.expect_end()
        return cls(period, interval, book, devices)


@dataclass(frozen=True, slots=True)
class SiteTradeRequest:
    """A buyer of another site asks a producer for at most ``energy_wh`` of its
    ask of round (``period``, ``interval``).
    Layout: ``version u8, period u32, interval u32, energy_wh u64``."""

    KIND: ClassVar[int] = KIND_SITE_TRADE_REQUEST
    period: int
    interval: int
    energy_wh: int

    def __post_init__(self) -> None:
        if not 0 <= self.period < 2**32 or not 0 <= self.interval < 2**32:
            raise MessageError("period and interval are u32s")
        if not 0 < self.energy_wh < 2**63:
            raise MessageError("energy_wh within 1..2^63-1")

    def encode(self) -> bytes:
        w = _writer()
        w.u32(self.period)
        w.u32(self.interval)
        w.u64(self.energy_wh)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = _reader(data)
        period, interval, energy = r.u32(), r.u32(), r.u64()
        r.expect_end()
        return cls(period, interval, energy)


@dataclass(frozen=True, slots=True)
class SiteSaleOffer:
    """A producer's answer to a :class:`SiteTradeRequest`: ``energy_wh`` of the
    ask in ``order_entry`` (its signed ``order`` log entry) for ``amount_msat``,
    payable with ``bolt11``.
    Layout: ``version u8, order_entry bytes16, energy_wh u64, amount_msat u64,
    bolt11 bytes16``."""

    KIND: ClassVar[int] = KIND_SITE_SALE_OFFER
    order_entry: bytes
    energy_wh: int
    amount_msat: int
    bolt11: str

    def __post_init__(self) -> None:
        if not 0 < self.energy_wh < 2**63 or not 0 < self.amount_msat < 2**63:
            raise MessageError("energy_wh and amount_msat within 1..2^63-1")

    def encode(self) -> bytes:
        w = _writer()
        w.var16(self.order_entry, MAX_FIELD_BYTES)
        w.u64(self.energy_wh)
        w.u64(self.amount_msat)
        w.var16(self.bolt11.encode(), MAX_FIELD_BYTES)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = _reader(data)
        order = r.var16(MAX_FIELD_BYTES)
        energy, amount = r.u64(), r.u64()
        bolt11 = r.var16(MAX_FIELD_BYTES)
        r.expect_end()
        return cls(order, energy, amount, _ascii(bolt11))


@dataclass(frozen=True, slots=True)
class SiteSaleReceipt:
    """A signed ``site_sale`` log entry handed to the other side of the trade:
    the buyer's (side BOUGHT) after it paid, the producer's (side SOLD) in answer.
    Layout: ``version u8, entry bytes16``."""

    KIND: ClassVar[int] = KIND_SITE_SALE_RECEIPT
    entry: bytes

    def encode(self) -> bytes:
        w = _writer()
        w.var16(self.entry, MAX_FIELD_BYTES)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = _reader(data)
        entry = r.var16(MAX_FIELD_BYTES)
        r.expect_end()
        return cls(entry)


def _amount(name: str, value: int) -> None:
    if not isinstance(value, int) or not 0 < value < 2**63:
        raise MessageError(f"{name} within 1..2^63-1")


def _pct(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or not low <= value <= 100:
        raise MessageError(f"{name} within {low}..100")


@dataclass(frozen=True, slots=True)
class AllowanceRequest:
    """``buyer`` forecasts a shortfall of ``amount_msat`` in ``period`` and buys
    allowance at up to ``max_price_pct`` of its face value; offers are welcome
    until ``deadline_ms`` (wall time). Its :attr:`id` names the request.

    Layout: ``version u8, buyer party (site_id 8s, device u32), period u32,
    amount_msat u63, max_price_pct u8, deadline_ms u63``."""

    KIND: ClassVar[int] = KIND_ALLOWANCE_REQUEST
    buyer: Party
    period: int
    amount_msat: int
    max_price_pct: int
    deadline_ms: int

    def __post_init__(self) -> None:
        if not 0 <= self.period < 2**32 or not 0 <= self.deadline_ms < 2**63:
            raise MessageError("period is a u32 and deadline_ms a u63")
        _amount("amount_msat", self.amount_msat)
        _pct("max_price_pct", self.max_price_pct, 0)

    def encode(self) -> bytes:
        w = _writer()
        w.raw(bytes.fromhex(self.buyer.site_id))
        w.u32(self.buyer.device)
        w.u32(self.period)
        w.u64(self.amount_msat)
        w.u8(self.max_price_pct)
        w.u64(self.deadline_ms)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = _reader(data)
        buyer = Party(r.raw(8).hex(), r.u32())
        period, amount, pct, deadline = r.u32(), r.u64(), r.u8(), r.u64()
        r.expect_end()
        return cls(buyer, period, amount, pct, deadline)

    @property
    def id(self) -> bytes:
        """SHA-256 of the kind (u16) and the encoded bytes."""
        return hashlib.sha256(self.KIND.to_bytes(2, "big") + self.encode()).digest()


@dataclass(frozen=True, slots=True)
class AllowanceOffer:
    """``seller`` sells ``allowance_msat`` of its allowance to the request
    ``request_id`` at ``price_pct`` of face value, ``price_msat``
    (``ceil(allowance x price_pct / 100)``), payable with ``bolt11``.

    Layout: ``version u8, request_id hash32, seller party, allowance_msat u63,
    price_pct u8, price_msat u63, bolt11 var16``."""

    KIND: ClassVar[int] = KIND_ALLOWANCE_OFFER
    request_id: bytes
    seller: Party
    allowance_msat: int
    price_pct: int
    price_msat: int
    bolt11: str

    def __post_init__(self) -> None:
        if len(self.request_id) != 32:
            raise MessageError("request_id is 32 bytes")
        _amount("allowance_msat", self.allowance_msat)
        _amount("price_msat", self.price_msat)
        _pct("price_pct", self.price_pct, 1)

    def encode(self) -> bytes:
        w = _writer()
        w.raw(self.request_id)
        w.raw(bytes.fromhex(self.seller.site_id))
        w.u32(self.seller.device)
        w.u64(self.allowance_msat)
        w.u8(self.price_pct)
        w.u64(self.price_msat)
        w.var16(self.bolt11.encode(), MAX_FIELD_BYTES)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = _reader(data)
        request_id = r.hash32()
        seller = Party(r.raw(8).hex(), r.u32())
        allowance, pct, price = r.u64(), r.u8(), r.u64()
        bolt11 = r.var16(MAX_FIELD_BYTES)
        r.expect_end()
        return cls(request_id, seller, allowance, pct, price, _ascii(bolt11))


@dataclass(frozen=True, slots=True)
class AllowancePaid:
    """The buyer paid the offer of ``request_id``: ``preimage`` is lnd's proof.

    Layout: ``version u8, request_id hash32, preimage hash32``."""

    KIND: ClassVar[int] = KIND_ALLOWANCE_PAID
    request_id: bytes
    preimage: bytes

    def __post_init__(self) -> None:
        if len(self.request_id) != 32 or len(self.preimage) != 32:
            raise MessageError("request_id and preimage are 32 bytes")

    def encode(self) -> bytes:
        w = _writer()
        w.raw(self.request_id)
        w.raw(self.preimage)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = _reader(data)
        request_id, preimage = r.hash32(), r.hash32()
        r.expect_end()
        return cls(request_id, preimage)


@dataclass(frozen=True, slots=True)
class AllowanceReceipt:
    """The seller's signed ``allowance_sale`` entry of the request ``request_id``.

    Layout: ``version u8, request_id hash32, entry var16``."""

    KIND: ClassVar[int] = KIND_ALLOWANCE_RECEIPT
    request_id: bytes
    sale_entry: bytes

    def __post_init__(self) -> None:
        if len(self.request_id) != 32:
            raise MessageError("request_id is 32 bytes")

    def encode(self) -> bytes:
        w = _writer()
        w.raw(self.request_id)
        w.var16(self.sale_entry, MAX_FIELD_BYTES)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = _reader(data)
        request_id, entry = r.hash32(), r.var16(MAX_FIELD_BYTES)
        r.expect_end()
        return cls(request_id, entry)
