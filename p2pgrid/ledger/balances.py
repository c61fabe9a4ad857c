"""Balances kept up to date as entries are stored, equal to the full fold.

:func:`p2pgrid.ledger.views.fold` reads the whole log and folds every period;
an agent asks for its balance several times per interval. A
:class:`BalanceBook` answers :meth:`~BalanceBook.account` (and
:meth:`~BalanceBook.balance`) of any (device, period) from per-period states
that it updates entry by entry, fed by a :class:`~p2pgrid.ledger.LogStore` it
follows (:meth:`BalanceBook.follow`: every committed batch, see
:meth:`LogStore.subscribe`) or by :meth:`BalanceBook.add`.

The contract: after any sequence of entries, ``book.account(d, p) ==
fold(those entries, ...).account(d, p)`` for every device and period (a
property test checks it after every entry, in any arrival order). The fold's
order makes that hold by these rules:

- An entry that sorts after every entry already applied to its period (the
  fold's order within a period: timestamp, author, seq, id) is applied to that
  period's state at once: the common case, an agent's own entries.
- An entry that sorts earlier (one that replication delivered late), a new
  equivocating sibling that wins (smallest id), or an entry in a period before
  the last one folded marks its period *stale*; so does a revocation, for the
  periods of the entries it drops. The next question about that period or a
  later one re-folds from the oldest stale period, from the entries the book
  holds in memory (never the database), and only up to the period asked.
- A ``carry_over`` changes the next period's opening balance, and a
  ``site_share_in`` or an ``allowance_sale`` what later periods may still
  credit (each counts once in the log): after applying one,
  the periods after it are stale.

So a late arrival costs one re-fold of its period (and of the later ones),
not of the whole log; :attr:`BalanceBook.refolds` counts the periods re-folded.
Invoice payments (``paid_msat``, which cross periods) are not kept: ask
:func:`fold` for them.

**Held amounts** (outside the fold): a payment that left the device but is not
logged yet, a hold invoice paid on delivery and ACCEPTED at the seller
(docs/market.md section 6.2), is committed though no entry shows it. Its payer
records it with :meth:`BalanceBook.hold` and drops it with
:meth:`BalanceBook.release` once settled (its ``sale`` entry now counts) or
cancelled; :meth:`BalanceBook.available` is the balance less what is held, the
amount the device may still spend. Holds are this process's own payments in
flight, not log state: a replica's fold never sees them.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Mapping

from p2pgrid.errors import FatalError
from p2pgrid.ledger.bodies import AllowanceSale, CarryOver, SiteShareIn
from p2pgrid.ledger.entry import Author, Entry
from p2pgrid.ledger.errors import LedgerError
from p2pgrid.ledger.membership import Membership
from p2pgrid.ledger.store import LogChange, LogStore
from p2pgrid.ledger.views import DeviceAccount, _Period, _SiteCredits

_Key = tuple[int, Author, int, bytes]


def _key(entry: Entry) -> _Key:
    """The fold's order within a period."""
    return (entry.timestamp_ms, entry.author, entry.seq, entry.id)


@dataclasses.dataclass(slots=True)
class _Folded:
    """A period folded up to ``last`` (the key of the last entry applied)."""

    state: _Period
    credit: _SiteCredits  # site shares counted up to and including this period
    last: _Key | None = None

    def carried_out(self) -> dict[int, int]:
        accounts = self.state.accounts.items()
        return {d: a["carried_out_msat"] for d, a in accounts if a["carried_out_msat"]}


