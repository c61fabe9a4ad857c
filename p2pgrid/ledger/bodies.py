"""Entry kinds and their typed bodies.

Each kind has one frozen dataclass. Its fields, in declaration order, are its
canonical encoding (each field carries its :class:`FieldType` in metadata); its
``check`` validates values that the types alone do not (positive amounts, a
preimage that matches its hash). ``ROLES`` names who may author the kind.
Money is integer millisatoshis, energy integer watt-hours, time integer ms.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
import re
from typing import Any, ClassVar

from p2pgrid.identity import IdentityError, check_member_index, is_pubkey
from p2pgrid.identity import Role as Role  # an author's role is the identity's role
from p2pgrid.ledger.codec import MAX_TEXT_BYTES, FieldType, Reader, Writer
from p2pgrid.ledger.errors import MalformedError


class EntryKind(enum.IntEnum):
    """What an entry records. The wire value is the enum value (one byte)."""

    METER_READING = 1
    BUDGET = 2
    ALLOCATION = 3
    SHARE = 4
    SALE = 5
    CARRY_OVER = 6
    INVOICE = 7
    PAYMENT = 8
    CURTAILMENT = 9
    DISPUTE = 10
    DEVICE_INFO = 11
    SITE_SHARE = 12
    SITE_SHARE_IN = 13
    ENROL = 14
    REVOKE = 15
    ORDER = 16
    CLEARED = 17
    DELIVERED = 18
    ALLOWANCE_SALE = 19
    SITE_SALE = 20


ALL_DEVICES = 2**32 - 1  # a curtailment that applies to every device


class BodyError(MalformedError):
    """A body decodes but its values are not allowed."""


def _wire(kind: FieldType) -> Any:
    return dataclasses.field(metadata={"wire": kind})


@dataclasses.dataclass(frozen=True, slots=True)
class Body:
    """Base of all bodies; subclasses set ``KIND`` and ``ROLES``."""

    KIND: ClassVar[EntryKind]
    ROLES: ClassVar[frozenset[Role]]
    #: The entry format version that introduced the kind: an entry of the kind is
    #: written with exactly this version (docs/protocol-log.md, section 2), so
    #: entries of the older kinds keep their bytes and ids.
    SINCE: ClassVar[int] = 1

    def check(self, author_role: Role, author_index: int) -> None:
        """Raise :class:`BodyError` if the values are not allowed."""

    def record_key(self, period: int) -> tuple[int, ...] | None:
        """What the author may record once only (None: no such rule).

        A log refuses an entry whose key one of its author's earlier entries
        (its chain ancestors) of the same kind already has: a second reading of
        one interval, a second budget of a period, a second invoice of a device
        and period. See docs/protocol-log.md, section 4.
        """
        return None


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise BodyError(f"{name} must be positive, got {value}")


_DEVICE = frozenset({Role.DEVICE})
_OWNER = frozenset({Role.OWNER})
_UTILITY = frozenset({Role.UTILITY})


@dataclasses.dataclass(frozen=True, slots=True)
class MeterReading(Body):
    """The author device consumed ``energy_wh`` in an interval, paying ``cost_msat``."""

    KIND = EntryKind.METER_READING
    ROLES = _DEVICE
    interval_start_ms: int = _wire(FieldType.U64)
    interval_s: int = _wire(FieldType.U32)
    energy_wh: int = _wire(FieldType.U64)
    cost_msat: int = _wire(FieldType.U64)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("interval_s", self.interval_s)

    def record_key(self, period: int) -> tuple[int, ...] | None:
        # The interval's start names it (it lies in one period): one reading each.
        return (self.interval_start_ms,)


@dataclasses.dataclass(frozen=True, slots=True)
class Budget(Body):
    """The utility grants the site a capped budget for the entry's period."""

    KIND = EntryKind.BUDGET
    ROLES = _UTILITY
    amount_msat: int = _wire(FieldType.U64)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("amount_msat", self.amount_msat)

    def record_key(self, period: int) -> tuple[int, ...] | None:
        return (period,)


@dataclasses.dataclass(frozen=True, slots=True)
class Allocation(Body):
    """The owner allocates ``amount_msat`` of the period's budget to a device (adds up)."""

    KIND = EntryKind.ALLOCATION
    ROLES = _OWNER
    device: int = _wire(FieldType.U32)
    amount_msat: int = _wire(FieldType.U64)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("amount_msat", self.amount_msat)


