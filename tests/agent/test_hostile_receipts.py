"""A giver's receipt is hostile input too: what can be produced can be consumed, and a
receipt that cannot be used after the payment is reported, never raised."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgrid.agent.messages import ShareInvoice, ShareReceipt
from p2pgrid.agent.payguard import share_memo
from p2pgrid.ledger import (
    Author,
    EntryKind,
    LogWriter,
    MalformedError,
    Role,
    SiteShare,
    SiteShareIn,
)
from p2pgrid.ledger.bodies import MAX_SITE_SHARE_ENTRY_BYTES, MAX_SITE_SHARE_MEMO_BYTES
from p2pgrid.ledger.codec import MAX_TEXT_BYTES
from p2pgrid.ledger.entry import HEADER_LEN
from p2pgrid.lightning.errors import LndApiError
from p2pgrid.lightning.models import Invoice, InvoiceState
from p2pgrid.market import Party, ShareRequest
from p2pgrid.net import Delivery, PeerMisbehaved, PeerRef, RequestRejected
from tests.fuzz.fakes import FakeNode, share_desk
from tests.fuzz.seeds import BOLT11
from tests.ledger.ledger_factory import Site

SITE = Site.make(b"hostile receipts")
OTHER = Site.make(b"hostile receipts, the owner's other site")
GIVER = Author(Role.DEVICE, 1)


def test_the_memo_limit_matches_the_entry_layout() -> None:
    entry = OTHER.chain(GIVER).next(SiteShare(b"\x00" * 32, 0, 1, "m" * MAX_SITE_SHARE_MEMO_BYTES))
    assert len(entry.raw) == MAX_SITE_SHARE_ENTRY_BYTES
    assert len(entry.raw) == HEADER_LEN + 46 + 64 + MAX_SITE_SHARE_MEMO_BYTES
    assert 2 * MAX_SITE_SHARE_ENTRY_BYTES <= MAX_TEXT_BYTES


@settings(max_examples=50)
@given(memo=st.text(max_size=MAX_SITE_SHARE_MEMO_BYTES + 200), amount=st.integers(1, 2**63 - 1))
def test_every_site_share_that_can_be_signed_fits_a_site_share_in(memo: str, amount: int) -> None:
    body = SiteShare(b"\x01" * 32, 3, amount, memo)
    chain = OTHER.chain(GIVER)
    if len(memo.encode()) > MAX_SITE_SHARE_MEMO_BYTES:
        with pytest.raises(MalformedError, match="memo"):
            chain.next(body)
        return
    entry = chain.next(body)
    SITE.chain(Author(Role.DEVICE, 3)).next(SiteShareIn(entry.raw.hex()))  # signs: it fits


class _Host:
    """Answers the pay request with a fixed receipt (a giver that lies in it)."""

    def __init__(self, receipt: ShareReceipt) -> None:
        self.receipt = receipt

    async def request(self, peer_id: str, protocol: str, message: Any, **_: Any) -> Delivery:
        data = self.receipt.encode()
        return Delivery(protocol, OTHER_SITE_ID, 1, peer_id, ShareReceipt.KIND, data, 0)


class _Node:
    def __init__(self, preimage: bytes) -> None:
        self.payment_hash = hashlib.sha256(preimage).hexdigest()
        self.cancelled: list[str] = []

    async def add_invoice(self, amount_msat: int, memo: str) -> Invoice:
        return Invoice(
            payment_hash=self.payment_hash,
            payment_request="lnbcrt1" + "q" * 110,
            memo=memo,
            value_msat=amount_msat,
            amt_paid_msat=0,
            state=InvoiceState.OPEN,
            add_index=1,
            settle_index=0,
            creation_date=0,
            expiry_s=3600,
        )

    async def cancel_invoice(self, payment_hash: str) -> None:
        self.cancelled.append(payment_hash)


OTHER_SITE_ID = OTHER.identity.site_id


@pytest.mark.parametrize(
    "entry",
    [
        b"\x01" * 600,  # hex of 1200 chars: over a text field (raised MalformedError once)
        b"\x00" * 4096,
    ],
)
async def test_an_unusable_receipt_after_payment_is_reported_not_raised(
    tmp_path: Path, entry: bytes
) -> None:
    preimage = b"\x09" * 32
    store = await SITE.open(tmp_path / "log.sqlite")
    try:
        me = Author(Role.DEVICE, 3)
        writer = LogWriter(store, SITE.signer(me), me)
        party = Party(SITE.identity.site_id, 3)

        async def headroom(period: int) -> int:
            return 0

        async with share_desk(
            tmp_path,
            me=party,
            host=_Host(ShareReceipt(b"\x05" * 32, preimage, entry)),
            node=_Node(preimage),
            store=store,
            writer=writer,
            headroom=headroom,
            name="requester",
            owner_sites={OTHER_SITE_ID: OTHER.identity},
        ) as desk:
            request = ShareRequest(party, 1, 5000, 0)
            giver = PeerRef("peer", OTHER_SITE_ID, 1, ())
            got = await desk._collect(request, giver, Party(OTHER_SITE_ID, 1), 5000)
        assert got == 0
        # nothing logged that no replica could credit (only the genesis enrolments)
        assert set(store.heads()) == {Author.owner()}
    finally:
        await store.close()


@pytest.mark.parametrize("evidence", ["AB", "ab cd", "abc", "zz"])
def test_evidence_has_one_spelling(evidence: str) -> None:
    with pytest.raises(MalformedError, match="lower-case hex"):
        SITE.chain(Author(Role.DEVICE, 3)).next(SiteShareIn(evidence))


async def test_an_invoice_paid_before_is_not_paid_or_logged_again(tmp_path: Path) -> None:
    """lnd answers a second payment of a paid invoice with the first payment: a peer
    that sends the same invoice for a second offer once got a second share logged
    (credit twice, sats once)."""
    store = await SITE.open(tmp_path / "giver.sqlite")
    try:
        me = Party(SITE.identity.site_id, 1)
        node = FakeNode()

        async def headroom(period: int) -> int:
            return 50_000

        requester = Party(me.site_id, 2)
        outcomes = []
        async with share_desk(
            tmp_path,
            me=me,
            node=node,
            store=store,
            writer=LogWriter(store, SITE.signer(Author.device(1)), Author.device(1)),
            headroom=headroom,
            name="giver",
            nodes={requester: node.destination},
        ) as desk:
            for amount in (1_000, 2_000):
                request = ShareRequest(requester, 1, amount, 0)

                def delivery(kind: int, data: bytes) -> Delivery:
                    return Delivery("t", me.site_id, 2, "peer", kind, data, 0)

                offer = await desk._on_request(delivery(ShareRequest.KIND, request.encode()))
                node.amount_msat = offer.amount_msat
                node.description = share_memo(request.id, requester, me, offer.amount_msat)
                ask = ShareInvoice(request.id, offer.amount_msat, BOLT11)  # the same invoice
                try:
                    await desk._on_pay(delivery(ShareInvoice.KIND, ask.encode()))
                    outcomes.append("paid")
                except PeerMisbehaved as exc:
                    outcomes.append(exc.reason)
        assert outcomes == ["paid", "share:invoice_reused"]
        logged = [e.kind for e in await store.entries() if e.kind is not EntryKind.ENROL]
        assert logged == [EntryKind.SHARE]
        assert list(node.paid.values()) == [1]
    finally:
        await store.close()


class _RefusingHost:
    async def request(self, *_: Any, **__: Any) -> Delivery:
        raise RequestRejected("the peer refused the request")


class _SettledNode(_Node):
    async def lookup_invoice(self, payment_hash: str) -> Invoice:
        return (await self.add_invoice(5000, "")).model_copy(
            update={"state": InvoiceState.SETTLED, "amt_paid_msat": 5000}
        )

    async def cancel_invoice(self, payment_hash: str) -> None:
        raise LndApiError("dev: invoice already settled", status=500)


async def test_a_giver_that_pays_then_refuses_does_not_crash_the_requester(
    tmp_path: Path,
) -> None:
    """Seen in an end-to-end run: the giver paid, failed to log, refused; cancelling
    the (settled) invoice raised LndApiError out of the requester's interval loop."""
    store = await SITE.open(tmp_path / "log.sqlite")
    try:
        party = Party(SITE.identity.site_id, 3)

        async def headroom(period: int) -> int:
            return 0

        node = _SettledNode(b"\x09" * 32)
        async with share_desk(
            tmp_path,
            me=party,
            host=_RefusingHost(),
            node=node,
            store=store,
            writer=LogWriter(store, SITE.signer(Author(Role.DEVICE, 3)), Author(Role.DEVICE, 3)),
            headroom=headroom,
            name="requester",
        ) as desk:
            giver = PeerRef("peer", SITE.identity.site_id, 1, ())
            request = ShareRequest(party, 1, 5000, 0)
            got = await desk._collect(request, giver, Party(giver.site_id, 1), 5000)
        # lnd says the invoice was paid: it is counted, never cancelled (the giver's
        # entry comes by replication); nothing raised out of the interval loop.
        assert got == 5000
        assert node.cancelled == []
    finally:
        await store.close()
