"""Who may write to a site's log, and checking that they did.

Members are the site owner (the key that *is* the site identity) and every key
the owner enrolled in the log with an ``enrol`` entry: the utility and the
devices, each with its own key. A ``revoke`` entry ends a membership: entries of
that member with a sequence number above the revocation's ``last_seq`` are
refused. So anyone holding the log and the site's public identity computes the
membership: no server, no key derivation.

:class:`Membership` wraps the site's :class:`~p2pgrid.identity.Roster`; the
:class:`~p2pgrid.ledger.store.LogStore` feeds it the owner's entries as they join
the log (in chain order), and the net layer reads the same roster.
"""

from __future__ import annotations

from collections.abc import Iterable

import coincurve

from p2pgrid.identity import SIGNATURE_LEN, Member, Roster, SiteIdentity
from p2pgrid.ledger.bodies import Enrol, Revoke, Role
from p2pgrid.ledger.entry import Author, Entry
from p2pgrid.ledger.errors import LedgerError
from p2pgrid.ledger.outcome import RejectReason


class Membership:
    """Checks an entry's author, role, enrolment, revocation and signature."""

    def __init__(self, site: SiteIdentity, roster: Roster | None = None) -> None:
        if roster is not None and roster.site != site:
            raise LedgerError("the roster belongs to another site")
        self.site = site
        self.site_hash = site.site_hash
        self.roster = roster if roster is not None else Roster(site)
        self._xonly: dict[bytes, coincurve.PublicKeyXOnly] = {}

    def member(self, author: Author) -> Member | None:
        """The author as a member, counting the changes of the store's batch in
        flight (see :meth:`~p2pgrid.identity.Roster.begin`)."""
        return self.roster.draft_member(author.role, author.index)

    def is_member(self, author: Author) -> bool:
        return self.member(author) is not None

    def pubkey(self, author: Author) -> bytes:
        """The compressed public key of a member; :class:`LedgerError` for others."""
        member = self.member(author)
        if member is None:
            raise LedgerError(f"{author} is not a member of site {self.site.site_id}")
        return member.pubkey

    def admits(self, entry: Entry) -> RejectReason | None:
        """The membership checks without the signature: None if the author is a
        member that may author this kind in this period at this sequence number."""
        member = self.member(entry.author)
        if member is None:
            return RejectReason.NON_MEMBER
        if entry.author.role not in entry.body.ROLES:
            return RejectReason.ROLE_NOT_ALLOWED
        if entry.period < member.from_period:
            return RejectReason.BEFORE_ENROLMENT
        if member.last_seq is not None and entry.seq > member.last_seq:
            return RejectReason.REVOKED
        return None

    def check(self, entry: Entry) -> RejectReason | None:
        """None if a member may author this entry and signed it; else the reason."""
        reason = self.admits(entry)
        if reason is not None:
            return reason
        if len(entry.signature) != SIGNATURE_LEN:
            return RejectReason.BAD_SIGNATURE
        # BIP340 over the 32-byte id, which is SHA-256 of the signing message:
        # the same check as p2pgrid.identity.verify, with the parsed key cached.
        pubkey = self.pubkey(entry.author)
        try:
            key = self._xonly.get(pubkey)
            if key is None:
                key = self._xonly[pubkey] = coincurve.PublicKeyXOnly(pubkey[1:])
            ok = key.verify(entry.signature, entry.id)
        except ValueError:
            ok = False
        return None if ok else RejectReason.BAD_SIGNATURE

    def learn(self, entry: Entry) -> Revoke | None:
        """Apply an owner's ``enrol`` or ``revoke`` entry that joined the log (the
        caller checked it). Returns the revocation if it lowered a member's limit,
        so that the caller drops that member's entries beyond it."""
        if entry.author.role is not Role.OWNER:
            return None
        body = entry.body
        if isinstance(body, Enrol):
            self.roster.enrol(Role(body.role), body.index, body.pubkey, body.from_period)
        elif isinstance(body, Revoke) and self.roster.revoke(
            Role(body.role), body.index, body.last_seq
        ):
            return body
        return None

    def learn_from(self, entries: Iterable[Entry]) -> None:
        """Apply the owner's enrolments and revocations among ``entries`` (checked
        here), in the owner's chain order: how a replica that does not keep
        another site's log knows that site's members (e.g. to check evidence)."""
        owner = sorted(
            (e for e in entries if e.author.role is Role.OWNER), key=lambda e: (e.seq, e.id)
        )
        for entry in owner:
            if self.check(entry) is None:
                self.learn(entry)
