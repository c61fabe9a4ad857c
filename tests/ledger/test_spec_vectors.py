"""The test vectors printed in docs/protocol-log.md hold for this implementation.

The keys are test keys: each secret is the SHA-256 of an ASCII label (printed in
the spec), so another implementation can rebuild the site from nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from p2pgrid.identity import Role, Signer, SiteIdentity, verify
from p2pgrid.ledger import (
    Author,
    Enrol,
    LogStore,
    MalformedError,
    MeterReading,
    Order,
    Outcome,
    Payment,
    RejectReason,
    Revoke,
    Share,
    SiteSale,
    decode_entry,
    sign_entry,
)
from p2pgrid.ledger.bodies import EntryKind, decode_body, encode_body
from p2pgrid.ledger.entry import DOMAIN_TAG

OWNER_SECRET = hashlib.sha256(b"p2pgrid spec owner").digest()
DEVICE1_SECRET = hashlib.sha256(b"p2pgrid spec device 1").digest()
OWNER_PUB = "029897100aaa7aa500a28f5dfdc52798d663ba290847c9da17d81e73afa17717c8"
DEVICE1_PUB = "03cf9161ec2cfdb782508714dd602d2b26d4ca39d5a0bf9c80e061c5bba27e07ad"
SITE_HASH = "0424f75274a85b262071ae0a221b6c14dd7d3ae51fbe9018e5afc1ba43b749cd"
SITE_ID = "0424f75274a85b26"
# (signer, unsigned, id, signature)
ENROL = (
    OWNER_PUB,
    "0101000000000000000000000001000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000018bcfe540f00e0032000000000103cf9161ec2cfdb782508714dd602d2b26d4ca39d5a0"
    "bf9c80e061c5bba27e07ad000666726964676500000000",
    "a32bfaa9c9dd123eb7f7f19f48709fe0e6822670d54ef519fd59f0e474c400c8",
    "7916e8cb87350a06a92c93e25ff4c31d7c3e90a5bf276c2b34e47a5e22e1e9f9f4c60e7adc82575a5086d275"
    "99e7bb0f2f9c153f03d7d38e25c024b34421ff2e",
)
E1 = (
    DEVICE1_PUB,
    "0100000000010000000000000001000000000000000000000000000000000000000000000000000000000000"
    "0000000000070000018bcfe5680001001c0000018bcfe568000000038400000000000000fa00000000000061a8",
    "f394741891a178e5cc3ef23199ed81404dc01e91eb6878ac474f766e7e114c09",
    "e4050c6f6e74db8a39537ccc75c1ee1c828590590cee5b2576a1db916ad8984e48b44d3d8f4c7d143f2520cf"
    "ae6b524db48cb87d7cf40ea8a28f7a81f98a9889",
)
E2 = (
    DEVICE1_PUB,
    "0100000000010000000000000002f394741891a178e5cc3ef23199ed81404dc01e91eb6878ac474f766e7e11"
    "4c09000000070000018bcfe56be8040012000000020000000000001388000468656c70",
    "8ce87c4bd66697c8c107ffbe7c667cc7861c6dcf5f80f6bf65a4c5b9e36182f0",
    "98b4a8f89f42eb0c29f477c0ba930893afbb9d9bd4a7a1adb4e3d88875aa161bddea9fbad967369e87ae2473"
    "333b738087bbbc92b8e1b465b6523074956f066d",
)
REVOKE = (
    OWNER_PUB,
    "0101000000000000000000000002a32bfaa9c9dd123eb7f7f19f48709fe0e6822670d54ef519fd59f0e474c4"
    "00c8000000070000018bcfe56fd00f001500000000010000000000000001000673746f6c656e",
    "9c9f3a3963a35f2ff6c043e770f3079ad63c7a17788daf06bb437405ab77fbce",
    "41e50ed0506f66e065f43cf042d88ec89cd637f54acc77869607d3af2f642755f829773d26d9d1129a26263c"
    "717bc35be4d20029af9007745d8798520930d05c",
)
# Entry E: device 1, seq 3 after C, entry B's interval again (refused: duplicate_record)
E3_UNSIGNED = (
    "01000000000100000000000000038ce87c4bd66697c8c107ffbe7c667cc7861c6dcf5f80f6bf65a4c5b9e3"
    "6182f0000000070000018bcfe56fd001001c0000018bcfe568000000038400000000000000010000000000"
    "000001"
)
# Entry F: device 1, seq 3 after C, an ``order`` (format version 2)
ORDER_TEXT = "0303010424f75274a85b26000000010000000700000028000000000000006400000000000249f0"
ORDER = (
    DEVICE1_PUB,
    "02000000000100000000000000038ce87c4bd66697c8c107ffbe7c667cc7861c6dcf5f80f6bf65a4c5b9e3"
    "6182f0000000070000018bcfe56fd0100054000000280"
    "04e" + ORDER_TEXT.encode().hex(),
    "66aafc411e0911420e31390f65e06778b8cd0ffa3fbb5a4dda513647e74368ec",
    "e92abc8cda7a85e4bc54d0499b8adce27298833be1b12e647e9d34cf366e33b318a29eda97a7423838c353de"
    "99cb693348bf8b8ce9ef77a28d2c6da82eaf7173",
)
# Entry S: site 2's device 1, seq 1, the ``order`` of its ask (the evidence of entry G)
SITE2_OWNER_SECRET = hashlib.sha256(b"p2pgrid spec owner 2").digest()
SITE2_DEVICE1_SECRET = hashlib.sha256(b"p2pgrid spec site 2 device 1").digest()
SITE2_OWNER_PUB = "02064e779083390b8a41d5d8d32c4caf78a9f185f38b360149fee73abcf6254453"
SITE2_DEVICE1_PUB = "03546dae217447a2fc8ec5e6816b19553445427de95482a4df1b9066d99dd4a936"
SITE2_HASH = "dcea50affc6949adca2ea79f451697fea9925073bb45404642a564d98da9ab57"
SITE2_ORDER_TEXT = "030301dcea50affc6949ad000000010000000700000028000000000000006400000000000249f0"
SITE2_ORDER = (
    SITE2_DEVICE1_PUB,
    "0200000000010000000000000001" + "00" * 32 + "000000070000018bcfe564181000540000002800"
    "4e" + SITE2_ORDER_TEXT.encode().hex(),
    "d58301b0d36a1aa6c4e13e4beaad29c1b02b2e258fd12e0fd9c3aff780745e26",
    "ae5d64dd223c2325513c6983fe97ffa22c3baf4d18af918c02fe42eb2948674bf99a30ab61d033d975a7b3f6"
    "819e695362111355730e4b4769bbcd9306013e58",
)
# Entry G: device 1, seq 4 after F, a ``site_sale`` of side 0 (format version 4)
SITE_SALE = (
    DEVICE1_PUB,
    "040000000001000000000000000466aafc411e0911420e31390f65e06778b8cd0ffa3fbb5a4dda513647e743"
    "68ec000000070000018bcfe573b814012c00" + SITE2_HASH + "0000000100000028"
    "00000000000000640000000000003a98"
    "630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd"
    "00d1" + SITE2_ORDER[1] + SITE2_ORDER[3],
    "d123ed2f902e44e08332906b2e90ecf183ad35611ae468d78b31e03c9000aa65",
    "f603f959fedded3435a82af009a12a494806bba863d680d4e533170f787917fd76adc48bcb7e7d020e4ece51"
    "c30f592e3e4356352eae9e2fe0d6dc924af17438",
)
DIGEST_BEFORE_REVOKE = "5ba84a2e54ca2f641acefa081340e98569d74831bab5adf168e616e8b62c310d"
DIGEST_AFTER_REVOKE = "860ede9153edb1bf609427944e33c4121fb358c7a61248e1e38ad17876454bf7"
EMPTY_DIGEST = "e1e1f5cc34882a29ddd9af86bfd52645e7f1878955c8830d8a123bb12a2c5dfe"
PAYMENT_BODY = (
    "0000000000895440"
    "630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd"
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "00000000000003e8"
)


def test_keys_and_site() -> None:
    assert Signer.from_secret(OWNER_SECRET).pubkey.hex() == OWNER_PUB
    assert Signer.from_secret(DEVICE1_SECRET).pubkey.hex() == DEVICE1_PUB
    site = SiteIdentity(bytes.fromhex(OWNER_PUB))
    tagged = hashlib.sha256(b"p2pgrid/site/v1" + bytes.fromhex(OWNER_PUB)).hexdigest()
    assert site.site_hash.hex() == tagged == SITE_HASH
    assert site.site_id == SITE_ID == SITE_HASH[:16]


async def test_entries_and_digests(tmp_path: Path) -> None:
    site_hash = bytes.fromhex(SITE_HASH)
    raws = []
    for signer_hex, unsigned_hex, id_hex, sig_hex in (ENROL, E1, E2, REVOKE):
        unsigned, sig = bytes.fromhex(unsigned_hex), bytes.fromhex(sig_hex)
        message = DOMAIN_TAG + site_hash + unsigned
        assert hashlib.sha256(message).hexdigest() == id_hex
        assert verify(bytes.fromhex(signer_hex), message, sig)
        raws.append(unsigned + sig)
    bodies = [decode_entry(raw, site_hash).body for raw in raws]
    assert bodies == [
        Enrol(Role.DEVICE, 1, bytes.fromhex(DEVICE1_PUB), "fridge", 0),
        MeterReading(1_700_000_000_000, 900, 250, 25_000),
        Share(2, 5_000, "help"),
        Revoke(Role.DEVICE, 1, 1, "stolen"),
    ]
    site = SiteIdentity(bytes.fromhex(OWNER_PUB))
    async with await LogStore.open(tmp_path / "v.sqlite", site, name="vectors") as store:
        assert store.digest().hex() == EMPTY_DIGEST
        report = await store.ingest_many(raws[:3])
        assert [r.outcome for r in report.results] == [Outcome.STORED] * 3
        assert store.digest().hex() == DIGEST_BEFORE_REVOKE
        await store.ingest(raws[3])
        assert store.digest().hex() == DIGEST_AFTER_REVOKE
        assert store.heads()[Author.device(1)].seq == 1  # the share (seq 2) was dropped
    async with await LogStore.open(tmp_path / "w.sqlite", site, name="without") as store:
        report = await store.ingest_many(raws[1:3])  # no enrolment: refused
        assert {r.reason for r in report.results} == {RejectReason.NON_MEMBER}
        await store.ingest_many([raws[0], raws[3]])  # enrolled, then revoked after seq 1
        report = await store.ingest_many([raws[2], raws[1]])
        assert [r.reason for r in report.results] == [RejectReason.REVOKED, None]
        assert store.digest().hex() == DIGEST_AFTER_REVOKE


def test_payment_body_vector() -> None:
    preimage = bytes(range(32))
    payment = Payment(9_000_000, hashlib.sha256(preimage).digest(), preimage, 1_000)
    assert encode_body(payment).hex() == PAYMENT_BODY
    assert decode_body(EntryKind.PAYMENT, bytes.fromhex(PAYMENT_BODY)) == payment


async def test_second_reading_vector_is_refused(tmp_path: Path) -> None:
    site_hash = bytes.fromhex(SITE_HASH)
    raws = [bytes.fromhex(u + sig) for _, u, _, sig in (ENROL, E1, E2)]
    e3 = sign_entry(
        Signer.from_secret(DEVICE1_SECRET),
        site_hash,
        author=Author.device(1),
        seq=3,
        prev=bytes.fromhex(E2[2]),
        period=7,
        timestamp_ms=1_700_000_002_000,
        body=MeterReading(1_700_000_000_000, 900, 1, 1),
    )
    assert e3.raw[:-64].hex() == E3_UNSIGNED
    site = SiteIdentity(bytes.fromhex(OWNER_PUB))
    async with await LogStore.open(tmp_path / "e.sqlite", site, name="record") as store:
        await store.ingest_many(raws)
        report = await store.ingest(e3.raw)
        assert (report.results[0].outcome, report.results[0].reason) == (
            Outcome.REJECTED,
            RejectReason.DUPLICATE_RECORD,
        )
        assert store.digest().hex() == DIGEST_BEFORE_REVOKE


async def test_order_vector_is_a_version_2_entry(tmp_path: Path) -> None:
    site_hash = bytes.fromhex(SITE_HASH)
    signer_hex, unsigned_hex, id_hex, sig_hex = ORDER
    unsigned, sig = bytes.fromhex(unsigned_hex), bytes.fromhex(sig_hex)
    message = DOMAIN_TAG + site_hash + unsigned
    assert hashlib.sha256(message).hexdigest() == id_hex
    assert verify(bytes.fromhex(signer_hex), message, sig)
    assert decode_entry(unsigned + sig, site_hash).body == Order(40, ORDER_TEXT)
    with pytest.raises(MalformedError, match="version"):
        decode_entry(b"\x01" + unsigned[1:] + sig, site_hash)
    raws = [bytes.fromhex(u + s) for _, u, _, s in (ENROL, E1, E2)]
    site = SiteIdentity(bytes.fromhex(OWNER_PUB))
    async with await LogStore.open(tmp_path / "o.sqlite", site, name="order") as store:
        report = await store.ingest_many([*raws, unsigned + sig])
        assert [r.outcome for r in report.results] == [Outcome.STORED] * 4


def checked(vector: tuple[str, str, str, str], site_hash: str) -> bytes:
    """The raw entry of ``vector`` once its id and signature are checked."""
    signer_hex, unsigned_hex, id_hex, sig_hex = vector
    unsigned, sig = bytes.fromhex(unsigned_hex), bytes.fromhex(sig_hex)
    message = DOMAIN_TAG + bytes.fromhex(site_hash) + unsigned
    assert hashlib.sha256(message).hexdigest() == id_hex
    assert verify(bytes.fromhex(signer_hex), message, sig)
    return unsigned + sig


async def test_site_sale_vector_is_a_version_4_entry(tmp_path: Path) -> None:
    assert Signer.from_secret(SITE2_OWNER_SECRET).pubkey.hex() == SITE2_OWNER_PUB
    assert Signer.from_secret(SITE2_DEVICE1_SECRET).pubkey.hex() == SITE2_DEVICE1_PUB
    site2 = SiteIdentity(bytes.fromhex(SITE2_OWNER_PUB))
    assert site2.site_hash.hex() == SITE2_HASH
    evidence = checked(SITE2_ORDER, SITE2_HASH)
    assert len(evidence) == 0xD1
    assert decode_entry(evidence, site2.site_hash).body == Order(40, SITE2_ORDER_TEXT)
    raw = checked(SITE_SALE, SITE_HASH)
    site_hash = bytes.fromhex(SITE_HASH)
    paid = hashlib.sha256(bytes(range(32))).digest()
    assert decode_entry(raw, site_hash).body == SiteSale(
        0, site2.site_hash, 1, 40, 100, 15_000, paid, evidence
    )
    with pytest.raises(MalformedError, match="version"):
        decode_entry(b"\x03" + raw[1:], site_hash)
    side = 61  # the body's first byte (after the kind at 58 and the length)
    with pytest.raises(MalformedError, match="carries a site_sale entry"):
        decode_entry(raw[:side] + b"\x01" + raw[side + 1 :], site_hash)
    raws = [bytes.fromhex(u + s) for _, u, _, s in (ENROL, E1, E2, ORDER)]
    site = SiteIdentity(bytes.fromhex(OWNER_PUB))
    async with await LogStore.open(tmp_path / "s.sqlite", site, name="site_sale") as store:
        report = await store.ingest_many([*raws, raw])
        assert [r.outcome for r in report.results] == [Outcome.STORED] * 5
