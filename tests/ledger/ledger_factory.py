"""Test data for the ledger: a fixed site, its signers, and in-memory chain builders."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from p2pgrid.identity import Signer, SiteOwner
from p2pgrid.ledger import (
    Author,
    Body,
    Entry,
    LogStore,
    Membership,
    MembershipConfig,
    Role,
    sign_entry,
)
from p2pgrid.ledger.entry import GENESIS_PREV

T0_MS = 1_700_000_000_000
OpenStore = Callable[[str], Awaitable[LogStore]]


@dataclasses.dataclass(frozen=True)
class Site:
    """A site with deterministic keys: owner, utility and devices 0..n."""

    owner: SiteOwner
    utility: Signer
    membership: Membership

    @classmethod
    def make(cls, seed: bytes = b"p2pgrid ledger tests", max_device_index: int = 63) -> Site:
        owner = SiteOwner.from_seed(hashlib.sha256(seed).digest())
        utility = Signer.from_secret(hashlib.sha256(seed + b"/utility").digest())
        config = MembershipConfig(
            site=owner.identity,
            utility_pubkey=utility.pubkey,
            max_device_index=max_device_index,
        )
        return cls(owner, utility, Membership(config))

    def signer(self, author: Author) -> Signer:
        if author.role is Role.DEVICE:
            return self.owner.device_signer(author.index)
        return self.owner.owner_signer if author.role is Role.OWNER else self.utility

    def chain(self, author: Author) -> Chain:
        return Chain(self, author)

    async def open(self, path: Path, name: str | None = None) -> LogStore:
        return await LogStore.open(path, self.membership, name=name or path.stem)


class Chain:
    """Signs one author's entries in memory, linking each to the previous one."""

    def __init__(self, site: Site, author: Author, signer: Signer | None = None) -> None:
        self.site = site
        self.author = author
        self.signer = signer or site.signer(author)
        self.entries: list[Entry] = []

    def next(self, body: Body, *, period: int = 1, ts: int | None = None) -> Entry:
        prev = self.entries[-1] if self.entries else None
        entry = self.sign(
            body,
            seq=len(self.entries) + 1,
            prev=prev.id if prev else GENESIS_PREV,
            period=period,
            ts=ts if ts is not None else T0_MS + 1000 * len(self.entries),
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
