"""The negotiation messages of the market: typed, versioned, size-limited.

Every message is a frozen dataclass with a net-layer kind in 0x0300-0x03FF, a
canonical binary encoding (``encode``) and a strict decoder (``decode``) that
raises :class:`MessageError` on any deviation: a wrong version byte, missing or
trailing bytes, a value out of range, a list out of canonical order. The
constructors check the same rules, so an invalid message cannot be built either.

Each message has an ``id``: SHA-256 over its kind (u16) and its bytes. It is
derived from the content alone, so a retried message has the same id and the
receiver treats it as the same message (offers and accepts name a request by
it; a clearing names the order book it cleared by the ids of its orders).

Versioning: the first byte of every message is :data:`FORMAT_VERSION`; a
decoder refuses other versions. An incompatible change takes a new version (or
a new kind), so old and new agents can run side by side. docs/market.md gives
the byte layouts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, Self

from p2pgrid.market.codec import (
    HASH_LEN,
    MAX_U32,
    MAX_U63,
    SITE_ID_LEN,
    Reader,
    Writer,
    check_uint,
)
from p2pgrid.market.errors import MessageError

FORMAT_VERSION: Final = 1

KIND_SHARE_REQUEST: Final = 0x0300
KIND_SHARE_OFFER: Final = 0x0301
KIND_SHARE_ACCEPT: Final = 0x0302
KIND_ASK: Final = 0x0303
KIND_BID: Final = 0x0304
KIND_CLEARING: Final = 0x0305
KIND_DEMAND_CURVE: Final = 0x0306

#: Prices are msat per kWh in whole msat per Wh, so that every trade amount
#: (energy_wh x price / 1000) is an exact integer and nothing is rounded.
PRICE_TICK_MSAT_PER_KWH: Final = 1000
MAX_PRICE_MSAT_PER_KWH: Final = 10**9  # 1 million sat per kWh
MAX_ENERGY_WH: Final = 10**9  # 1 GWh in one order
#: ``interval`` value of an order or clearing that covers the whole period.
PERIOD_WIDE: Final = MAX_U32
MAX_GRANTS: Final = 64  # offers one ShareAccept can take
MAX_TRADES: Final = 512  # trades one Clearing can publish
MAX_STEPS: Final = 32  # steps of one DemandCurve

_PARTY_LEN = SITE_ID_LEN + 4
_TRADE_LEN = 2 * _PARTY_LEN + 8 + 8
#: The largest encoded message (a full Clearing), well under the net layer's
#: 64 KiB envelope. ``decode`` refuses anything longer before parsing it.
MAX_MESSAGE_BYTES: Final = 1 + 4 + 4 + 8 + HASH_LEN + 2 + MAX_TRADES * _TRADE_LEN

_SITE_ID = re.compile(r"[0-9a-f]{16}")


def _positive(name: str, value: int, maximum: int = MAX_U63) -> None:
    check_uint(name, value, maximum)
    if value == 0:
        raise MessageError(f"{name} must be positive")


def _hash32(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_LEN:
        raise MessageError(f"{name} must be {HASH_LEN} bytes")


def _price(name: str, value: int) -> None:
    _positive(name, value, MAX_PRICE_MSAT_PER_KWH)
    if value % PRICE_TICK_MSAT_PER_KWH:
        raise MessageError(f"{name} {value} is not a multiple of {PRICE_TICK_MSAT_PER_KWH}")


@dataclass(frozen=True, slots=True)
class Party:
    """A device of a site: ``site_id`` as the net layer names it (16 hex digits)
    and the device index. A site-to-site negotiation is spoken by one device of
    each site. Parties order by device index, then site id: that is the
    tie-break of every market rule."""

    site_id: str
    device: int

    def __post_init__(self) -> None:
        if not isinstance(self.site_id, str) or not _SITE_ID.fullmatch(self.site_id):
            raise MessageError(f"site_id must be 16 lowercase hex digits, got {self.site_id!r}")
        check_uint("device", self.device, MAX_U32)

    @property
    def sort_key(self) -> tuple[int, str]:
        return (self.device, self.site_id)

    def __lt__(self, other: Party) -> bool:
        return self.sort_key < other.sort_key

    def write(self, w: Writer) -> None:
        w.raw(bytes.fromhex(self.site_id))
        w.u32(self.device)

    @classmethod
    def read(cls, r: Reader) -> Party:
        site = r.raw(SITE_ID_LEN).hex()
        return cls(site, r.u32())


class _Message:
    """Shared codec frame: the version byte, the size limit, exact length, the id."""

    __slots__ = ()
    KIND: ClassVar[int]

    def _write(self, w: Writer) -> None:
        raise NotImplementedError

    @classmethod
    def _read(cls, r: Reader) -> Self:
        raise NotImplementedError

    def encode(self) -> bytes:
        w = Writer()
        w.u8(FORMAT_VERSION)
        self._write(w)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        if len(data) > MAX_MESSAGE_BYTES:
            raise MessageError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
        r = Reader(data)
        version = r.u8()
        if version != FORMAT_VERSION:
            raise MessageError(f"unknown {cls.__name__} version {version}")
        message = cls._read(r)
        r.expect_end()
        return message

    @property
    def id(self) -> bytes:
        """SHA-256 of the kind (u16) and the canonical bytes: equal content, equal id."""
        return hashlib.sha256(self.KIND.to_bytes(2, "big") + self.encode()).digest()


@dataclass(frozen=True, slots=True)
class ShareRequest(_Message):
    """``requester`` runs short by ``amount_msat`` in ``period``; offers are
    welcome until ``deadline_ms`` (wall time, ms since the epoch)."""

    KIND: ClassVar[int] = KIND_SHARE_REQUEST
    requester: Party
    period: int
    amount_msat: int
    deadline_ms: int

    def __post_init__(self) -> None:
        check_uint("period", self.period, MAX_U32)
        _positive("amount_msat", self.amount_msat)
        check_uint("deadline_ms", self.deadline_ms, MAX_U63)

    def is_open(self, now_ms: int) -> bool:
        return now_ms < self.deadline_ms

    def _write(self, w: Writer) -> None:
        self.requester.write(w)
        w.u32(self.period)
        w.u64(self.amount_msat)
        w.u64(self.deadline_ms)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(Party.read(r), r.u32(), r.u64(), r.u64())


@dataclass(frozen=True, slots=True)
class ShareOffer(_Message):
    """``giver`` offers ``amount_msat`` of its allocation to the request ``request_id``."""

    KIND: ClassVar[int] = KIND_SHARE_OFFER
    request_id: bytes
    giver: Party
    amount_msat: int

    def __post_init__(self) -> None:
        _hash32("request_id", self.request_id)
        _positive("amount_msat", self.amount_msat)

    def _write(self, w: Writer) -> None:
        w.raw(self.request_id)
        self.giver.write(w)
        w.u64(self.amount_msat)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(r.raw(HASH_LEN), Party.read(r), r.u64())


@dataclass(frozen=True, slots=True)
class Grant:
    """One accepted offer: ``giver`` gives ``amount_msat`` (at most what it offered)."""

    giver: Party
    amount_msat: int

    def __post_init__(self) -> None:
        _positive("amount_msat", self.amount_msat)


@dataclass(frozen=True, slots=True)
class ShareAccept(_Message):
    """The requester's final answer to its request: the offers it takes and how
    much of each. Givers not listed are declined. ``grants`` are in canonical
    order (by giver) with one grant per giver; an empty list declines all."""

    KIND: ClassVar[int] = KIND_SHARE_ACCEPT
    request_id: bytes
    grants: tuple[Grant, ...]

    def __post_init__(self) -> None:
        _hash32("request_id", self.request_id)
        if not isinstance(self.grants, tuple) or len(self.grants) > MAX_GRANTS:
            raise MessageError(f"a ShareAccept holds a tuple of at most {MAX_GRANTS} grants")
        for before, after in zip(self.grants, self.grants[1:], strict=False):
            if not before.giver < after.giver:
                raise MessageError("grants must be ordered by giver, one per giver")

    @property
    def total_msat(self) -> int:
        return sum(g.amount_msat for g in self.grants)

    def granted_by(self, giver: Party) -> int:
        """What ``giver`` is asked to give (0 if its offer was declined)."""
        return next((g.amount_msat for g in self.grants if g.giver == giver), 0)

    def _write(self, w: Writer) -> None:
        w.raw(self.request_id)
        w.u16(len(self.grants))
        for grant in self.grants:
            grant.giver.write(w)
            w.u64(grant.amount_msat)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        request_id = r.raw(HASH_LEN)
        count = r.u16()
        if count > MAX_GRANTS:
            raise MessageError(f"{count} grants exceed {MAX_GRANTS}")
        grants = tuple(Grant(Party.read(r), r.u64()) for _ in range(count))
        return cls(request_id, grants)


@dataclass(frozen=True, slots=True)
class _Order(_Message):
    party: Party
    period: int
    interval: int  # a metering interval, or PERIOD_WIDE
    energy_wh: int
    price_msat_per_kwh: int

    def __post_init__(self) -> None:
        check_uint("period", self.period, MAX_U32)
        check_uint("interval", self.interval, MAX_U32)
        _positive("energy_wh", self.energy_wh, MAX_ENERGY_WH)
        _price("price_msat_per_kwh", self.price_msat_per_kwh)

    @property
    def round(self) -> tuple[int, int]:
        """The auction round the order belongs to: (period, interval)."""
        return (self.period, self.interval)

    def _write(self, w: Writer) -> None:
        self.party.write(w)
        w.u32(self.period)
        w.u32(self.interval)
        w.u64(self.energy_wh)
        w.u64(self.price_msat_per_kwh)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(Party.read(r), r.u32(), r.u32(), r.u64(), r.u64())


@dataclass(frozen=True, slots=True)
class Ask(_Order):
    """A seller (``party``) offers ``energy_wh`` at no less than ``price_msat_per_kwh``."""

    KIND: ClassVar[int] = KIND_ASK


@dataclass(frozen=True, slots=True)
class Bid(_Order):
    """A buyer (``party``) wants ``energy_wh`` at no more than ``price_msat_per_kwh``."""

    KIND: ClassVar[int] = KIND_BID


def trade_amount_msat(energy_wh: int, price_msat_per_kwh: int) -> int:
    """What ``energy_wh`` costs at a price on the tick: exact, nothing rounded."""
    if price_msat_per_kwh % PRICE_TICK_MSAT_PER_KWH:
        raise MessageError(f"price {price_msat_per_kwh} is not on the tick")
    return energy_wh * (price_msat_per_kwh // PRICE_TICK_MSAT_PER_KWH)


@dataclass(frozen=True, slots=True)
class Trade:
    """``buyer`` pays ``seller`` ``amount_msat`` for ``energy_wh``."""

    seller: Party
    buyer: Party
    energy_wh: int
    amount_msat: int

    def __post_init__(self) -> None:
        if self.seller == self.buyer:
            raise MessageError("a party cannot trade with itself")
        _positive("energy_wh", self.energy_wh)
        _positive("amount_msat", self.amount_msat)

    @property
    def sort_key(self) -> tuple[tuple[int, str], tuple[int, str]]:
        return (self.seller.sort_key, self.buyer.sort_key)


@dataclass(frozen=True, slots=True)
class Clearing(_Message):
    """The published result of one auction round: one price for every trade.

    ``book_id`` is SHA-256 over the sorted ids of the orders that were cleared,
    so every agent can check that it cleared the same book. ``trades`` are in
    canonical order (by seller, then buyer), one per pair, and each amount is
    ``energy_wh x price / 1000`` exactly. A round without trades has price 0.
    """

    KIND: ClassVar[int] = KIND_CLEARING
    period: int
    interval: int
    price_msat_per_kwh: int
    book_id: bytes
    trades: tuple[Trade, ...]

    def __post_init__(self) -> None:
        check_uint("period", self.period, MAX_U32)
        check_uint("interval", self.interval, MAX_U32)
        _hash32("book_id", self.book_id)
        if not isinstance(self.trades, tuple) or len(self.trades) > MAX_TRADES:
            raise MessageError(f"a Clearing holds a tuple of at most {MAX_TRADES} trades")
        if self.trades:
            _price("price_msat_per_kwh", self.price_msat_per_kwh)
        elif self.price_msat_per_kwh:
            raise MessageError("a clearing without trades has price 0")
        for trade in self.trades:
            if trade.amount_msat != trade_amount_msat(trade.energy_wh, self.price_msat_per_kwh):
                raise MessageError(f"trade amount {trade.amount_msat} does not match the price")
        for before, after in zip(self.trades, self.trades[1:], strict=False):
            if not before.sort_key < after.sort_key:
                raise MessageError("trades must be ordered by seller then buyer, one per pair")

    def _write(self, w: Writer) -> None:
        w.u32(self.period)
        w.u32(self.interval)
        w.u64(self.price_msat_per_kwh)
        w.raw(self.book_id)
        w.u16(len(self.trades))
        for trade in self.trades:
            trade.seller.write(w)
            trade.buyer.write(w)
            w.u64(trade.energy_wh)
            w.u64(trade.amount_msat)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        period, interval, price, book_id = r.u32(), r.u32(), r.u64(), r.raw(HASH_LEN)
        count = r.u16()
        if count > MAX_TRADES:
            raise MessageError(f"{count} trades exceed {MAX_TRADES}")
        trades = tuple(Trade(Party.read(r), Party.read(r), r.u64(), r.u64()) for _ in range(count))
        return cls(period, interval, price, book_id, trades)


@dataclass(frozen=True, slots=True)
class Step:
    """One block of a demand curve: ``energy_wh`` that the buyer takes at any
    price up to ``price_msat_per_kwh``."""

    price_msat_per_kwh: int
    energy_wh: int

    def __post_init__(self) -> None:
        _price("price_msat_per_kwh", self.price_msat_per_kwh)
        _positive("energy_wh", self.energy_wh, MAX_ENERGY_WH)


@dataclass(frozen=True, slots=True)
class DemandCurve(_Message):
    """How much ``buyer`` would buy in a round at each price (PowerMatcher style).

    ``steps`` are blocks in strictly descending price; the buyer's demand at a
    price ``p`` is the energy of every step priced ``>= p``
    (:meth:`demand_wh`): a non-increasing step function of the price. A curve of
    one step is a plain :class:`Bid`. The whole curve asks for at most
    :data:`MAX_ENERGY_WH`.
    """

    KIND: ClassVar[int] = KIND_DEMAND_CURVE
    party: Party
    period: int
    interval: int  # a metering interval, or PERIOD_WIDE
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        check_uint("period", self.period, MAX_U32)
        check_uint("interval", self.interval, MAX_U32)
        if not isinstance(self.steps, tuple) or not 1 <= len(self.steps) <= MAX_STEPS:
            raise MessageError(f"a DemandCurve holds a tuple of 1..{MAX_STEPS} steps")
        for before, after in zip(self.steps, self.steps[1:], strict=False):
            if not before.price_msat_per_kwh > after.price_msat_per_kwh:
                raise MessageError("steps must be in strictly descending price")
        if self.energy_wh > MAX_ENERGY_WH:
            raise MessageError(f"a curve asks for at most {MAX_ENERGY_WH} Wh in all")

    @classmethod
    def flat(cls, bid: Bid) -> DemandCurve:
        """The one-step curve of a plain bid."""
        step = Step(bid.price_msat_per_kwh, bid.energy_wh)
        return cls(bid.party, bid.period, bid.interval, (step,))

    @property
    def round(self) -> tuple[int, int]:
        return (self.period, self.interval)

    @property
    def energy_wh(self) -> int:
        """The demand at the lowest price: all steps."""
        return sum(step.energy_wh for step in self.steps)

    def demand_wh(self, price_msat_per_kwh: int) -> int:
        """What the buyer takes at ``price_msat_per_kwh``."""
        return sum(s.energy_wh for s in self.steps if s.price_msat_per_kwh >= price_msat_per_kwh)

    def _write(self, w: Writer) -> None:
        self.party.write(w)
        w.u32(self.period)
        w.u32(self.interval)
        w.u16(len(self.steps))
        for step in self.steps:
            w.u64(step.price_msat_per_kwh)
            w.u64(step.energy_wh)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        party, period, interval = Party.read(r), r.u32(), r.u32()
        count = r.u16()
        if count > MAX_STEPS:
            raise MessageError(f"{count} steps exceed {MAX_STEPS}")
        return cls(party, period, interval, tuple(Step(r.u64(), r.u64()) for _ in range(count)))


MarketMessage = ShareRequest | ShareOffer | ShareAccept | Ask | Bid | Clearing | DemandCurve

#: Kind -> message type, for a receiver that dispatches on the delivery's kind.
MESSAGE_TYPES: Final[dict[int, type[MarketMessage]]] = {
    cls.KIND: cls
    for cls in (ShareRequest, ShareOffer, ShareAccept, Ask, Bid, Clearing, DemandCurve)
}


def decode_message(kind: int, data: bytes) -> MarketMessage:
    """Decode a message of any market ``kind``; an unknown kind is a :class:`MessageError`."""
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise MessageError(f"kind {kind:#06x} is not a market message")
    return cls.decode(data)


def book_id(orders: Sequence[Ask | Bid | DemandCurve]) -> bytes:
    """SHA-256 over the sorted, distinct ids of ``orders``: the same book, the same id."""
    ids = sorted({order.id for order in orders})
    return hashlib.sha256(b"".join(ids)).digest()
