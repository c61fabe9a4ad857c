"""Entries: canonical encoding, ids, signatures, and decoding that never guesses."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgrid.identity import verify
from p2pgrid.ledger import (
    Allocation,
    AllowanceSale,
    Author,
    Body,
    BodyError,
    Budget,
    CarryOver,
    Cleared,
    Curtailment,
    Delivered,
    DeviceInfo,
    Dispute,
    Invoice,
    MalformedError,
    MeterReading,
    Order,
    Payment,
    Sale,
    Share,
    decode_entry,
)
from p2pgrid.ledger.entry import DOMAIN_TAG, HEADER_LEN
from tests.ledger.ledger_factory import T0_MS, Site

PREIMAGE = bytes(range(32))
PAID = hashlib.sha256(PREIMAGE).digest()
SAMPLES: list[tuple[Author, Body]] = [
    (Author.device(1), MeterReading(T0_MS, 900, 250, 25_000)),
    (Author.utility(), Budget(10_000_000)),
    (Author.owner(), Allocation(3, 2_000_000)),
    (Author.device(1), Share(2, 5_000, "fridge helps hvac")),
    (Author.device(1), Sale(4, 300, 30_000)),
    (Author.device(1), CarryOver(1_000)),
    (Author.utility(), Invoice(2, 9_000_000, 90_000, b"\x01" * 32, "lnbcrt90u1...")),
    (Author.owner(), Payment(9_000_000, hashlib.sha256(PREIMAGE).digest(), PREIMAGE, 1_000)),
    (Author.utility(), Curtailment(2**32 - 1, T0_MS, 3600, 1500)),
    (Author.device(2), Dispute(0, 1, 7, "reading too high")),
    (Author.owner(), DeviceInfo(1, "fridge", "kitchen fridge")),
    (Author.device(2), Order(40, "0303" + "01" * 37)),
    (Author.device(2), Cleared(40, 120_000, b"\x02" * 32, "0000000100000002")),
    (Author.device(2), Delivered(40, 1, 60, b"\x03" * 32)),
    (
        Author.device(2),
        AllowanceSale(1, 40_000, 32_000, PAID, PREIMAGE),
    ),
]


@pytest.mark.parametrize(("author", "body"), SAMPLES, ids=[type(b).__name__ for _, b in SAMPLES])
def test_every_kind_round_trips_and_verifies(site: Site, author: Author, body: Body) -> None:
    entry = site.chain(author).next(body, period=7)
    decoded = decode_entry(entry.raw, site.membership.site_hash)
    assert decoded == entry
    assert decoded.body == body
    assert site.membership.check(decoded) is None
    message = DOMAIN_TAG + site.membership.site_hash + entry.raw[:-64]
    assert hashlib.sha256(message).digest() == entry.id
    assert verify(site.signer(author).pubkey, message, entry.signature)


def test_header_layout_is_byte_exact(site: Site) -> None:
    entry = site.chain(Author.device(5)).next(CarryOver(0x0102), period=3, ts=T0_MS)
    raw = entry.raw
    assert raw[0] == 1  # format version
    assert raw[1:6] == bytes([0, 0, 0, 0, 5])  # role device, index 5
    assert raw[6:14] == (1).to_bytes(8, "big")  # seq
    assert raw[14:46] == bytes(32)  # prev of seq 1
    assert raw[46:50] == (3).to_bytes(4, "big")  # period
    assert raw[50:58] == T0_MS.to_bytes(8, "big")
    assert raw[58] == 6  # kind carry_over
    assert raw[59:61] == (8).to_bytes(2, "big")  # body length
    assert raw[HEADER_LEN : HEADER_LEN + 8] == (0x0102).to_bytes(8, "big")
    assert len(raw) == HEADER_LEN + 8 + 64


def test_new_kinds_take_version_2_and_old_kinds_keep_version_1(site: Site) -> None:
    """Version 2 added ``order`` and ``cleared``: an entry carries its kind's
    version, so version 1 logs read and hash as before, and one content has one
    encoding (a kind under the other version is malformed)."""
    chain = site.chain(Author.device(1))
    old = chain.next(CarryOver(5), period=3)
    new = chain.next(Order(7, "0303" + "00" * 37), period=3)
    assert (old.raw[0], new.raw[0]) == (1, 2)
    hashed = site.membership.site_hash
    assert decode_entry(new.raw, hashed) == new
    for entry, version in ((old, 2), (new, 1), (new, 3)):
        with pytest.raises(MalformedError, match="version"):
            decode_entry(bytes([version]) + entry.raw[1:], hashed)


def test_delivered_takes_version_3(site: Site) -> None:
    """Version 3 added ``delivered``; under another version it is malformed."""
    entry = site.chain(Author.device(1)).next(Delivered(7, 2, 0, bytes(32)), period=3)
    assert entry.raw[0] == 3
    hashed = site.membership.site_hash
    assert decode_entry(entry.raw, hashed) == entry
    for version in (1, 2, 4):
        with pytest.raises(MalformedError, match="version"):
            decode_entry(bytes([version]) + entry.raw[1:], hashed)


def test_same_content_signed_twice_has_one_id(site: Site) -> None:
    chain = site.chain(Author.device(1))
    one = chain.sign(CarryOver(5), seq=1, prev=bytes(32))
    two = chain.sign(CarryOver(5), seq=1, prev=bytes(32))
    assert one.id == two.id


@pytest.mark.parametrize(
    ("author", "body"),
    [
        (Author.device(1), Share(1, 5, "")),  # to itself
        (Author.device(1), Share(2, 0, "")),  # zero amount
        (Author.owner(), Payment(1, b"\x00" * 32, PREIMAGE, 0)),  # preimage mismatch
        (Author.device(1), MeterReading(T0_MS, 0, 1, 1)),  # empty interval
        (Author.owner(), DeviceInfo(1, "", "")),
        (Author.device(1), Curtailment(2, T0_MS, 900, 0)),  # curtails another device
        (Author.device(1), Order(3, "0303AB")),  # upper case
        (Author.device(1), Order(3, "03")),  # no message
        (Author.device(1), Cleared(3, 0, bytes(32), "00000001")),  # no price
        (Author.device(1), Cleared(3, 1000, bytes(32), "00000002")),  # not in its book
        (Author.device(1), Cleared(3, 1000, bytes(32), "0000000200000001")),  # not ascending
        (Author.device(1), Cleared(3, 1000, bytes(32), "000001")),  # not u32s
        (Author.device(1), Delivered(3, 1, 5, bytes(32))),  # from itself
        (
            Author.device(1),
            AllowanceSale(1, 9, 9, PAID, PREIMAGE),
        ),  # to itself
        (
            Author.device(1),
            AllowanceSale(2, 9, 10, PAID, PREIMAGE),
        ),  # above face value
        (Author.device(1), AllowanceSale(2, 9, 9, bytes(32), PREIMAGE)),  # no proof
        (
            Author.device(1),
            AllowanceSale(2, 9, 0, PAID, PREIMAGE),
        ),  # no price
    ],
)
def test_invalid_bodies_cannot_be_signed(site: Site, author: Author, body: Body) -> None:
    with pytest.raises(BodyError):
        site.chain(author).next(body)


def test_role_must_match_kind(site: Site) -> None:
    with pytest.raises(BodyError):
        site.chain(Author.device(1)).next(Allocation(1, 5))


def test_author_keys_round_trip() -> None:
    for author in (Author.device(0), Author.device(2**32 - 1), Author.owner(), Author.utility()):
        assert Author.from_key(author.key) == author
    with pytest.raises(MalformedError):
        Author.from_key(bytes([1, 0, 0, 0, 1]))  # owner with an index


amounts = st.integers(min_value=1, max_value=2**63 - 1)
bodies = st.one_of(
    st.builds(MeterReading, st.integers(0, 2**63 - 1), st.integers(1, 2**32 - 1), amounts, amounts),
    st.builds(Share, st.integers(2, 2**32 - 1), amounts, st.text(max_size=40)),
    st.builds(Sale, st.integers(2, 2**32 - 1), amounts, amounts),
    st.builds(CarryOver, amounts),
)


@settings(max_examples=60, deadline=None)
@given(body=bodies, period=st.integers(0, 2**32 - 1), ts=st.integers(0, 2**63 - 1))
def test_encoding_round_trips(site: Site, body: Body, period: int, ts: int) -> None:
    entry = site.chain(Author.device(1)).next(body, period=period, ts=ts)
    assert decode_entry(entry.raw, site.membership.site_hash) == entry


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_bytes_never_decode_to_something_else_silently(
    site: Site, data: st.DataObject
) -> None:
    entry = site.chain(Author.device(1)).next(Share(3, 1234, "memo"))
    raw = bytearray(entry.raw)
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(raw)))
    mutated = bytes(raw[:cut])
    try:
        decoded = decode_entry(mutated, site.membership.site_hash)
    except MalformedError:
        return
    # Decoding succeeded: then the id or the signature changed and check() refuses.
    assert site.membership.check(decoded) is not None
