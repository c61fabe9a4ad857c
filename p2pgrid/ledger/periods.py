"""Which period an entry belongs to, and when an author's chain may go back.

An entry belongs to the billing period of what it records, not to the period
of the wall clock when it is written. Most entries are written while their
period runs, so an author's chain is ordered by period too. Money moves and
disputes settle an obligation that may be older than the author's latest entry
(an invoice of period ``p`` is paid while the payer already meters ``p + 1``; a
share paid across the boundary is logged when lnd says it succeeded; the utility
invoices a device whose last readings of ``p`` reached it late, after it granted
``p + 1``'s budget): those
kinds, :data:`OBLIGATION_KINDS`, carry the period of the obligation and may
name a period earlier than the author's earlier entries. For every other kind
the period is ``>=`` the highest period of the author's earlier entries (so a
late payment does not open the past to other kinds; docs/protocol-log.md,
section 4).
"""

from __future__ import annotations

from p2pgrid.ledger.bodies import EntryKind

OBLIGATION_KINDS = frozenset(
    {
        EntryKind.SHARE,
        EntryKind.SALE,
        EntryKind.PAYMENT,
        EntryKind.DISPUTE,
        EntryKind.SITE_SHARE,
        EntryKind.INVOICE,
        EntryKind.SITE_SALE,
        # a seller logs a sale of leftover allowance it finds paid at the period's
        # close, or after a restart: by then it may have written its next
        # period's first order (docs/market.md 2.9)
        EntryKind.ALLOWANCE_SALE,
        # a device carries its unspent balance over at the period's close, by
        # then it may have written its next period's first order; or after a
        # restart, if it was killed during the close (one per period: its
        # record key)
        EntryKind.CARRY_OVER,
    }
)


def period_allowed(kind: EntryKind, period: int, floor: int) -> bool:
    """May an entry of ``kind`` in ``period`` follow a chain whose highest period is ``floor``?"""
    return period >= floor or kind in OBLIGATION_KINDS
