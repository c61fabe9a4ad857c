"""Site identity: a device's key opens nothing else; the owner enrols and revokes.

The attack of the BIP32 design (a non-hardened child's secret plus the xpub
gives back the parent key) is run against the new design and recovers nothing;
a positive control shows that the attack code does recover a BIP32-style key.
Enrolment and revocation are checked on real SQLite stores, including that
replicas agree whatever order entries arrive in.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pgrid.errors import FatalError
from p2pgrid.identity import MAX_DEVICE_INDEX, Member, Role, Roster, Signer, SiteIdentity
from p2pgrid.ledger import (
    Author,
    Body,
    BodyError,
    CarryOver,
    Enrol,
    EntryKind,
    IngestReport,
    LogStore,
    MeterReading,
    Outcome,
    RejectReason,
    Revoke,
    sign_entry,
)
from p2pgrid.scenario import load_scenario
from p2pgrid.testing.loopback import LoopbackNetwork
from tests.ledger.ledger_factory import T0_MS, Chain, Site

N = int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141", 16)  # secp256k1 order
PROPS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_counter = itertools.count()

# -- the attack -------------------------------------------------------------------


def bip32_parent_candidates(
    device_secret: bytes, index: int, parent_pubkey: bytes, chain_codes: list[bytes]
) -> Iterator[bytes]:
    """``k_parent = k_child - IL mod n`` with ``IL = HMAC-SHA512(c, P || ser32(i))[:32]``,
    for each chain code ``c`` an attacker might try."""
    k_child = int.from_bytes(device_secret, "big")
    for code in chain_codes:
        mac = hmac.new(code, parent_pubkey + index.to_bytes(4, "big"), hashlib.sha512).digest()
        il = int.from_bytes(mac[:32], "big")
        yield ((k_child - il) % N).to_bytes(32, "big")


def public_chain_codes(site: SiteIdentity, enrolment: bytes, device_pubkey: bytes) -> list[bytes]:
    """Every 32-byte value a peer sees that could stand in for a chain code."""
    return [
        site.site_hash,
        site.owner_pubkey[1:],
        hashlib.sha256(site.owner_pubkey).digest(),
        device_pubkey[1:],
        hashlib.sha256(enrolment).digest(),
        enrolment[14:46],  # the enrolment's prev link
    ]


def test_attack_recovers_a_bip32_parent() -> None:
    """Positive control: on the old design (device = non-hardened child) the
    attack gives back the owner's key exactly."""
    owner = Signer.from_secret(hashlib.sha256(b"control owner").digest())
    chain_code = hashlib.sha256(b"control chain code").digest()
    index = 2
    mac = hmac.new(chain_code, owner.pubkey + index.to_bytes(4, "big"), hashlib.sha512).digest()
    child = (int.from_bytes(mac[:32], "big") + int.from_bytes(owner.secret, "big")) % N
    found = list(bip32_parent_candidates(child.to_bytes(32, "big"), 2, owner.pubkey, [chain_code]))
    assert found == [owner.secret]


def _attack(site: SiteIdentity, owner: Signer, devices: dict[int, Signer]) -> None:
    others = {s.secret for s in devices.values()}
    for index, device in devices.items():
        entry = _enrolment_entry(owner, site, index, device)  # public: it is in the log
        codes = public_chain_codes(site, entry, device.pubkey)
        for candidate in bip32_parent_candidates(device.secret, index, site.owner_pubkey, codes):
            assert candidate != owner.secret
            assert candidate not in others - {device.secret}


def _enrolment_entry(owner: Signer, site: SiteIdentity, index: int, device: Signer) -> bytes:
    entry = sign_entry(
        owner,
        site.site_hash,
        author=Author.owner(),
        seq=1,
        prev=bytes(32),
        period=0,
        timestamp_ms=T0_MS,
        body=Enrol(Role.DEVICE, index, device.pubkey, "fridge", 0),
    )
    return entry.raw


