"""The envelope's byte layout, limits and the validator's reasons (no network)."""

from __future__ import annotations

import struct

import pytest

from p2pgrid.identity import OWNER_NET_INDEX, UTILITY_NET_INDEX, Role
from p2pgrid.net.envelope import (
    MAX_ENVELOPE_BYTES,
    SIGNING_DOMAIN,
    Record,
    parse,
    seal,
)
from p2pgrid.net.errors import EnvelopeError
from p2pgrid.net.membership import EVERY_ROLE, Membership, owner_topic, site_topic
from p2pgrid.net.pacing import TokenBucket
from p2pgrid.net.validator import EnvelopeValidator, Reason
from tests.sites import TestSite

PEER = b"\x00\x24" + bytes(36)
OTHER_PEER = b"\x00\x24" + bytes([1]) * 36
NOW = 1_700_000_000.0


def _seal(
    owner: TestSite,
    index: int = 1,
    *,
    seq: int = 1,
    ts: float = NOW,
    context: str = "t",
    signer_owner: TestSite | None = None,
    peer: bytes = PEER,
) -> bytes:
    return seal(
        (signer_owner or owner).device(index),
        context,
        site_id=owner.identity.site_id,
        device_index=index,
        peer_id=peer,
        epoch=7,
        seq=seq,
        timestamp_ms=int(ts * 1000),
        records=[Record(0x0100, b"hello"), Record(0x0101, b"")],
    )


def test_layout_is_byte_exact(owner: TestSite) -> None:
    data = _seal(owner)
    site = bytes.fromhex(owner.identity.site_id)
    head = struct.pack(">B8sIB", 1, site, 1, len(PEER)) + PEER
    nonce = struct.pack(">IQQH", 7, 1, int(NOW * 1000), 2)
    records = struct.pack(">HI", 0x0100, 5) + b"hello" + struct.pack(">HI", 0x0101, 0)
    body = head + nonce + records
    assert data[:-64] == body
    signed = SIGNING_DOMAIN + struct.pack(">H", 1) + b"t" + body
    from p2pgrid.identity import verify

    assert verify(owner.device(1).pubkey, signed, data[-64:])
    envelope = parse(data)
    assert envelope.records == (Record(0x0100, b"hello"), Record(0x0101, b""))
    assert envelope.nonce == (owner.identity.site_id, 1, 7, 1)


def test_size_limit_and_malformed(owner: TestSite) -> None:
    with pytest.raises(EnvelopeError):
        seal(
            owner.device(0),
            "t",
            site_id=owner.identity.site_id,
            device_index=0,
            peer_id=PEER,
            epoch=0,
            seq=0,
            timestamp_ms=0,
            records=[Record(0x100, bytes(MAX_ENVELOPE_BYTES))],
        )
    data = _seal(owner)
    for bad in (data[:10], data[:-1], data + b"x", b"\x02" + data[1:]):
        with pytest.raises(EnvelopeError):
            parse(bad)


def test_validator_counts_each_reason(owner: TestSite, other_owner: TestSite) -> None:
    members = site_topic(owner.roster()).members
    validator = EnvelopeValidator(clock=lambda: NOW)

    def check(data: bytes, peer: bytes = PEER) -> object:
        return validator.check(data, context="t", members=members, sender_peer_id=peer)

    good = _seal(owner, seq=1)
    assert not isinstance(check(good), Reason)
    assert check(good) is Reason.REPLAY
    assert check(_seal(other_owner, seq=2)) is Reason.NOT_MEMBER
    assert check(_seal(owner, 5000, seq=3)) is Reason.NOT_MEMBER  # not enrolled
    assert check(_seal(owner, 2, seq=4, signer_owner=other_owner)) is Reason.BAD_SIGNATURE
    tampered = bytearray(_seal(owner, seq=5))
    tampered[-70] ^= 1
    assert check(bytes(tampered)) is Reason.BAD_SIGNATURE
    assert check(_seal(owner, seq=6, context="other-topic")) is Reason.BAD_SIGNATURE
    assert check(_seal(owner, seq=7, ts=NOW - 3600)) is Reason.STALE
    assert check(_seal(owner, seq=8), OTHER_PEER) is Reason.PEER_MISMATCH
    assert check(b"junk") is Reason.MALFORMED
    assert check(bytes(MAX_ENVELOPE_BYTES + 1)) is Reason.TOO_LARGE
    assert validator.counts() == {
        "too_large": 1,
        "malformed": 1,
        "not_member": 2,
        "bad_signature": 3,
        "stale": 1,
        "replay": 1,
        "peer_mismatch": 1,
    }
    assert validator.accepted == 1


def test_topics_name_their_members(owner: TestSite, other_owner: TestSite) -> None:
    a, b = owner.roster(), other_owner.roster()
    assert owner_topic([a, b]).name == owner_topic([b, a]).name
    assert b.site.site_id in owner_topic([a, b]).members
    assert site_topic(a).name == f"/p2pgrid/1/site/{a.site.site_id}"
    assert site_topic(a).members.device_pubkey(b.site.site_id, 0) is None
    assert site_topic(a).members.device_pubkey(a.site.site_id, 0) == owner.device(0).pubkey


def test_membership_follows_the_roster(owner: TestSite) -> None:
    """A key is a member once enrolled, and no more once revoked; the owner and the
    utility speak only where a topic admits their role."""
    roster = owner.roster(devices=())
    devices = Membership(frozenset({roster}))
    everyone = Membership(frozenset({roster}), EVERY_ROLE)
    site_id = owner.identity.site_id
    assert devices.device_pubkey(site_id, 3) is None  # not enrolled (yet)
    roster.enrol(Role.DEVICE, 3, owner.device(3).pubkey, 0)
    assert devices.device_pubkey(site_id, 3) == owner.device(3).pubkey
    assert not roster.enrol(Role.DEVICE, 3, owner.device(4).pubkey, 0)  # first one counts
    assert devices.device_pubkey(site_id, 3) == owner.device(3).pubkey
    roster.revoke(Role.DEVICE, 3, 10)
    assert devices.device_pubkey(site_id, 3) is None  # a revoked member may not speak
    assert devices.device_pubkey(site_id, UTILITY_NET_INDEX) is None
    assert everyone.device_pubkey(site_id, UTILITY_NET_INDEX) == owner.utility.pubkey
    assert everyone.device_pubkey(site_id, OWNER_NET_INDEX) == owner.owner.pubkey
    assert everyone.device_pubkey(site_id, 70_000) is None  # no member has that index


def test_token_bucket_paces() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=2, clock=lambda: now[0])
    assert bucket.take() == 0
    assert bucket.take() == 0
    assert bucket.take() == pytest.approx(0.1)
    now[0] += 0.1
    assert bucket.take() == 0
