"""Site identity: keys, signatures, and who belongs to a site, with no server.

A **site** is identified by its owner's public key (33-byte compressed
secp256k1)::

    site_hash = SHA-256("p2pgrid/site/v1" || owner_pubkey)      (32 bytes)
    site_id   = the first 16 hex characters of site_hash

Every other member has its **own, independent** key pair: each device, and the
utility. The owner makes a key a member by signing an ``enrol`` entry in the
site's log and may end it with a ``revoke`` entry (docs/protocol-log.md). No key
is derived from another, so a device's secret tells nothing about the owner's
key or another device's key.

:class:`Roster` is the membership of one site as far as its enrolments are
known: the owner (always, from the identity), the utility and the devices. The
site's log store keeps its roster up to date from the owner's entries; the net
layer reads the same roster to check envelopes. A roster's state is one
immutable snapshot replaced as a whole on each change, so the net layer's
thread reads a consistent state without a lock; a watcher (:meth:`Roster.watch`)
is called after each change (the net layer re-reads what peers proved then).

A log store changes the roster in batches that may roll back: between
:meth:`Roster.begin` and :meth:`Roster.commit` (or :meth:`Roster.rollback`) its
enrolments and revocations go to a draft that only :meth:`Roster.draft_member`
reads (the store checks the rest of the batch against it). Every other reader
sees, and every watcher hears of, committed changes only: once per committed
batch, never for a rolled-back one.

Signatures are BIP340 Schnorr (64 bytes) over the SHA-256 of the message bytes,
made and checked with libsecp256k1 (coincurve).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import coincurve

from p2pgrid.errors import FatalError, ReportableError

SIGNATURE_LEN = 64
PUBKEY_LEN = 33
#: Devices of a site have indices 0..MAX_DEVICE_INDEX (the log, the net layer and
#: the scenario all use this one limit).
MAX_DEVICE_INDEX = 65_535
#: Net-layer member indices of the two members that are not devices (a host that
#: speaks for the owner or the utility names these in its envelopes).
OWNER_NET_INDEX = 0xFFFF_FFFE
UTILITY_NET_INDEX = 0xFFFF_FFFF
SITE_TAG = b"p2pgrid/site/v1"


class IdentityError(ReportableError):
    """A key or index is malformed."""


class Role(enum.IntEnum):
    """Who a member is. The wire value is the enum value (one byte)."""

    DEVICE = 0
    OWNER = 1
    UTILITY = 2


def _digest(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()


def is_pubkey(data: bytes) -> bool:
    """True if ``data`` is a 33-byte compressed secp256k1 point on the curve."""
    if len(data) != PUBKEY_LEN or data[0] not in (2, 3):
        return False
    try:
        coincurve.PublicKey(data)
    except ValueError:
        return False
    return True


def verify(pubkey: bytes, message: bytes, signature: bytes) -> bool:
    """Check a BIP340 signature by the compressed secp256k1 ``pubkey``."""
    if len(pubkey) != PUBKEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        xonly = coincurve.PublicKeyXOnly(pubkey[1:])
        return bool(xonly.verify(signature, _digest(message)))
    except ValueError:
        return False


@dataclass(frozen=True)
class Signer:
    """A private key that signs; ``pubkey`` is its compressed public key."""

    secret: bytes = field(repr=False)
    pubkey: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> Signer:
        try:
            key = coincurve.PrivateKey(secret)
        except ValueError as exc:
            raise IdentityError("not a secp256k1 secret key") from exc
        return cls(secret=secret, pubkey=key.public_key.format(compressed=True))

    @classmethod
    def generate(cls) -> Signer:
        """A fresh random key (the operating system's CSPRNG)."""
        return cls.from_secret(coincurve.PrivateKey().secret)

    def sign(self, message: bytes) -> bytes:
        return bytes(coincurve.PrivateKey(self.secret).sign_schnorr(_digest(message)))


@dataclass(frozen=True)
class SiteIdentity:
    """The public face of a site: its owner's public key."""

    owner_pubkey: bytes

    def __post_init__(self) -> None:
        if not is_pubkey(self.owner_pubkey):
            raise IdentityError("a site identity is a 33-byte compressed secp256k1 public key")

    @classmethod
    def from_hex(cls, text: str) -> SiteIdentity:
        try:
            return cls(bytes.fromhex(text))
        except ValueError as exc:
            raise IdentityError(f"not a hex public key: {text[:16]}...") from exc

    @functools.cached_property
    def site_hash(self) -> bytes:
        """SHA-256 of ``"p2pgrid/site/v1" || owner_pubkey``: binds entries to the site."""
        return hashlib.sha256(SITE_TAG + self.owner_pubkey).digest()

    @functools.cached_property
    def site_id(self) -> str:
        """A short stable name for the site: the first 16 hex characters of ``site_hash``."""
        return self.site_hash.hex()[:16]


@dataclass(frozen=True, slots=True)
class Member:
    """A member's key and the limits the owner set: entries of a period before
    ``from_period`` are not the member's; after a revocation, entries with a
    sequence number above ``last_seq`` are refused."""

    pubkey: bytes
    from_period: int = 0
    last_seq: int | None = None  # None: not revoked

    @property
    def revoked(self) -> bool:
        return self.last_seq is not None


@dataclass(frozen=True, slots=True)
class _RosterState:
    enrolled: Mapping[tuple[Role, int], Member]
    revoked: Mapping[tuple[Role, int], int]  # the lowest last_seq of any revocation

    def member(self, role: Role, index: int) -> Member | None:
        member = self.enrolled.get((role, index))
        if member is None:
            return None
        last_seq = self.revoked.get((role, index))
        return member if last_seq is None else dataclasses.replace(member, last_seq=last_seq)


def check_member_index(role: Role, index: int) -> None:
    """Raise :class:`IdentityError` unless ``(role, index)`` may be enrolled."""
    if role is Role.DEVICE:
        if not 0 <= index <= MAX_DEVICE_INDEX:
            raise IdentityError(f"device index {index} is outside 0..{MAX_DEVICE_INDEX}")
    elif role is Role.UTILITY:
        if index != 0:
            raise IdentityError("the utility's index is 0")
    else:
        raise IdentityError("only devices and the utility are enrolled (the owner is the site)")


def net_index(role: Role, index: int) -> int:
    """The member index a host names in its net envelopes for this member."""
    if role is Role.DEVICE:
        return index
    return OWNER_NET_INDEX if role is Role.OWNER else UTILITY_NET_INDEX


def role_of_net_index(index: int) -> tuple[Role, int] | None:
    """The inverse of :func:`net_index` (None for an index no member can have)."""
    if 0 <= index <= MAX_DEVICE_INDEX:
        return Role.DEVICE, index
    if index == OWNER_NET_INDEX:
        return Role.OWNER, 0
    if index == UTILITY_NET_INDEX:
        return Role.UTILITY, 0
    return None


class Roster:
    """The members of one site as enrolled so far (see the module docstring).

    Rules (the same on every replica, whatever order entries arrive in, as long
    as the owner's entries are applied in their chain order):

    - the owner is always a member, with the site identity's key;
    - the first enrolment of a ``(role, index)`` counts; a later one is ignored
      (a replaced device gets a new index);
    - a revocation counts whenever it comes (before or after the enrolment);
      of several, the lowest ``last_seq`` counts.
    """

    def __init__(self, site: SiteIdentity) -> None:
        self.site = site
        self._state = _RosterState({(Role.OWNER, 0): Member(site.owner_pubkey)}, {})
        #: The changes of the batch in flight (None: no batch), see :meth:`begin`.
        self._draft: _RosterState | None = None
        self._watchers: list[Callable[[], None]] = []

    def watch(self, watcher: Callable[[], None]) -> None:
        """Call ``watcher()`` after every committed change of the roster from now on
        (on the thread that changed it: it must only schedule its work)."""
        self._watchers.append(watcher)

    def unwatch(self, watcher: Callable[[], None]) -> None:
        """Stop calling ``watcher``; safe for one that is not watching."""
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def _replace(self, state: _RosterState) -> None:
        if self._draft is not None:
            self._draft = state  # published by commit, dropped by rollback
            return
        if state is self._state:
            return
        self._state = state
        for watcher in list(self._watchers):
            watcher()

    # -- batches -------------------------------------------------------------------

    def begin(self) -> None:
        """Hold the changes from now on in a draft (a log store's batch, which may
        still roll back): :meth:`member` and the other readers keep the committed
        state, watchers hear nothing, until :meth:`commit`."""
        if self._draft is not None:
            raise FatalError("a roster holds one batch at a time (a bug: batches overlap)")
        self._draft = self._state

    def commit(self) -> None:
        """Publish the batch's changes (once, for all of them) and call the watchers
        if there were any. Without a batch, nothing to do."""
        draft, self._draft = self._draft, None
        if draft is not None:
            self._replace(draft)

    def rollback(self) -> None:
        """Forget the batch's changes: readers and watchers never saw them."""
        self._draft = None

    # -- reading -------------------------------------------------------------------

    def member(self, role: Role, index: int) -> Member | None:
        """The member as committed (``last_seq`` set if revoked), or None."""
        return self._state.member(role, index)  # one read: a consistent snapshot

    def draft_member(self, role: Role, index: int) -> Member | None:
        """The member as the batch in flight has it (the committed one without a
        batch): what a log store checks the rest of its batch against."""
        return self._working().member(role, index)

    def _working(self) -> _RosterState:
        return self._state if self._draft is None else self._draft

    def net_pubkey(self, index: int) -> bytes | None:
        """The key of the member with net index ``index``, unless it is not
        enrolled or was revoked (a revoked member may not speak at all)."""
        who = role_of_net_index(index)
        if who is None:
            return None
        member = self.member(*who)
        return None if member is None or member.revoked else member.pubkey

    def devices(self) -> dict[int, Member]:
        """Enrolled devices by index (revoked ones included, with ``last_seq``)."""
        state = self._state  # one read: a consistent snapshot
        devices = (index for role, index in state.enrolled if role is Role.DEVICE)
        return {index: m for index in devices if (m := state.member(Role.DEVICE, index))}

    # -- changing ----------------------------------------------------------------

    def enrol(self, role: Role, index: int, pubkey: bytes, from_period: int) -> bool:
        """Record an enrolment; False if ``(role, index)`` was already enrolled
        (in the batch's draft if one is open)."""
        check_member_index(role, index)
        state = self._working()
        if (role, index) in state.enrolled:
            return False
        enrolled = dict(state.enrolled)
        enrolled[(role, index)] = Member(pubkey, from_period)
        self._replace(_RosterState(enrolled, state.revoked))
        return True

    def revoke(self, role: Role, index: int, last_seq: int) -> bool:
        """Record a revocation; False if an equal or lower one was already known
        (in the batch's draft if one is open)."""
        check_member_index(role, index)
        state = self._working()
        known = state.revoked.get((role, index))
        if known is not None and known <= last_seq:
            return False
        revoked = dict(state.revoked)
        revoked[(role, index)] = last_seq
        self._replace(_RosterState(state.enrolled, revoked))
        return True