def test_demo_device_key_does_not_give_the_owners() -> None:
    """The issue's reproduction: the demo's store-1, device 2."""
    from p2pgrid.demo import default_scenario

    scenario = load_scenario(default_scenario())
    site = next(s for s in scenario.sites if s.name == "store-1")
    devices = {d.index: site.device_signer(d.index) for d in site.devices}
    assert len({s.secret for s in devices.values()} | {site.owner_signer.secret}) == 4
    _attack(site.identity, site.owner_signer, devices)


secrets = st.binary(min_size=32, max_size=32).filter(lambda b: 0 < int.from_bytes(b, "big") < N)


@settings(max_examples=200, deadline=None)
@given(owner=secrets, device=secrets, other=secrets, index=st.integers(0, MAX_DEVICE_INDEX))
def test_no_device_secret_gives_the_owners_or_another_devices(
    owner: bytes, device: bytes, other: bytes, index: int
) -> None:
    owner_key = Signer.from_secret(owner)
    devices = {index: Signer.from_secret(device), (index + 1) % 65536: Signer.from_secret(other)}
    if len({owner, device, other}) < 3:
        return  # hypothesis may draw equal secrets; keys are independent draws
    _attack(SiteIdentity(owner_key.pubkey), owner_key, devices)


# -- enrolment and revocation on real stores ---------------------------------------

OpenBare = Callable[[str], Awaitable[LogStore]]


@pytest.fixture
async def open_bare(site: Site, tmp_path: Path) -> AsyncIterator[OpenBare]:
    """Stores with an empty log: no member but the owner until it enrols some."""
    stores: list[LogStore] = []

    async def opener(name: str) -> LogStore:
        store = await LogStore.open(tmp_path / f"{name}.sqlite", site.identity, name=name)
        stores.append(store)
        return store

    yield opener
    for store in stores:
        await store.close()


def _owner(site: Site) -> Chain:
    return Chain(site, Author.owner())  # starts at seq 1: these stores have no genesis


def _enrol(index: int, site: Site, from_period: int = 0) -> Enrol:
    return Enrol(Role.DEVICE, index, site.device(index).pubkey, "fridge", from_period)


def _readings(site: Site, index: int, n: int, period: int = 1) -> Chain:
    chain = site.chain(Author.device(index))
    for i in range(n):
        chain.next(MeterReading(T0_MS + i, 60, 10, 100), period=period)
    return chain


def _outcomes(report: IngestReport) -> list[tuple[Outcome, RejectReason | None]]:
    return [(r.outcome, r.reason) for r in report.results]


async def test_an_entry_before_its_enrolment_is_refused_then_accepted(
    site: Site, open_bare: OpenBare
) -> None:
    store = await open_bare("a")
    device = _readings(site, 3, 2)
    raws = [e.raw for e in device.entries]
    before = await store.ids()
    report = await store.ingest_many(raws)
    assert _outcomes(report) == [(Outcome.REJECTED, RejectReason.NON_MEMBER)] * 2
    assert await store.ids() == before  # not even pending
    owner = _owner(site)
    await store.ingest(owner.next(_enrol(3, site), period=0).raw)
    report = await store.ingest_many(raws)  # offered again (anti-entropy does)
    assert [r.outcome for r in report.results] == [Outcome.STORED] * 2
    assert store.roster.devices()[3].pubkey == site.device(3).pubkey


async def test_one_batch_places_the_enrolment_first(site: Site, open_bare: OpenBare) -> None:
    """A range or an export lists devices (role 0) before the owner (role 1)."""
    store = await open_bare("a")
    raws = [e.raw for e in _readings(site, 3, 2).entries]
    enrolment = _owner(site).next(_enrol(3, site), period=0).raw
    report = await store.ingest_many([*raws, enrolment])
    assert [r.outcome for r in report.results] == [Outcome.STORED] * 3


