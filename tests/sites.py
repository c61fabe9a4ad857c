"""Test sites with deterministic keys: each key is its own hash of a seed and a label.

Never a derivation: a device's test key tells nothing about the owner's or another
device's, as in production (where each key is random).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterable

from p2pgrid.identity import Role, Roster, Signer, SiteIdentity


@dataclasses.dataclass(frozen=True)
class TestSite:
    """An owner, a utility and devices, each with an independent key."""

    __test__ = False  # not a pytest test class
    seed: bytes

    def key(self, *labels: object) -> Signer:
        text = "\0".join(("p2pgrid test key", self.seed.hex(), *map(str, labels)))
        return Signer.from_secret(hashlib.sha256(text.encode()).digest())

    @functools.cached_property
    def owner(self) -> Signer:
        return self.key("owner")

    @functools.cached_property
    def utility(self) -> Signer:
        return self.key("utility")

    @functools.cached_property
    def identity(self) -> SiteIdentity:
        return SiteIdentity(self.owner.pubkey)

    def device(self, index: int) -> Signer:
        return self.key("device", index)

    def roster(self, devices: Iterable[int] = range(64), *, utility: bool = True) -> Roster:
        """A roster that enrols ``devices`` (and the utility) directly, for net tests
        that have no log; the product fills rosters only from the log."""
        roster = Roster(self.identity)
        if utility:
            roster.enrol(Role.UTILITY, 0, self.utility.pubkey, 0)
        for index in devices:
            roster.enrol(Role.DEVICE, index, self.device(index).pubkey, 0)
        return roster
