"""Test data for the ledger: a fixed site, its signers, and in-memory chain builders.

A test site's log starts with the owner's *genesis*: the enrolment of the
utility and of devices ``0..max_device_index``, each with its own test key
(:class:`tests.sites.TestSite`). :meth:`Site.open` ingests it into every store,
and the owner's chain continues after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from p2pgrid.identity import Signer, SiteIdentity
from p2pgrid.ledger import (
    Author,
    Body,
    Enrol,
    Entry,
    LogStore,
    Membership,
    Role,
    sign_entry,
)
from p2pgrid.ledger.entry import GENESIS_PREV
from tests.sites import TestSite

T0_MS = 1_700_000_000_000
OpenStore = Callable[[str], Awaitable[LogStore]]


GENESIS_T0_MS = T0_MS - 3_600_000


@dataclasses.dataclass(frozen=True)
class Site:
    """A site with deterministic, independent keys: owner, utility and devices 0..n.

    ``membership`` knows the genesis enrolments (for checks in tests); every
    store has its own, learnt from its log.
    """

    keys: TestSite
    membership: Membership
    genesis: tuple[Entry, ...]
    max_device_index: int

    @classmethod
    def make(cls, seed: bytes = b"p2pgrid ledger tests", max_device_index: int = 63) -> Site:
        keys = TestSite(seed)
        genesis: list[Entry] = []
        bodies = [Enrol(Role.UTILITY, 0, keys.utility.pubkey, "utility", 0)]
        bodies += [
            Enrol(Role.DEVICE, i, keys.device(i).pubkey, "test", 0)
            for i in range(max_device_index + 1)
        ]
        for body in bodies:
            genesis.append(
                sign_entry(
                    keys.owner,
                    keys.identity.site_hash,
                    author=Author.owner(),
                    seq=len(genesis) + 1,
                    prev=genesis[-1].id if genesis else GENESIS_PREV,
                    period=0,
                    timestamp_ms=GENESIS_T0_MS + len(genesis),
                    body=body,
                )
            )
        membership = Membership(keys.identity)
        membership.learn_from(genesis)
        return cls(keys, membership, tuple(genesis), max_device_index)

    @property
    def identity(self) -> SiteIdentity:
        return self.keys.identity

    @property
    def owner(self) -> Signer:
        return self.keys.owner

    @property
    def utility(self) -> Signer:
        return self.keys.utility

    def device(self, index: int) -> Signer:
        return self.keys.device(index)

    def signer(self, author: Author) -> Signer:
        if author.role is Role.DEVICE:
            return self.device(author.index)
        return self.owner if author.role is Role.OWNER else self.utility

    def chain(self, author: Author) -> Chain:
        """A chain builder; the owner's continues after the genesis."""
        return Chain(self, author, start=self.genesis if author.role is Role.OWNER else ())

    async def open(
        self, path: Path, name: str | None = None, *, max_pending: int | None = None
    ) -> LogStore:
        """A store of this site with the genesis ingested."""
        store = await LogStore.open(
            path, self.identity, name=name or path.stem, max_pending=max_pending
        )
        await store.ingest_many([e.raw for e in self.genesis])
        return store


class Chain:
    """Signs one author's entries in memory, linking each to the previous one."""

    def __init__(
        self,
        site: Site,
        author: Author,
        signer: Signer | None = None,
        *,
        start: Sequence[Entry] = (),
    ) -> None:
        self.site = site
        self.author = author
        self.signer = signer or site.signer(author)
        self.entries: list[Entry] = list(start)
        self._base = len(start)

    def next(self, body: Body, *, period: int = 1, ts: int | None = None) -> Entry:
        prev = self.entries[-1] if self.entries else None
        entry = self.sign(
            body,
            seq=len(self.entries) + 1,
            prev=prev.id if prev else GENESIS_PREV,
            period=period,
            ts=ts if ts is not None else T0_MS + 1000 * (len(self.entries) - self._base),
        )
        self.entries.append(entry)
        return entry

    def sign(self, body: Body, *, seq: int, prev: bytes, period: int = 1, ts: int = T0_MS) -> Entry:
        return sign_entry(
            self.signer,
            self.site.membership.site_hash,
            author=self.author,
            seq=seq,
            prev=prev,
            period=period,
            timestamp_ms=ts,
            body=body,
        )

    def fork(self, body: Body, *, at_seq: int | None = None) -> Entry:
        """A different entry at ``at_seq`` (default: the last seq), same predecessor."""
        seq = at_seq or len(self.entries)
        prev = self.entries[seq - 2].id if seq > 1 else GENESIS_PREV
        return self.sign(body, seq=seq, prev=prev, ts=self.entries[seq - 1].timestamp_ms)