class BalanceBook:
    """Per (device, period) accounts of one log, kept as entries arrive."""

    def __init__(
        self,
        *,
        site_hash: bytes | None = None,
        peer_sites: Mapping[bytes, Membership] | None = None,
    ) -> None:
        """``site_hash`` and ``peer_sites``: as for :func:`~p2pgrid.ledger.fold`."""
        self._site_hash = site_hash
        self._peer_sites = dict(peer_sites or {})
        self._chosen: dict[tuple[Author, int], Entry] = {}  # the counted one of each seq
        self._by_period: dict[int, list[Entry]] = {}  # chosen entries, in fold order
        self._folded: dict[int, _Folded] = {}  # up to date for periods below _stale
        self._stale: int | None = None  # the oldest period whose state may be out of date
        self._classes: dict[int, str] = {}
        self._held: dict[str, tuple[int, int, int]] = {}  # hash -> (device, period, msat)
        self._store: LogStore | None = None
        #: Periods re-folded so far (the cost of late arrivals; for tests and benches).
        self.refolds = 0

    # -- feeding -----------------------------------------------------------------

    async def follow(self, store: LogStore) -> None:
        """Hear of every batch ``store`` commits from now on, then take in its log.

        Subscribing first means no batch falls between the read and the
        subscription; an entry heard of twice is counted once."""
        if self._store is not None:
            raise FatalError("a balance book follows one store")
        self._store = store
        store.subscribe(self._on_change)
        self.add(await store.entries())

    def close(self) -> None:
        """Stop following the store (safe to call twice)."""
        if self._store is not None:
            self._store.unsubscribe(self._on_change)
            self._store = None

    def _on_change(self, change: LogChange) -> None:
        self.add(change.appended)
        for author, last_seq in change.revoked:
            self.revoke(author, last_seq)

    def add(self, entries: Iterable[Entry]) -> None:
        """Take in entries (any order; duplicates and siblings allowed)."""
        for entry in entries:
            self._add(entry)

    def revoke(self, author: Author, last_seq: int) -> None:
        """Forget ``author``'s entries above ``last_seq`` (a revocation dropped them)."""
        for key in [k for k in self._chosen if k[0] == author and k[1] > last_seq]:
            entry = self._chosen.pop(key)
            self._remove(entry)
            self._mark(entry.period)

    def _add(self, entry: Entry) -> None:
        slot = (entry.author, entry.seq)
        held = self._chosen.get(slot)
        if held is not None:
            if entry.id >= held.id:
                return  # the same entry, or a sibling that does not count
            self._remove(held)  # the sibling with the smallest id counts instead
            self._mark(held.period)
            self._chosen[slot] = entry
            self._insert(entry)
            self._mark(entry.period)
            return
        self._chosen[slot] = entry
        self._insert(entry)
        folded = self._folded.get(entry.period)
        in_order = (
            folded is not None
            and (self._stale is None or entry.period < self._stale)
            and (folded.last is None or _key(entry) > folded.last)
        )
        if not in_order:
            self._mark(entry.period)
            return
        assert folded is not None
        folded.state.apply(entry, self._classes, folded.credit)
        folded.last = _key(entry)
        if isinstance(entry.body, CarryOver | SiteShareIn | AllowanceSale):
            self._mark(entry.period + 1)

    def _insert(self, entry: Entry) -> None:
        bisect.insort(self._by_period.setdefault(entry.period, []), entry, key=_key)

    def _remove(self, entry: Entry) -> None:
        entries = self._by_period[entry.period]
        entries.remove(entry)
        if not entries:
            del self._by_period[entry.period]

    def _mark(self, period: int) -> None:
        if self._stale is None or period < self._stale:
            self._stale = period

    # -- asking ------------------------------------------------------------------

    def account(self, device: int, period: int) -> DeviceAccount:
        """What :func:`~p2pgrid.ledger.fold` would say of ``device`` in ``period``."""
        self._refresh(period)
        folded = self._folded.get(period)
        if folded is None or device not in folded.state.accounts:
            return DeviceAccount(device)
        return DeviceAccount(device=device, **folded.state.accounts[device])

    def balance(self, device: int, period: int) -> int:
        return self.account(device, period).balance_msat

    # -- held amounts --------------------------------------------------------------

    def hold(self, payment_hash: str, *, device: int, period: int, amount_msat: int) -> None:
        """Count ``amount_msat`` of ``device`` in ``period`` as committed until
        :meth:`release`; holding one payment hash again changes nothing."""
        if amount_msat <= 0:
            raise LedgerError(f"a held amount is positive, not {amount_msat} msat")
        self._held.setdefault(payment_hash, (device, period, amount_msat))

    def release(self, payment_hash: str) -> None:
        """The held payment resolved (settled and logged, or failed); safe twice."""
        self._held.pop(payment_hash, None)

    def held_msat(self, device: int, period: int) -> int:
        return sum(a for d, p, a in self._held.values() if (d, p) == (device, period))

    def available(self, device: int, period: int) -> int:
        """:meth:`balance` less what ``device`` holds in payments of ``period``."""
        return self.balance(device, period) - self.held_msat(device, period)

    def _refresh(self, upto: int) -> None:
        """Re-fold the stale periods up to ``upto``, the way :func:`fold` does."""
        start = self._stale
        if start is None or start > upto:
            return
        for number in [p for p in self._folded if p >= start]:
            del self._folded[number]
        before = [p for p in self._folded if p < start]
        prev = self._folded[max(before)] if before else None
        credit = _SiteCredits(self._site_hash, self._peer_sites)
        if prev is not None:
            credit.counted = set(prev.credit.counted)
        carried = prev.carried_out() if prev is not None and max(before) == start - 1 else {}
        todo = sorted(p for p in self._by_period if start <= p <= upto)
        if carried and (not todo or todo[0] != start):
            todo.insert(0, start)
        while todo:
            number = todo.pop(0)
            folded = _Folded(_Period(number, carried), credit)
            for entry in self._by_period.get(number, ()):
                folded.state.apply(entry, self._classes, credit)
                folded.last = _key(entry)
            self._folded[number] = folded
            self.refolds += 1
            credit = _SiteCredits(self._site_hash, self._peer_sites)
            credit.counted = set(folded.credit.counted)
            carried = folded.carried_out()
            if carried and number < upto and (not todo or todo[0] != number + 1):
                todo.insert(0, number + 1)
        self._stale = upto + 1
