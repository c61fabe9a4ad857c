"""Pay only what you owe: the checks every payment path runs on an invoice.

An agent pays an invoice only if it pays the party it should (``destination``:
the utility's node, or the lnd node of the device it deals with), exactly the
amount owed, is bound to this obligation (its description is the canonical
description of this (site, device, period) bill, share request or sale, so an
invoice made for anything else does not match) and is not about to expire.
Every description an agent builds here ends with its payee field,
``payee <site_id>/<device>`` (:func:`payee_of`).
:func:`check_invoice` returns why not, or ``None``.

Amounts below :data:`MIN_PAYMENT_MSAT` are never sent: a Lightning channel
carries no HTLC below its ``min_htlc`` (1 sat by default in lnd), so such a
payment can only fail. Share requests are raised to it and smaller share offers
and sale trades are not made; a period's bill below it is raised to it
(docs/protocol.md).
"""

from __future__ import annotations

import hashlib
import hmac

from p2pgrid.billing import MIN_BILL_MSAT
from p2pgrid.lightning import DecodedInvoice
from p2pgrid.market import MessageError, Party

#: The smallest payment an agent sends or asks for (lnd's default min_htlc; the
#: utility's bills are raised to the same floor, :data:`p2pgrid.billing.MIN_BILL_MSAT`).
MIN_PAYMENT_MSAT = MIN_BILL_MSAT
#: An invoice that expires sooner than this is not paid (the payment takes time).
EXPIRY_MARGIN_S = 10


def _party(party: Party) -> str:
    return f"{party.site_id}/{party.device}"


#: The last two words of every description an agent gives its invoices: the
#: payee, ``payee <site_id>/<device>`` (docs/protocol.md, "Invoice descriptions").
PAYEE_FIELD = "payee"


def _payee(party: Party) -> str:
    return f" {PAYEE_FIELD} {_party(party)}"


def share_memo(request_id: bytes, requester: Party, giver: Party, amount_msat: int) -> str:
    """The description of a share invoice: binds it to one request and grant."""
    return (
        f"p2pgrid share {request_id.hex()} from {_party(giver)} "
        f"to {_party(requester)} {amount_msat} msat" + _payee(requester)
    )


def sale_memo(
    bid_id: bytes,
    seller: Party,
    buyer: Party,
    energy_wh: int,
    amount_msat: int,
    *,
    on_delivery: bool = False,
) -> str:
    """The description of a sale invoice: binds it to one bid and trade (and, for
    a hold invoice paid on delivery, says so: a buyer and a seller that disagree
    on the site's ``pay_on_delivery`` refuse each other's invoices)."""
    memo = (
        f"p2pgrid sale {bid_id.hex()} {energy_wh} Wh from {_party(seller)} "
        f"to {_party(buyer)} {amount_msat} msat"
    )
    return (memo + " on delivery" if on_delivery else memo) + _payee(seller)


def hold_preimage(
    secret: bytes,
    round_: tuple[int, int],
    book_id: bytes,
    seller: Party,
    buyer: Party,
    energy_wh: int,
    amount_msat: int,
) -> bytes:
    """The preimage of a seller's hold invoice for one trade of round (period,
    interval) on ``book_id``: derived from the seller's device key (``secret``),
    so a seller restarted while the buyer's payment is held re-derives it and
    can still settle (docs/market.md, section 6.2). HMAC-SHA256: the preimage,
    public once settled, reveals nothing of the key."""
    period, interval = round_
    key = (
        f"p2pgrid/hold/v1/{period}/{interval}/{book_id.hex()}/{_party(seller)}/"
        f"{_party(buyer)}/{energy_wh}/{amount_msat}"
    )
    return hmac.new(secret, key.encode(), hashlib.sha256).digest()


def payee_of(memo: str) -> Party | None:
    """The device an invoice of this protocol pays: its description's payee field
    (the last two words, ``payee <site_id>/<device>``, written by every builder
    here: :func:`share_memo`, :func:`sale_memo`, :func:`site_sale_memo`,
    :func:`allowance_memo`); None for any other description. A site node tells
    its light devices' invoices apart by it (:mod:`p2pgrid.agent.sitewallet`)."""
    words = memo.split(" ")
    if len(words) < 4 or words[0] != "p2pgrid" or words[-2] != PAYEE_FIELD:
        return None
    site_id, _, device = words[-1].rpartition("/")
    if not device.isdecimal() or device != str(int(device)):
        return None
    try:
        return Party(site_id, int(device))
    except MessageError:
        return None


def site_sale_memo(
    order_id: bytes, seller: Party, buyer: Party, energy_wh: int, amount_msat: int
) -> str:
    """The description of a sale's invoice to a buyer of another site: binds it
    to the seller's ``order`` entry (its id) and the trade."""
    return (
        f"p2pgrid site sale {order_id.hex()} {energy_wh} Wh from {_party(seller)} "
        f"to {_party(buyer)} {amount_msat} msat" + _payee(seller)
    )


def allowance_memo(
    request_id: bytes,
    seller: Party,
    buyer: Party,
    allowance_msat: int,
    price_msat: int,
    period: int,
) -> str:
    """The description of an allowance invoice: binds it to one request, the
    two parties, the allowance, its price and the period (docs/market.md 2.9)."""
    return (
        f"p2pgrid allowance {request_id.hex()} {allowance_msat} msat of period {period} "
        f"from {_party(seller)} to {_party(buyer)} for {price_msat} msat" + _payee(seller)
    )


def check_invoice(
    decoded: DecodedInvoice,
    *,
    destination: str | None,
    amount_msat: int,
    description: str,
    now: float,
) -> str | None:
    """Why ``decoded`` must not be paid, or None if it is exactly what is owed."""
    if destination is None:
        return "the payee's Lightning node is unknown"
    if decoded.destination != destination:
        return f"the invoice pays node {decoded.destination[:16]}..., not {destination[:16]}..."
    if decoded.amount_msat != amount_msat:
        return f"the invoice asks {decoded.amount_msat} msat, {amount_msat} are owed"
    if decoded.description != description:
        return f"the invoice is for {decoded.description[:80]!r}, not {description[:80]!r}"
    if decoded.expires_at < now + EXPIRY_MARGIN_S:
        return f"the invoice expires at {decoded.expires_at} (now {now:.0f})"
    return None