async def test_enrolment_by_anyone_but_the_owner_is_refused(
    site: Site, open_bare: OpenBare
) -> None:
    store = await open_bare("a")
    # Signed by device 1's key, claiming to be the owner.
    forged = Chain(site, Author.owner(), signer=site.device(1)).next(_enrol(1, site), period=0)
    assert (await store.ingest(forged.raw)).results[0].reason is RejectReason.BAD_SIGNATURE
    # Signed by another site's owner.
    stranger = Site.make(b"another owner", max_device_index=0)
    foreign = Chain(site, Author.owner(), signer=stranger.owner).next(_enrol(1, site), period=0)
    assert (await store.ingest(foreign.raw)).results[0].reason is RejectReason.BAD_SIGNATURE
    assert store.roster.devices() == {}
    # An enrolled device that enrols another: the bytes of an owner's entry re-authored.
    await store.ingest(_owner(site).next(_enrol(1, site), period=0).raw)
    raw = bytearray(Chain(site, Author.owner(), signer=site.device(1)).next(_enrol(2, site)).raw)
    raw[1:6] = Author.device(1).key
    assert (await store.ingest(bytes(raw))).results[0].reason is RejectReason.ROLE_NOT_ALLOWED
    assert set(store.roster.devices()) == {1}
    device2 = _readings(site, 2, 1).entries[0]
    assert (await store.ingest(device2.raw)).results[0].reason is RejectReason.NON_MEMBER


async def test_a_key_other_than_the_enrolled_one_is_refused(
    site: Site, open_bare: OpenBare
) -> None:
    store = await open_bare("a")
    await store.ingest(_owner(site).next(_enrol(1, site), period=0).raw)
    impostor = Chain(site, Author.device(1), signer=site.device(2)).next(CarryOver(1))
    assert (await store.ingest(impostor.raw)).results[0].reason is RejectReason.BAD_SIGNATURE


async def test_entries_before_the_enrolment_period_are_refused(
    site: Site, open_bare: OpenBare
) -> None:
    store = await open_bare("a")
    await store.ingest(_owner(site).next(_enrol(4, site, from_period=2), period=0).raw)
    early = _readings(site, 4, 1, period=1).entries[0]
    assert (await store.ingest(early.raw)).results[0].reason is RejectReason.BEFORE_ENROLMENT
    on_time = _readings(site, 4, 1, period=2).entries[0]
    assert (await store.ingest(on_time.raw)).results[0].outcome is Outcome.STORED


async def test_a_second_enrolment_of_an_index_is_ignored(site: Site, open_bare: OpenBare) -> None:
    store = await open_bare("a")
    owner = _owner(site)
    await store.ingest(owner.next(_enrol(1, site), period=0).raw)
    swap = owner.next(Enrol(Role.DEVICE, 1, site.device(9).pubkey, "fridge", 0), period=0)
    assert (await store.ingest(swap.raw)).results[0].outcome is Outcome.STORED  # the chain goes on
    assert store.roster.devices()[1].pubkey == site.device(1).pubkey


@pytest.mark.parametrize(
    "body",
    [
        Enrol(Role.DEVICE, MAX_DEVICE_INDEX + 1, bytes.fromhex("02" + "11" * 32), "x", 0),
        Enrol(Role.UTILITY, 1, bytes.fromhex("02" + "11" * 32), "", 0),
        Enrol(Role.OWNER, 0, bytes.fromhex("02" + "11" * 32), "x", 0),
        Enrol(Role.DEVICE, 1, bytes(33), "x", 0),  # not a point
        Enrol(Role.DEVICE, 1, bytes.fromhex("04" + "11" * 32), "x", 0),  # not compressed
        Enrol(Role.DEVICE, 1, bytes.fromhex("02" + "11" * 32), "", 0),  # no class
        Revoke(Role.OWNER, 0, 0, "the owner is the site"),
        Revoke(Role.DEVICE, 70_000, 0, ""),
    ],
)
def test_bad_enrolments_and_revocations_do_not_encode(site: Site, body: Body) -> None:
    with pytest.raises(BodyError):
        _owner(site).next(body)


