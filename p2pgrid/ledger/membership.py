"""Who may write to a site's log, and checking that they did.

Members are: the site's devices (device ``i`` signs with the non-hardened BIP32
child ``i`` of the site's xpub, ``i`` up to ``max_device_index``), the site owner
(by default the xpub's own key) and the utility (a key given in the config).
Anyone holding the xpub derives every member's key: no server, no enrolment.
"""

from __future__ import annotations

import dataclasses

import coincurve
from bitcoinlib.keys import HDKey

from p2pgrid.identity import NETWORK, PUBKEY_LEN, SIGNATURE_LEN, SiteIdentity
from p2pgrid.ledger.bodies import Role
from p2pgrid.ledger.entry import Author, Entry, site_hash
from p2pgrid.ledger.errors import LedgerError
from p2pgrid.ledger.outcome import RejectReason

DEFAULT_MAX_DEVICE_INDEX = 65_535


@dataclasses.dataclass(frozen=True)
class MembershipConfig:
    """The keys that make up a site's log. Built once, passed to the store."""

    site: SiteIdentity
    utility_pubkey: bytes
    owner_pubkey: bytes | None = None  # None: the public key of the site's xpub itself
    max_device_index: int = DEFAULT_MAX_DEVICE_INDEX

    def __post_init__(self) -> None:
        if len(self.utility_pubkey) != PUBKEY_LEN:
            raise LedgerError("utility_pubkey must be a 33-byte compressed key")
        if self.owner_pubkey is not None and len(self.owner_pubkey) != PUBKEY_LEN:
            raise LedgerError("owner_pubkey must be a 33-byte compressed key")
        if not 0 <= self.max_device_index < 2**31:
            raise LedgerError("max_device_index must be in 0..2**31-1")


class Membership:
    """Derives and caches members' keys; checks an entry's author, role and signature."""

    def __init__(self, config: MembershipConfig) -> None:
        self.config = config
        self.site_hash = site_hash(config.site)
        owner = config.owner_pubkey
        if owner is None:
            owner = bytes(HDKey(config.site.xpub, network=NETWORK).public_byte)
        self._fixed = {Author.owner(): owner, Author.utility(): config.utility_pubkey}
        self._xonly: dict[Author, coincurve.PublicKeyXOnly] = {}

    def is_member(self, author: Author) -> bool:
        if author.role is Role.DEVICE:
            return author.index <= self.config.max_device_index
        return author in self._fixed

    def pubkey(self, author: Author) -> bytes:
        """The compressed public key of a member; :class:`LedgerError` for others."""
        if not self.is_member(author):
            raise LedgerError(f"{author} is not a member of site {self.config.site.site_id}")
        if author.role is Role.DEVICE:
            return self.config.site.device_pubkey(author.index)
        return self._fixed[author]

    def _xonly_key(self, author: Author) -> coincurve.PublicKeyXOnly:
        key = self._xonly.get(author)
        if key is None:
            key = coincurve.PublicKeyXOnly(self.pubkey(author)[1:])
            self._xonly[author] = key
        return key

    def check(self, entry: Entry) -> RejectReason | None:
        """None if a member may author this entry and signed it; else the reason."""
        if not self.is_member(entry.author):
            return RejectReason.NON_MEMBER
        if entry.author.role not in entry.body.ROLES:
            return RejectReason.ROLE_NOT_ALLOWED
        if len(entry.signature) != SIGNATURE_LEN:
            return RejectReason.BAD_SIGNATURE
        # BIP340 over the 32-byte id, which is SHA-256 of the signing message:
        # the same check as p2pgrid.identity.verify, with the parsed key cached.
        try:
            ok = self._xonly_key(entry.author).verify(entry.signature, entry.id)
        except ValueError:
            ok = False
        return None if ok else RejectReason.BAD_SIGNATURE