@dataclasses.dataclass(frozen=True, slots=True)
class Share(Body):
    """The author device gives part of its allocation to ``to_device``."""

    KIND = EntryKind.SHARE
    ROLES = _DEVICE
    to_device: int = _wire(FieldType.U32)
    amount_msat: int = _wire(FieldType.U64)
    memo: str = _wire(FieldType.TEXT)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("amount_msat", self.amount_msat)
        if self.to_device == author_index:
            raise BodyError("a device cannot share with itself")


@dataclasses.dataclass(frozen=True, slots=True)
class Sale(Body):
    """The author device (the buyer, who pays) buys ``energy_wh`` from ``seller``.

    Authored by the payer so that nobody can spend another device's balance.
    """

    KIND = EntryKind.SALE
    ROLES = _DEVICE
    seller: int = _wire(FieldType.U32)
    energy_wh: int = _wire(FieldType.U64)
    amount_msat: int = _wire(FieldType.U64)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("amount_msat", self.amount_msat)
        _positive("energy_wh", self.energy_wh)
        if self.seller == author_index:
            raise BodyError("a device cannot buy from itself")


@dataclasses.dataclass(frozen=True, slots=True)
class CarryOver(Body):
    """The author device carries ``amount_msat`` of its balance into the next
    period: once per period (its record key), written at the period's close."""

    KIND = EntryKind.CARRY_OVER
    ROLES = _DEVICE
    amount_msat: int = _wire(FieldType.U64)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("amount_msat", self.amount_msat)

    def record_key(self, period: int) -> tuple[int, ...] | None:
        return (period,)  # one carry-over per device and period


@dataclasses.dataclass(frozen=True, slots=True)
class Invoice(Body):
    """The utility invoices ``device`` (or ALL_DEVICES: the whole site, per
    contract) for the entry's period with a BOLT11 invoice: one per (device, period)."""

    KIND = EntryKind.INVOICE
    ROLES = _UTILITY
    device: int = _wire(FieldType.U32)
    amount_msat: int = _wire(FieldType.U64)
    energy_wh: int = _wire(FieldType.U64)
    payment_hash: bytes = _wire(FieldType.HASH)
    bolt11: str = _wire(FieldType.TEXT)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("amount_msat", self.amount_msat)

    def record_key(self, period: int) -> tuple[int, ...] | None:
        return (period, self.device)


@dataclasses.dataclass(frozen=True, slots=True)
class Payment(Body):
    """An invoice was paid; ``preimage`` proves it (SHA-256(preimage) == payment_hash).

    ``fee_msat`` is the routing fee the payer paid on top of ``amount_msat``, so
    the log shows every msat that left the payer's channels."""

    KIND = EntryKind.PAYMENT
    ROLES = frozenset({Role.DEVICE, Role.OWNER})
    amount_msat: int = _wire(FieldType.U64)
    payment_hash: bytes = _wire(FieldType.HASH)
    preimage: bytes = _wire(FieldType.HASH)
    fee_msat: int = _wire(FieldType.U64)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("amount_msat", self.amount_msat)
        if hashlib.sha256(self.preimage).digest() != self.payment_hash:
            raise BodyError("preimage does not match payment_hash")


@dataclasses.dataclass(frozen=True, slots=True)
class Curtailment(Body):
    """``device`` (or ALL_DEVICES) stays under ``max_power_w`` for a while: asked by
    the utility, or recorded by a device that curtails itself for lack of budget."""

    KIND = EntryKind.CURTAILMENT
    ROLES = frozenset({Role.UTILITY, Role.DEVICE})
    device: int = _wire(FieldType.U32)
    start_ms: int = _wire(FieldType.U64)
    duration_s: int = _wire(FieldType.U32)
    max_power_w: int = _wire(FieldType.U32)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("duration_s", self.duration_s)
        if author_role is Role.DEVICE and self.device != author_index:
            raise BodyError("a device can only curtail itself")


@dataclasses.dataclass(frozen=True, slots=True)
class Dispute(Body):
    """Any member contests another author's entry (by author and sequence number)."""

    KIND = EntryKind.DISPUTE
    ROLES = frozenset(Role)
    target_role: int = _wire(FieldType.U8)
    target_index: int = _wire(FieldType.U32)
    target_seq: int = _wire(FieldType.U64)
    reason: str = _wire(FieldType.TEXT)

    def check(self, author_role: Role, author_index: int) -> None:
        if self.target_role not in {r.value for r in Role}:
            raise BodyError(f"unknown target role {self.target_role}")
        _positive("target_seq", self.target_seq)


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceInfo(Body):
    """The owner describes a device: its class (``fridge``, ``hvac``...) and a label."""

    KIND = EntryKind.DEVICE_INFO
    ROLES = _OWNER
    device: int = _wire(FieldType.U32)
    device_class: str = _wire(FieldType.TEXT)
    label: str = _wire(FieldType.TEXT)

    def check(self, author_role: Role, author_index: int) -> None:
        if not self.device_class:
            raise BodyError("device_class must not be empty")