async def test_a_revoked_device_is_cut_after_its_last_seq(
    site: Site, open_bare: OpenBare, tmp_path: Path
) -> None:
    store = await open_bare("a")
    owner = _owner(site)
    await store.ingest(owner.next(_enrol(1, site), period=0).raw)
    device = _readings(site, 1, 6)
    await store.ingest_many([e.raw for e in device.entries[:5]])  # 1..5 stored
    later = device.entries[5]
    await store.ingest(owner.next(Revoke(Role.DEVICE, 1, 3, "stolen"), period=1).raw)
    # Entries beyond last_seq were dropped; later ones are refused.
    head = store.heads()[Author.device(1)]
    assert (head.seq, head.count) == (3, 3)
    assert (await store.ingest(later.raw)).results[0].reason is RejectReason.REVOKED
    assert (await store.ingest(device.entries[3].raw)).results[0].reason is RejectReason.REVOKED
    assert (await store.ingest(device.entries[2].raw)).results[0].outcome is Outcome.DUPLICATE
    # The store remembers after a restart: the roster is rebuilt from the log.
    await store.close()
    async with await LogStore.open(tmp_path / "a.sqlite", site.identity, name="again") as again:
        assert again.roster.devices()[1].last_seq == 3
        assert (await again.ingest(later.raw)).results[0].reason is RejectReason.REVOKED


async def test_the_roster_changes_only_with_a_committed_batch(
    site: Site, open_bare: OpenBare, tmp_path: Path
) -> None:
    """A batch that enrols device 3 and rolls back (the disk refuses device 3's
    reading) leaves the roster as it was and wakes no watcher: before, the
    watchers heard the enrolment and then its undoing (the net layer saw a peer
    join and leave over a batch that never was). A committed batch that enrols
    two devices wakes them once, with both members readable."""
    store = await open_bare("a")
    heard: list[tuple[Member | None, Member | None]] = []
    store.roster.watch(
        lambda: heard.append(
            (store.roster.member(Role.DEVICE, 3), store.roster.member(Role.DEVICE, 4))
        )
    )
    owner = _owner(site)
    enrolments = [owner.next(_enrol(i, site), period=0).raw for i in (3, 4)]
    reading = _readings(site, 3, 1).entries[0].raw
    with sqlite3.connect(tmp_path / "a.sqlite") as disk:  # another connection: a real refusal
        disk.execute(
            "CREATE TRIGGER refuse_readings BEFORE INSERT ON entries "
            f"WHEN NEW.kind = {EntryKind.METER_READING.value} "
            "BEGIN SELECT RAISE(ABORT, 'the disk refuses'); END"
        )
    with pytest.raises(sqlite3.IntegrityError, match="the disk refuses"):
        await store.ingest_many([*enrolments, reading])
    assert heard == []
    assert store.roster.devices() == {}
    assert store.roster.draft_member(Role.DEVICE, 3) is None  # the draft is gone too
    assert (await store.ingest(reading)).results[0].reason is RejectReason.NON_MEMBER

    with sqlite3.connect(tmp_path / "a.sqlite") as disk:
        disk.execute("DROP TRIGGER refuse_readings")
    report = await store.ingest_many([*enrolments, reading])
    assert [r.outcome for r in report.results] == [Outcome.STORED] * 3
    assert heard == [(Member(site.device(3).pubkey), Member(site.device(4).pubkey))]


