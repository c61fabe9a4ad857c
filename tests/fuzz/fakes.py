"""A Lightning node for the handler fuzzers: checks what lnd would, pays instantly, counts."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

from p2pgrid.agent.intents import IntentBook
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.agent.sharing import ShareDesk
from p2pgrid.ledger import LogStore, LogWriter
from p2pgrid.lightning.lnd import check_bolt11
from p2pgrid.lightning.models import (
    DecodedInvoice,
    Invoice,
    InvoiceState,
    Payment,
    PaymentStatus,
)
from p2pgrid.market import Party


class FakeNode:
    """Decodes any BOLT11-shaped string as an invoice for ``amount_msat`` with
    ``description`` (both set by the test) to :attr:`destination`, pays each
    payment request once (a second pay returns the first, as lnd)."""

    destination = "02" + "11" * 32

    def __init__(self) -> None:
        self.amount_msat = 0
        self.description = ""
        self.paid: Counter[str] = Counter()
        self.payments: dict[str, Payment] = {}

    async def decode_invoice(self, payment_request: str) -> DecodedInvoice:
        return DecodedInvoice(
            destination=self.destination,
            payment_hash=hashlib.sha256(_preimage(check_bolt11(payment_request))).hexdigest(),
            amount_msat=self.amount_msat,
            timestamp=int(time.time()),
            expiry_s=3600,
            description=self.description,
        )

    async def list_payments(self) -> list[Payment]:
        return list(self.payments.values())

    async def track_payment(self, payment_hash: str) -> Payment:
        return next(p for p in self.payments.values() if p.payment_hash == payment_hash)

    async def lookup_invoice(self, payment_hash: str) -> Invoice:
        return Invoice(
            payment_hash=payment_hash,
            payment_request="lnbcrt1" + "q" * 110,
            memo="",
            value_msat=self.amount_msat,
            amt_paid_msat=0,
            state=InvoiceState.OPEN,
            add_index=1,
            settle_index=0,
            creation_date=0,
            expiry_s=3600,
        )

    async def cancel_invoice(self, payment_hash: str) -> None:
        return None

    async def pay_invoice(
        self, payment_request: str, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment:
        request = check_bolt11(payment_request)
        if request not in self.payments:
            preimage = _preimage(request)
            self.paid[request] += 1
            self.payments[request] = Payment(
                payment_hash=hashlib.sha256(preimage).hexdigest(),
                status=PaymentStatus.SUCCEEDED,
                value_msat=self.amount_msat,
                fee_msat=1,
                preimage=preimage.hex(),
                failure_reason="",
                creation_time_ns=0,
            )
        return self.payments[request]

    async def add_invoice(self, amount_msat: int, memo: str, **_: object) -> Invoice:
        preimage = hashlib.sha256(memo.encode()).digest()
        return Invoice(
            payment_hash=hashlib.sha256(preimage).hexdigest(),
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


def _preimage(payment_request: str) -> bytes:
    return hashlib.sha256(b"preimage/" + payment_request.encode()).digest()


@contextlib.asynccontextmanager
async def share_desk(
    tmp: Path,
    *,
    me: Party,
    store: LogStore,
    writer: LogWriter,
    node: object,
    headroom: Callable[[int], Awaitable[int]],
    name: str,
    host: object = None,
    nodes: Mapping[Party, str] | None = None,
    owner_sites: Mapping[str, object] | None = None,
) -> AsyncIterator[ShareDesk]:
    """A share desk on ``store`` paying with ``node`` through its own intent book."""
    intents = await IntentBook.open(tmp / f"{name}.intents.db", name=name)
    try:
        yield ShareDesk(
            me=me,
            host=host,  # type: ignore[arg-type]
            node=node,  # type: ignore[arg-type]
            paymaster=Paymaster(node=node, writer=writer, intents=intents, name=name),  # type: ignore[arg-type]
            store=store,
            writer=writer,
            headroom=headroom,
            name=name,
            nodes=nodes if nodes is not None else {},
            owner_sites=owner_sites,  # type: ignore[arg-type]
        )
    finally:
        await intents.close()
