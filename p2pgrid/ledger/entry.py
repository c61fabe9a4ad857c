"""Log entries: the header, the canonical encoding, the entry id and the signature.

The byte layout is specified in ``docs/protocol-log.md``. In short::

    unsigned = version(1) role(1) index(4) seq(8) prev(32) period(4)
               timestamp_ms(8) kind(1) body_len(2) body
    message  = DOMAIN_TAG || site_hash(32) || unsigned
    id       = SHA-256(message)
    wire     = unsigned || signature(64)      # BIP340 Schnorr over ``id``

The id covers everything but the signature, so the same content signed twice
(BIP340 signing is randomised) is the same entry, and the chain links (``prev``)
do not depend on signature bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import struct

from p2pgrid.identity import SIGNATURE_LEN, Signer, SiteIdentity
from p2pgrid.ledger.bodies import (
    BODY_TYPES,
    Body,
    BodyError,
    EntryKind,
    Role,
    decode_body,
    encode_body,
)
from p2pgrid.ledger.codec import HASH_LEN, MAX_U32, MAX_U63, U16, Writer
from p2pgrid.ledger.errors import MalformedError

#: The newest entry format: version 2 added the kinds ``order`` and ``cleared``,
#: version 3 the kind ``delivered``, version 4 the kinds ``allowance_sale`` and
#: ``site_sale``.
#: An entry is written with its kind's version (``Body.SINCE``), so a log of
#: version 1 entries reads (and hashes) as before.
FORMAT_VERSION = 4
DOMAIN_TAG = b"p2pgrid/log-entry/v1"
HEADER_LEN = 61
MAX_ENTRY_BYTES = 4096
MAX_BODY_BYTES = MAX_ENTRY_BYTES - HEADER_LEN - SIGNATURE_LEN
GENESIS_PREV = bytes(HASH_LEN)
# version, role, index, seq, prev, period, timestamp_ms, kind, body_len
_HEADER = struct.Struct(">BBIQ32sIQBH")
assert _HEADER.size == HEADER_LEN


class OversizedError(MalformedError):
    """The entry is longer than MAX_ENTRY_BYTES."""


def site_hash(site: SiteIdentity) -> bytes:
    """The site's hash (:attr:`SiteIdentity.site_hash`): binds every entry to one site."""
    return site.site_hash


@functools.total_ordering
@dataclasses.dataclass(frozen=True, slots=True)
class Author:
    """An author of entries: a device of the site (by index), the owner or the utility."""

    role: Role
    index: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index <= MAX_U32:
            raise MalformedError(f"author index {self.index} out of range")
        if self.role is not Role.DEVICE and self.index != 0:
            raise MalformedError(f"{self.role.name} author must have index 0")

    @classmethod
    def device(cls, index: int) -> Author:
        return cls(Role.DEVICE, index)

    @classmethod
    def owner(cls) -> Author:
        return cls(Role.OWNER, 0)

    @classmethod
    def utility(cls) -> Author:
        return cls(Role.UTILITY, 0)

    @property
    def key(self) -> bytes:
        """Five bytes, role then index: the author's key in storage and on the wire."""
        return bytes([self.role]) + self.index.to_bytes(4, "big")

    @classmethod
    def from_key(cls, key: bytes) -> Author:
        if len(key) != 5:
            raise MalformedError("author key must be 5 bytes")
        try:
            role = Role(key[0])
        except ValueError as exc:
            raise MalformedError(f"unknown role {key[0]}") from exc
        return cls(role, int.from_bytes(key[1:], "big"))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Author):
            return NotImplemented
        return (self.role, self.index) < (other.role, other.index)

    def __str__(self) -> str:
        return f"device-{self.index}" if self.role is Role.DEVICE else self.role.name.lower()


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """A decoded, signed entry. ``raw`` is its wire form, ``id`` its content hash.

    Decoding checks the format and the body schema, not the signature or
    membership: that is :class:`p2pgrid.ledger.membership.Membership`'s job.
    """

    author: Author
    seq: int
    prev: bytes
    period: int
    timestamp_ms: int
    body: Body
    signature: bytes
    id: bytes
    raw: bytes

    @property
    def kind(self) -> EntryKind:
        return self.body.KIND

    def __str__(self) -> str:
        return f"{self.author}#{self.seq} {self.kind.name.lower()} {self.id.hex()[:12]}"


