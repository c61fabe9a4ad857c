"""Valid encodings of every message a peer can send: the seeds the fuzzers mutate."""

from __future__ import annotations

import hashlib

from p2pgrid.agent.messages import (
    AllowanceOffer,
    AllowancePaid,
    AllowanceReceipt,
    AllowanceRequest,
    SaleOffer,
    ShareInvoice,
    ShareReceipt,
    SiteSaleOffer,
    SiteSaleReceipt,
    SiteTradeRequest,
    TradeRequest,
)
from p2pgrid.agent.rounds import order_text
from p2pgrid.ledger import (
    Allocation,
    Author,
    Budget,
    CarryOver,
    Curtailment,
    DeviceInfo,
    Dispute,
    Entry,
    Invoice,
    MeterReading,
    Order,
    Payment,
    Role,
    Sale,
    SaleSide,
    Share,
    SiteSale,
    SiteShare,
    SiteShareIn,
    wire,
)
from p2pgrid.ledger.bodies import encode_body
from p2pgrid.ledger.heads import AuthorHead, Heads
from p2pgrid.market import Ask, Bid, Grant, Party, ShareAccept, ShareOffer, ShareRequest, clear
from p2pgrid.net.envelope import Record, seal
from p2pgrid.net.frames import Hello
from tests.ledger.ledger_factory import T0_MS, Site

SITE = Site.make(b"p2pgrid fuzz site")
OTHER = Site.make(b"p2pgrid fuzz site, the owner's other")
PREIMAGE = b"\x07" * 32
PAYMENT_HASH = hashlib.sha256(PREIMAGE).digest()
BOLT11 = "lnbcrt10n1" + "q" * 120


def _entries() -> list[Entry]:
    device = SITE.chain(Author.device(1))
    owner = SITE.chain(Author(Role.OWNER, 0))
    utility = SITE.chain(Author(Role.UTILITY, 0))
    giver = OTHER.chain(Author.device(2))
    given = giver.next(SiteShare(SITE.membership.site_hash, 1, 5_000, "ln proof"))
    ask = Ask(Party(OTHER.identity.site_id, 2), 1, 17, 400, 200_000)
    order = giver.next(Order(17, order_text(ask)))
    other = OTHER.membership.site_hash
    bought = SiteSale(SaleSide.BOUGHT, other, 2, 17, 60, 12_000, PAYMENT_HASH, order.raw)
    purchase = device.next(bought)
    return [
        utility.next(Budget(900_000)),
        owner.next(Allocation(1, 300_000)),
        owner.next(DeviceInfo(1, "fridge", "the shop's fridge")),
        device.next(MeterReading(T0_MS, 900, 120, 30_000)),
        device.next(Share(2, 10_000, "ln memo")),
        device.next(Sale(3, 50, 12_500)),
        device.next(CarryOver(1_000)),
        utility.next(Invoice(1, 30_000, 120, PAYMENT_HASH, BOLT11)),
        device.next(Payment(30_000, PAYMENT_HASH, PREIMAGE, 1_000)),
        device.next(Curtailment(1, T0_MS, 900, 0)),
        device.next(Dispute(int(Role.UTILITY), 0, 1, "does not match")),
        device.next(SiteShareIn(given.raw.hex())),
        given,
        order,
        purchase,
        giver.next(
            SiteSale(
                SaleSide.SOLD,
                SITE.membership.site_hash,
                1,
                17,
                60,
                12_000,
                PAYMENT_HASH,
                purchase.raw,
            )
        ),
    ]


ENTRIES = _entries()
ENTRY_SEEDS = [e.raw for e in ENTRIES]
BODY_SEEDS = {e.kind: encode_body(e.body) for e in ENTRIES}

_HEADS = Heads(
    [
        AuthorHead(Author.device(1), 9, 9, b"\x01" * 32, b"\x02" * 32),
        AuthorHead(Author(Role.OWNER, 0), 2, 3, b"\x03" * 32, b"\x04" * 32),
    ]
)
WIRE_SEEDS = [
    wire.encode(message)
    for message in (
        wire.HeadsRequest(),
        wire.HeadsReply(_HEADS),
        wire.RangeRequest(Author.device(1), 1, 300),
        wire.RangeReply(3, tuple(ENTRY_SEEDS[3:6])),
        wire.Announce(tuple(ENTRY_SEEDS[:4])),
        wire.ErrorReply("no"),
        wire.PushedReply(2, 1),
    )
]

A = Party("00000000000000aa", 1)
B = Party("00000000000000aa", 2)
_REQUEST = ShareRequest(A, period=7, amount_msat=5_000, deadline_ms=T0_MS)
_ASK = Ask(B, 3, 17, 400, 250_000)
_BID = Bid(A, 3, 17, 300, 260_000)
MARKET_MESSAGES = [
    _REQUEST,
    ShareOffer(_REQUEST.id, B, 4_000),
    ShareAccept(_REQUEST.id, (Grant(B, 4_000),)),
    _ASK,
    _BID,
    clear([_ASK], [_BID], period=3, interval=17),
]
AGENT_MESSAGES = [
    ShareInvoice(b"\x01" * 32, 5_000, BOLT11),
    ShareReceipt(b"\x01" * 32, PREIMAGE, ENTRY_SEEDS[4]),
    SaleOffer(b"\x02" * 32, 50, 12_500, BOLT11),
    TradeRequest(3, 17, b"\x04" * 32, (0, 2, 5)),
    SiteTradeRequest(3, 17, 60),
    SiteSaleOffer(ENTRY_SEEDS[-3], 60, 12_000, BOLT11),
    SiteSaleReceipt(ENTRY_SEEDS[-2]),
    AllowanceRequest(A, 3, 30_000, 90, 1_700_000_000_000),
    AllowanceOffer(b"\x05" * 32, B, 30_000, 80, 24_000, BOLT11),
    AllowancePaid(b"\x05" * 32, PREIMAGE),
    AllowanceReceipt(b"\x05" * 32, ENTRY_SEEDS[4]),
]

HELLO_SEEDS = [
    Hello(("/ip4/127.0.0.1/tcp/4001",), ()).encode(),
    Hello(
        ("/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4001"),
        ("/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWPkHpEgdtiuEmATdpBjFVAFCuzGfFMYuGNpqYMKSJrmqS",),
    ).encode(),
]


def envelope_seeds() -> list[bytes]:
    signer = SITE.device(1)
    site_id = SITE.identity.site_id
    return [
        seal(
            signer,
            "p2pgrid/test",
            site_id=site_id,
            device_index=1,
            peer_id=b"\x00\x24" + b"\x08" * 36,
            epoch=7,
            seq=seq,
            timestamp_ms=T0_MS,
            records=records,
        )
        for seq, records in enumerate(
            (
                [Record(0x0001, HELLO_SEEDS[0])],
                [Record(0x0200, WIRE_SEEDS[4]), Record(0x0300, MARKET_MESSAGES[0].encode())],
            ),
            start=1,
        )
    ]
