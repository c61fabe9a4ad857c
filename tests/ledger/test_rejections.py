"""Every kind of bad entry is refused with its own counted reason and changes nothing."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import pytest

from p2pgrid.identity import Signer
from p2pgrid.ledger import (
    MAX_ENTRY_BYTES,
    Allocation,
    Author,
    Budget,
    CarryOver,
    LogStore,
    MeterReading,
    Outcome,
    RejectReason,
    Share,
)
from p2pgrid.ledger.entry import HEADER_LEN
from tests.ledger.ledger_factory import T0_MS, Chain, OpenStore, Site


def _tampered_body(site: Site, good: Chain) -> bytes:
    raw = bytearray(good.next(Share(2, 1_000, "x")).raw)
    raw[HEADER_LEN + 5] ^= 0x01  # the amount changes; the signature no longer fits
    good.entries.pop()
    return bytes(raw)


def _wrong_signature(site: Site, good: Chain) -> bytes:
    entry = Chain(site, Author.device(1), signer=site.device(2)).sign(
        CarryOver(10), seq=3, prev=good.entries[-1].id, ts=T0_MS + 5000
    )
    return entry.raw


def _broken_link(site: Site, good: Chain) -> bytes:
    return good.sign(
        CarryOver(10), seq=3, prev=hashlib.sha256(b"nope").digest(), ts=T0_MS + 5000
    ).raw


def _time_regression(site: Site, good: Chain) -> bytes:
    return good.sign(CarryOver(10), seq=3, prev=good.entries[-1].id, ts=T0_MS - 1).raw


def _non_member(site: Site, good: Chain) -> bytes:
    outsider = Author.device(site.max_device_index + 1)
    return site.chain(outsider).next(CarryOver(10)).raw


def _foreign_utility(site: Site, good: Chain) -> bytes:
    stranger = Signer.from_secret(hashlib.sha256(b"not our utility").digest())
    return Chain(site, Author.utility(), signer=stranger).next(Budget(5)).raw


def _oversized(site: Site, good: Chain) -> bytes:
    raw = good.sign(Share(2, 1, "m"), seq=3, prev=good.entries[-1].id, ts=T0_MS + 5000).raw
    return raw + bytes(MAX_ENTRY_BYTES)


def _truncated(site: Site, good: Chain) -> bytes:
    return good.sign(CarryOver(10), seq=3, prev=good.entries[-1].id, ts=T0_MS + 5000).raw[:-1]


def _unknown_kind(site: Site, good: Chain) -> bytes:
    raw = bytearray(good.sign(CarryOver(10), seq=3, prev=good.entries[-1].id).raw)
    raw[58] = 200
    return bytes(raw)


def _bad_body(site: Site, good: Chain) -> bytes:
    raw = bytearray(good.sign(Share(2, 1, "m"), seq=3, prev=good.entries[-1].id).raw)
    raw[HEADER_LEN + 3] = 1  # to_device = 1 = the author itself
    return bytes(raw)


def _role_not_allowed(site: Site, good: Chain) -> bytes:
    # A device signs an allocation: encode it as the owner would, then re-author.
    owner_entry = site.chain(Author.owner()).next(Allocation(1, 10))
    raw = bytearray(owner_entry.raw)
    raw[1:6] = Author.device(1).key
    return bytes(raw)


def _garbage(site: Site, good: Chain) -> bytes:
    return b"\x01hello"


CASES: dict[str, tuple[Callable[[Site, Chain], bytes], RejectReason]] = {
    "tampered body": (_tampered_body, RejectReason.BAD_SIGNATURE),
    "wrong signature": (_wrong_signature, RejectReason.BAD_SIGNATURE),
    "broken chain link": (_broken_link, RejectReason.BROKEN_CHAIN),
    "time regression": (_time_regression, RejectReason.TIME_REGRESSION),
    "non-member device": (_non_member, RejectReason.NON_MEMBER),
    "foreign utility key": (_foreign_utility, RejectReason.BAD_SIGNATURE),
    "oversized": (_oversized, RejectReason.OVERSIZED),
    "truncated": (_truncated, RejectReason.MALFORMED),
    "unknown kind": (_unknown_kind, RejectReason.MALFORMED),
    "invalid body value": (_bad_body, RejectReason.BAD_BODY),
    "role not allowed": (_role_not_allowed, RejectReason.ROLE_NOT_ALLOWED),
    "garbage": (_garbage, RejectReason.MALFORMED),
}


async def _seeded(site: Site, open_store: OpenStore) -> tuple[LogStore, Chain]:
    store = await open_store("victim")
    good = site.chain(Author.device(1))
    for body in (MeterReading(T0_MS, 900, 100, 1_000), CarryOver(5)):
        good.next(body)
    report = await store.ingest_many([e.raw for e in good.entries])
    assert [r.outcome for r in report.results] == [Outcome.STORED, Outcome.STORED]
    return store, good


@pytest.mark.parametrize("case", list(CASES))
async def test_rejected_with_reason_and_nothing_changes(
    site: Site, open_store: OpenStore, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    make, reason = CASES[case]
    store, good = await _seeded(site, open_store)
    before = (store.digest(), await store.ids(), await store.export())
    bad = make(site, good)
    with caplog.at_level(logging.INFO, logger="p2pgrid.ledger.store"):
        report = await store.ingest(bad)
    assert report.results[0].outcome is Outcome.REJECTED
    assert report.results[0].reason is reason
    assert report.appended == ()
    assert dict(store.rejections) == {reason: 1}
    assert "[victim] rejected " in caplog.text
    assert f": {reason}" in caplog.text
    assert (store.digest(), await store.ids(), await store.export()) == before
    # Nothing was stored: the same bytes are rejected again, not "duplicate".
    again = await store.ingest(bad)
    assert again.results[0].reason is reason
    assert store.rejections[reason] == 2


async def test_non_member_is_never_stored_even_pending(site: Site, open_store: OpenStore) -> None:
    store = await open_store("s")
    before = await store.ids()
    outsider = site.chain(Author.device(site.max_device_index + 5))
    outsider.next(CarryOver(1))
    later = outsider.next(CarryOver(2))  # seq 2 without seq 1: would be pending if accepted
    report = await store.ingest_many([later.raw, outsider.entries[0].raw])
    assert {r.reason for r in report.results} == {RejectReason.NON_MEMBER}
    assert await store.ids() == before
    assert before[1] == frozenset()