def _encode_unsigned(
    author: Author, seq: int, prev: bytes, period: int, timestamp_ms: int, body: Body
) -> bytes:
    if not 1 <= seq <= MAX_U63:
        raise MalformedError(f"seq {seq} out of range")
    if not 0 <= period <= MAX_U32:
        raise MalformedError(f"period {period} out of range")
    body.check(author.role, author.index)
    body_bytes = encode_body(body)
    if len(body_bytes) > MAX_BODY_BYTES:
        raise OversizedError(f"body of {len(body_bytes)} bytes exceeds {MAX_BODY_BYTES}")
    writer = Writer()
    writer.u8(body.SINCE)
    writer.raw(author.key)
    writer.u64(seq)
    writer.hash32(prev)
    writer.u32(period)
    writer.u64(timestamp_ms)
    writer.u8(body.KIND)
    writer.raw(U16.pack(len(body_bytes)))
    writer.raw(body_bytes)
    return writer.getvalue()


def entry_id(site: bytes, unsigned: bytes) -> bytes:
    """The id of an entry: SHA-256 of DOMAIN_TAG, the site hash and the unsigned bytes."""
    return hashlib.sha256(DOMAIN_TAG + site + unsigned).digest()


def sign_entry(
    signer: Signer,
    site: bytes,
    *,
    author: Author,
    seq: int,
    prev: bytes,
    period: int,
    timestamp_ms: int,
    body: Body,
) -> Entry:
    """Build and sign an entry. ``site`` is :func:`site_hash` of the site."""
    if author.role not in body.ROLES:
        raise BodyError(f"{author.role.name} may not author {body.KIND.name}")
    unsigned = _encode_unsigned(author, seq, prev, period, timestamp_ms, body)
    eid = entry_id(site, unsigned)
    signature = signer.sign(DOMAIN_TAG + site + unsigned)
    return Entry(
        author=author,
        seq=seq,
        prev=prev,
        period=period,
        timestamp_ms=timestamp_ms,
        body=body,
        signature=signature,
        id=eid,
        raw=unsigned + signature,
    )


def decode_entry(raw: bytes, site: bytes) -> Entry:
    """Decode wire bytes. Raises :class:`OversizedError`, :class:`BodyError` or
    :class:`MalformedError`; does not check the signature."""
    if len(raw) > MAX_ENTRY_BYTES:
        raise OversizedError(f"entry of {len(raw)} bytes exceeds {MAX_ENTRY_BYTES}")
    if len(raw) < HEADER_LEN:
        raise MalformedError("truncated header")
    version, role_byte, index, seq, prev, period, timestamp_ms, kind_byte, body_len = (
        _HEADER.unpack_from(raw)
    )
    if not 1 <= version <= FORMAT_VERSION:
        raise MalformedError(f"unknown format version {version}")
    try:
        role = Role(role_byte)
        kind = EntryKind(kind_byte)
    except ValueError as exc:
        raise MalformedError(f"unknown role {role_byte} or kind {kind_byte}") from exc
    if version != BODY_TYPES[kind].SINCE:
        raise MalformedError(f"a {kind.name.lower()} entry has version {BODY_TYPES[kind].SINCE}")
    author = Author(role, index)
    if not 1 <= seq <= MAX_U63 or timestamp_ms > MAX_U63:
        raise MalformedError("seq or timestamp out of range")
    if (seq == 1) != (prev == GENESIS_PREV):
        raise MalformedError("prev must be all zeros exactly when seq is 1")
    body_bytes = raw[HEADER_LEN : HEADER_LEN + body_len]
    if len(raw) != HEADER_LEN + body_len + SIGNATURE_LEN:
        raise MalformedError("length does not match body_len + signature")
    body = decode_body(kind, body_bytes)
    body.check(role, author.index)
    unsigned = raw[: HEADER_LEN + body_len]
    return Entry(
        author=author,
        seq=seq,
        prev=prev,
        period=period,
        timestamp_ms=timestamp_ms,
        body=body,
        signature=raw[HEADER_LEN + body_len :],
        id=entry_id(site, unsigned),
        raw=raw,
    )