#: A ``site_share`` entry travels as the hex ``evidence`` of a ``site_share_in``, a
#: text field of at most MAX_TEXT_BYTES: so the whole entry is at most half that.
MAX_SITE_SHARE_ENTRY_BYTES = MAX_TEXT_BYTES // 2
_LOWER_HEX = re.compile(r"(?:[0-9a-f]{2})*")
#: Its memo's limit: the entry less its header (61), fixed fields (32 + 4 + 8 + the
#: memo's u16 length) and signature (64). Checked against entry.py in the tests.
MAX_SITE_SHARE_MEMO_BYTES = MAX_SITE_SHARE_ENTRY_BYTES - 61 - 46 - 64


@dataclasses.dataclass(frozen=True, slots=True)
class SiteShare(Body):
    """The author device gives part of its allocation to a device of *another*
    site of the same owner (network to network). Debits the giver here; the
    receiver records the credit in its own site's log (:class:`SiteShareIn`)."""

    KIND = EntryKind.SITE_SHARE
    ROLES = _DEVICE
    to_site: bytes = _wire(FieldType.HASH)  # site_hash of the receiving site
    to_device: int = _wire(FieldType.U32)
    amount_msat: int = _wire(FieldType.U64)
    memo: str = _wire(FieldType.TEXT)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("amount_msat", self.amount_msat)
        if len(self.memo.encode()) > MAX_SITE_SHARE_MEMO_BYTES:
            raise BodyError(
                f"site_share memo over {MAX_SITE_SHARE_MEMO_BYTES} bytes "
                "(the entry must fit a site_share_in's evidence)"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class SiteShareIn(Body):
    """The author device received a share from another site: ``evidence`` is the
    giver's signed :class:`SiteShare` entry (hex), which any replica that knows
    the owner's other sites checks before it credits anything."""

    KIND = EntryKind.SITE_SHARE_IN
    ROLES = _DEVICE
    evidence: str = _wire(FieldType.TEXT)

    def check(self, author_role: Role, author_index: int) -> None:
        _hex_text("evidence", self.evidence)


def _hex_text(name: str, value: str) -> None:
    # bytes.fromhex alone also takes upper case and spaces: one spelling only.
    if not _LOWER_HEX.fullmatch(value):
        raise BodyError(f"{name} must be lower-case hex, two digits per byte")


@dataclasses.dataclass(frozen=True, slots=True)
class Order(Body):
    """The author device's order in the site's pooled auction of round
    (entry period, ``interval``): ``order`` is the lower-case hex of the market
    message's kind (u16) and bytes, an ``Ask`` (0x0303) or a ``DemandCurve``
    (0x0306). The log keeps it opaque (it checks the spelling and the record
    key); the pooled round (docs/market.md, section 6) decodes it and ignores an
    order that does not name its author, period and interval."""

    KIND = EntryKind.ORDER
    ROLES = _DEVICE
    SINCE = 2
    interval: int = _wire(FieldType.U32)
    order: str = _wire(FieldType.TEXT)

    def check(self, author_role: Role, author_index: int) -> None:
        _hex_text("order", self.order)
        if len(self.order) < 6:
            raise BodyError("order must hold a market kind and a message")

    def record_key(self, period: int) -> tuple[int, ...] | None:
        return (period, self.interval)  # one order per device and round


@dataclasses.dataclass(frozen=True, slots=True)
class Cleared(Body):
    """The author device traded in the pooled round (entry period, ``interval``)
    as cleared from the ``order`` entries of the devices listed in ``book``
    (lower-case hex of their indices, u32 each, strictly ascending), whose
    order ids hash to ``book_id``, at ``price_msat_per_kwh``. Its ``sale``
    entries of that round (a buyer's) are trades of that clearing, which any
    replica recomputes from its log (docs/market.md, section 6)."""

    KIND = EntryKind.CLEARED
    ROLES = _DEVICE
    SINCE = 2
    interval: int = _wire(FieldType.U32)
    price_msat_per_kwh: int = _wire(FieldType.U64)
    book_id: bytes = _wire(FieldType.HASH)
    book: str = _wire(FieldType.TEXT)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("price_msat_per_kwh", self.price_msat_per_kwh)
        _hex_text("book", self.book)
        if not self.book or len(self.book) % 8:
            raise BodyError("book must list at least one u32 device index")
        indices = self.devices
        if any(a >= b for a, b in itertools.pairwise(indices)):
            raise BodyError("book's device indices must be strictly ascending")
        if author_index not in indices:
            raise BodyError("the author's own order must be in the book")

    @property
    def devices(self) -> tuple[int, ...]:
        """The device indices of ``book``."""
        return tuple(int(self.book[i : i + 8], 16) for i in range(0, len(self.book), 8))

    def record_key(self, period: int) -> tuple[int, ...] | None:
        return (period, self.interval)  # one clearing per device and round


@dataclasses.dataclass(frozen=True, slots=True)
class Delivered(Body):
    """The author device (a buyer paying on delivery) received ``energy_wh`` of
    its pooled trade with ``seller`` in round (entry period, ``interval``), as
    its meter measured it, for the hold invoice of ``payment_hash``. Logged with
    its meter reading of that interval (whose grid energy leaves it out); the
    seller settles the invoice only if it shows the whole trade, and cancels it
    otherwise (docs/market.md, section 6.2)."""

    KIND = EntryKind.DELIVERED
    ROLES = _DEVICE
    SINCE = 3
    interval: int = _wire(FieldType.U32)
    seller: int = _wire(FieldType.U32)
    energy_wh: int = _wire(FieldType.U64)
    payment_hash: bytes = _wire(FieldType.HASH)

    def check(self, author_role: Role, author_index: int) -> None:
        if self.seller == author_index:
            raise BodyError("a device receives no energy from itself")

    def record_key(self, period: int) -> tuple[int, ...] | None:
        return (period, self.interval, self.seller)  # one per trade


class SaleSide(enum.IntEnum):
    """Which side of a cross-site trade a ``site_sale`` entry records."""

    BOUGHT = 0  # the author is the buyer; evidence: the seller's ``order`` entry
    SOLD = 1  # the author is the seller; evidence: the buyer's ``site_sale`` entry


#: Where an entry's kind byte is (docs/protocol-log.md, section 2).
_KIND_OFFSET = 58


@dataclasses.dataclass(frozen=True, slots=True)
class SiteSale(Body):
    """Energy traded in round (entry period, ``interval``) between the author
    device and device ``other_device`` of *another* site (``other_site``, its
    site hash), paid with the Lightning payment of ``payment_hash``
    (docs/market.md, section 6.3).

    ``side`` BOUGHT: the author bought ``energy_wh`` for ``amount_msat``;
    ``evidence`` is the seller's signed ``order`` entry (an ``Ask`` of the
    round) from its site's log. Debits the author like ``sale``; its Wh are the
    author's transit energy, on which the utility bills the grid fee.
    ``side`` SOLD: the author sold them; ``evidence`` is the buyer's signed
    ``site_sale`` entry of side BOUGHT from its site's log, whose fields are
    these. Credits the author only where a replica verifies it (like
    ``site_share_in``)."""

    KIND = EntryKind.SITE_SALE
    ROLES = _DEVICE
    SINCE = 4
    side: int = _wire(FieldType.U8)
    other_site: bytes = _wire(FieldType.HASH)
    other_device: int = _wire(FieldType.U32)
    interval: int = _wire(FieldType.U32)
    energy_wh: int = _wire(FieldType.U64)
    amount_msat: int = _wire(FieldType.U64)
    payment_hash: bytes = _wire(FieldType.HASH)
    evidence: bytes = _wire(FieldType.BYTES)

    def check(self, author_role: Role, author_index: int) -> None:
        if self.side not in {s.value for s in SaleSide}:
            raise BodyError(f"unknown site_sale side {self.side}")
        _positive("energy_wh", self.energy_wh)
        _positive("amount_msat", self.amount_msat)
        want = EntryKind.ORDER if self.side == SaleSide.BOUGHT else EntryKind.SITE_SALE
        if len(self.evidence) <= _KIND_OFFSET or self.evidence[_KIND_OFFSET] != want:
            raise BodyError(f"a site_sale of side {self.side} carries a {want.name.lower()} entry")

    def record_key(self, period: int) -> tuple[int, ...] | None:
        # One purchase (or one sale) per device of the other site and round.
        site = int.from_bytes(self.other_site, "big")
        return (period, self.interval, self.side, site, self.other_device)


@dataclasses.dataclass(frozen=True, slots=True)
class AllowanceSale(Body):
    """The author device (the seller) sold ``allowance_msat`` of its allowance
    of the entry's period to device ``buyer``, who paid ``price_msat`` for it
    over Lightning, outside its budget: the seller's invoice of
    ``payment_hash``, settled with ``preimage`` (the proof,
    SHA-256(preimage) == payment_hash). Authored by the seller, whose balance
    is debited; the buyer's ``payment`` entry of the same hash records the
    sats that left its node (docs/market.md, section 2.9)."""

    KIND = EntryKind.ALLOWANCE_SALE
    ROLES = _DEVICE
    SINCE = 4
    buyer: int = _wire(FieldType.U32)
    allowance_msat: int = _wire(FieldType.U64)
    price_msat: int = _wire(FieldType.U64)
    payment_hash: bytes = _wire(FieldType.HASH)
    preimage: bytes = _wire(FieldType.HASH)

    def check(self, author_role: Role, author_index: int) -> None:
        _positive("allowance_msat", self.allowance_msat)
        _positive("price_msat", self.price_msat)
        if self.price_msat > self.allowance_msat:
            raise BodyError("allowance sells at most at its face value")
        if self.buyer == author_index:
            raise BodyError("a device cannot sell allowance to itself")
        if hashlib.sha256(self.preimage).digest() != self.payment_hash:
            raise BodyError("preimage does not match payment_hash")


def _member_index(role: int, index: int) -> None:
    try:
        check_member_index(Role(role), index)
    except (ValueError, IdentityError) as exc:
        raise BodyError(f"cannot enrol or revoke role {role} index {index}: {exc}") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class Enrol(Body):
    """The owner makes ``pubkey`` a member of the site: device ``index`` (role 0)
    or the utility (role 2, index 0), for entries of period ``from_period`` on.
    The key is the member's own (never derived from the owner's); the first
    enrolment of a (role, index) counts, a later one is ignored."""

    KIND = EntryKind.ENROL
    ROLES = _OWNER
    role: int = _wire(FieldType.U8)
    index: int = _wire(FieldType.U32)
    pubkey: bytes = _wire(FieldType.PUBKEY)
    device_class: str = _wire(FieldType.TEXT)
    from_period: int = _wire(FieldType.U32)

    def check(self, author_role: Role, author_index: int) -> None:
        _member_index(self.role, self.index)
        if not is_pubkey(self.pubkey):
            raise BodyError("pubkey is not a compressed secp256k1 point")
        if self.role == Role.DEVICE and not self.device_class:
            raise BodyError("device_class must not be empty")


@dataclasses.dataclass(frozen=True, slots=True)
class Revoke(Body):
    """The owner ends a membership: entries of the member with a sequence number
    above ``last_seq`` are refused (0: all of them), and dropped where stored."""

    KIND = EntryKind.REVOKE
    ROLES = _OWNER
    role: int = _wire(FieldType.U8)
    index: int = _wire(FieldType.U32)
    last_seq: int = _wire(FieldType.U64)
    reason: str = _wire(FieldType.TEXT)

    def check(self, author_role: Role, author_index: int) -> None:
        _member_index(self.role, self.index)


BODY_TYPES: dict[EntryKind, type[Body]] = {
    cls.KIND: cls
    for cls in (
        MeterReading,
        Budget,
        Allocation,
        Share,
        Sale,
        CarryOver,
        Invoice,
        Payment,
        Curtailment,
        Dispute,
        DeviceInfo,
        SiteShare,
        SiteShareIn,
        Enrol,
        Revoke,
        Order,
        Cleared,
        Delivered,
        AllowanceSale,
        SiteSale,
    )
}
_LAYOUT: dict[type[Body], tuple[tuple[str, FieldType], ...]] = {
    cls: tuple((f.name, f.metadata["wire"]) for f in dataclasses.fields(cls))
    for cls in BODY_TYPES.values()
}


def encode_body(body: Body) -> bytes:
    """The canonical bytes of a body: its fields in declaration order."""
    writer = Writer()
    for name, kind in _LAYOUT[type(body)]:
        writer.field(kind, getattr(body, name))
    return writer.getvalue()


def decode_body(kind: EntryKind, data: bytes) -> Body:
    """Decode a body of ``kind``; raises :class:`MalformedError` on any deviation."""
    cls = BODY_TYPES[kind]
    reader = Reader(data)
    values = {name: reader.field(ftype) for name, ftype in _LAYOUT[cls]}
    reader.expect_end()
    return cls(**values)