def test_a_roster_batch_is_seen_whole_at_its_commit_and_never_after_a_rollback(
    site: Site,
) -> None:
    """The roster's draft, without a store: the batch's own reads see its changes,
    other readers and watchers only the committed state, once per batch."""
    roster = Roster(site.identity)
    calls: list[int] = []
    roster.watch(lambda: calls.append(len(roster.devices())))
    roster.begin()
    assert roster.enrol(Role.DEVICE, 1, site.device(1).pubkey, 0)
    assert roster.revoke(Role.DEVICE, 1, 5)
    assert not roster.enrol(Role.DEVICE, 1, site.device(2).pubkey, 0)  # the draft counts
    assert roster.draft_member(Role.DEVICE, 1) == Member(site.device(1).pubkey, 0, 5)
    assert roster.member(Role.DEVICE, 1) is None
    assert roster.net_pubkey(1) is None
    with pytest.raises(FatalError):
        roster.begin()  # batches never overlap
    roster.rollback()
    assert roster.draft_member(Role.DEVICE, 1) is None
    assert calls == []
    roster.begin()
    roster.enrol(Role.DEVICE, 1, site.device(1).pubkey, 0)
    roster.enrol(Role.DEVICE, 2, site.device(2).pubkey, 0)
    assert calls == []
    roster.commit()
    assert calls == [2]  # once, with both
    assert roster.net_pubkey(2) == site.device(2).pubkey
    roster.begin()
    roster.commit()  # a batch that changed nothing wakes nobody
    roster.enrol(Role.DEVICE, 3, site.device(3).pubkey, 0)  # no batch: published at once
    assert calls == [2, 3]


def _revocation_universe(site: Site) -> tuple[list[bytes], set[tuple[int, int]]]:
    """Owner: enrol 1, enrol 2, revoke 1 after seq 3. Device 1: 6 entries; device 2: 3.
    Returns the entries and the (device, seq) every replica must end with."""
    owner = _owner(site)
    raws = [owner.next(_enrol(i, site), period=0).raw for i in (1, 2)]
    raws.append(owner.next(Revoke(Role.DEVICE, 1, 3, "stolen"), period=1).raw)
    raws += [e.raw for e in _readings(site, 1, 6).entries]
    raws += [e.raw for e in _readings(site, 2, 3).entries]
    return raws, {(1, s) for s in (1, 2, 3)} | {(2, s) for s in (1, 2, 3)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("revocation")


@PROPS
@given(order=st.permutations(range(12)), batch=st.integers(1, 4))
async def test_every_replica_cuts_a_revoked_device_alike(
    site: Site, workdir: Path, order: list[int], batch: int
) -> None:
    """Whatever order (and batching) entries arrive in, once everything has been
    offered again (as anti-entropy does), every replica holds the same log: the
    revoked device's entries 1..3 and nothing after."""
    raws, expected = _revocation_universe(site)
    shuffled = [raws[i] for i in order]
    store = await LogStore.open(workdir / f"r{next(_counter)}.sqlite", site.identity, name="r")
    reference = await LogStore.open(
        workdir / f"r{next(_counter)}.sqlite", site.identity, name="ref"
    )
    try:
        for start in range(0, len(shuffled), batch):
            await store.ingest_many(shuffled[start : start + batch])
        await store.ingest_many(shuffled)  # offered again
        await reference.ingest_many(raws)
        held = {
            (e.author.index, e.seq) for e in await store.entries() if e.author.role is Role.DEVICE
        }
        assert held == expected
        assert store.digest() == reference.digest()
        assert store.pending_count == 0
    finally:
        await store.close()
        await reference.close()


async def test_replicas_converge_when_entries_come_before_enrolments(
    site: Site, open_bare: OpenBare
) -> None:
    """A replica that first hears a device's entries refuses them (not a member
    yet); one anti-entropy round with a peer that has the enrolment pulls the
    owner's chain first, then the device's entries, which now join."""
    net = LoopbackNetwork()
    a, b = net.join(await open_bare("a")), net.join(await open_bare("b"))
    enrol = _owner(site).next(_enrol(5, site), period=0)
    device = _readings(site, 5, 3)
    await a.store.ingest_many([enrol.raw, *(e.raw for e in device.entries)])
    report = await b.store.ingest_many([e.raw for e in device.entries])  # gossip came first
    assert {r.reason for r in report.results} == {RejectReason.NON_MEMBER}
    sync = await b.sync_with("a")
    assert (sync.appended, sync.rejected) == (4, 0)
    assert b.store.digest() == a.store.digest()
