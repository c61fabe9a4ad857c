"""A Lightning node for the handler fuzzers: checks what lnd would, pays instantly, counts."""

from __future__ import annotations

import hashlib
from collections import Counter

from p2pgrid.lightning.lnd import check_bolt11
from p2pgrid.lightning.models import (
    DecodedInvoice,
    Invoice,
    InvoiceState,
    Payment,
    PaymentStatus,
)


class FakeNode:
    """Decodes any BOLT11-shaped string as an invoice for ``amount_msat`` (set by the
    test), pays each payment request once (a second pay returns the first, as lnd)."""

    def __init__(self) -> None:
        self.amount_msat = 0
        self.paid: Counter[str] = Counter()
        self.payments: dict[str, Payment] = {}

    async def decode_invoice(self, payment_request: str) -> DecodedInvoice:
        return DecodedInvoice(
            destination="02" + "11" * 32,
            payment_hash=hashlib.sha256(_preimage(check_bolt11(payment_request))).hexdigest(),
            amount_msat=self.amount_msat,
            timestamp=0,
            expiry_s=3600,
            description="",
        )

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
