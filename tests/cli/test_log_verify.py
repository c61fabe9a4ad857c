"""``p2pgrid log verify``: a clean replica passes with its digest; every kind of
defect (a forged signature, a hole in a chain, an equivocation, another site's
file, a sale that no pooled clearing says, a delivery of no trade) is exit 1
and named; a file that is no replica is exit 2."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from p2pgrid.agent.rounds import order_text
from p2pgrid.config import read_entries, read_key
from p2pgrid.identity import Signer, SiteIdentity
from p2pgrid.ledger import (
    Author,
    Cleared,
    Delivered,
    LogStore,
    LogWriter,
    MeterReading,
    Order,
    Sale,
    SaleSide,
    SiteSale,
    sign_entry,
)
from p2pgrid.market import Ask, DemandCurve, Party, Step
from p2pgrid.service import EXIT_CONFIG, EXIT_FAILED, EXIT_UNAVAILABLE
from p2pgrid.testing.ports import free_port
from tests.cli.deployment import Deployment, cli, deploy, lnd_table, self_signed_cert
from tests.ledger.ledger_factory import Site

READINGS = 3
ANY_SITE = Signer.generate().pubkey.hex()


async def _write_replica(d: Deployment, path: Path) -> str:
    """A replica of the test site: the owner's entries and the fridge's readings."""
    identity = SiteIdentity.from_hex(d.site)
    async with await LogStore.open(path, identity, name="test") as store:
        await store.ingest_many([e.raw for e in read_entries(d.entries, identity)])
        writer = LogWriter(store, read_key(d.root / "keys" / "s1-fridge.key"), Author.device(0))
        for i in range(READINGS):
            reading = MeterReading(1_704_067_200_000 + i * 900_000, 900, 100 + i, 25_000 + i)
            await writer.append(reading, period=0, timestamp_ms=1_800_000_000_000 + i)
        return store.digest().hex()


def _replica(d: Deployment, path: Path) -> str:
    """(The command runs its own event loop: the tests are plain functions.)"""
    return asyncio.run(_write_replica(d, path))


def _verify(db: Path, *args: str) -> tuple[int, dict[str, object]]:
    result = cli("log", "verify", str(db), *args, "--json")
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout)


def test_a_clean_replica_passes_with_its_digest(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    db = tmp_path / "replica.db"
    digest = _replica(d, db)
    before = db.read_bytes()
    code, out = _verify(db, "--config", str(d.site_file))
    assert code == 0
    assert out["ok"] is True
    assert out["digest"] == digest
    assert out["entries"] == len(read_entries(d.entries, SiteIdentity.from_hex(d.site))) + READINGS
    assert db.read_bytes() == before  # read-only
    code, by_key = _verify(db, "--site", d.site)
    assert (code, by_key["digest"]) == (0, digest)


async def _forge_a_pooled_sale(d: Deployment, path: Path, *, delivered: bool = False) -> None:
    """The fridge logs a curve, a clearing its book does not give, and a sale."""
    identity = SiteIdentity.from_hex(d.site)
    async with await LogStore.open(path, identity, name="test") as store:
        writer = LogWriter(store, read_key(d.root / "keys" / "s1-fridge.key"), Author.device(0))
        curve = DemandCurve(Party(identity.site_id, 0), 0, 5, (Step(250_000, 100),))
        at = 1_800_000_001_000
        await writer.append(Order(5, order_text(curve)), period=0, timestamp_ms=at)
        cleared = Cleared(5, 200_000, bytes(32), "00000000")
        await writer.append(cleared, period=0, timestamp_ms=at)
        await writer.append(Sale(1, 100, 20_000), period=0, timestamp_ms=at)
        if delivered:  # paid on delivery: a delivery of no trade, a sale of no delivery
            shown = Delivered(5, 1, 100, bytes(range(32)))
            await writer.append(shown, period=0, timestamp_ms=at)


def test_a_sale_that_no_pooled_clearing_says_is_a_defect(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    db = tmp_path / "replica.db"
    _replica(d, db)
    asyncio.run(_forge_a_pooled_sale(d, db))
    code, out = _verify(db, "--site", d.site)
    assert code == EXIT_FAILED
    assert out["ok"] is False
    assert out["rejected"] == {}  # every entry is a valid entry...
    problems = out["pooled_sales"]
    assert isinstance(problems, list)
    assert len(problems) == 2  # ...but the round and the sale do not add up
    assert "not the book it names" in problems[0]
    assert "no trade of its clearings" in problems[1]


def test_a_delivery_of_no_trade_and_a_sale_without_delivery_are_defects(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    db = tmp_path / "replica.db"
    _replica(d, db)
    asyncio.run(_forge_a_pooled_sale(d, db, delivered=True))
    code, out = _verify(db, "--site", d.site)
    assert code == EXIT_FAILED
    problems = out["pooled_sales"]
    assert isinstance(problems, list)
    assert any("delivered from device 1 is no trade of its clearing" in p for p in problems)
    assert any("has no delivered entry naming its payment" in p for p in problems)


async def _forge_a_purchase_across(d: Deployment, path: Path) -> None:
    """The fridge logs a purchase from a site its site file does not list."""
    identity = SiteIdentity.from_hex(d.site)
    stranger = Site.make(b"log verify: a site nobody listed")
    ask = Ask(Party(stranger.identity.site_id, 2), 0, 5, 100, 200_000)
    order = stranger.chain(Author.device(2)).next(Order(5, order_text(ask)), period=0)
    bought = SiteSale(
        SaleSide.BOUGHT, stranger.membership.site_hash, 2, 5, 60, 12_000, bytes(32), order.raw
    )
    async with await LogStore.open(path, identity, name="test") as store:
        writer = LogWriter(store, read_key(d.root / "keys" / "s1-fridge.key"), Author.device(0))
        await writer.append(bought, period=0, timestamp_ms=1_800_000_001_000)


def test_a_purchase_from_a_site_the_file_does_not_list_is_a_defect(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    db = tmp_path / "replica.db"
    _replica(d, db)
    asyncio.run(_forge_a_purchase_across(d, db))
    code, out = _verify(db, "--config", str(d.site_file))
    assert code == EXIT_FAILED
    assert out["rejected"] == {}  # a valid entry...
    problems = out["site_sales"]
    assert isinstance(problems, list)
    assert len(problems) == 1  # ...that no neighbouring site's ask backs
    assert "not a neighbouring site" in problems[0]


def _tamper(db: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(sql, params)


def test_a_forged_signature_is_a_defect(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    db = tmp_path / "replica.db"
    _replica(d, db)
    with sqlite3.connect(db) as conn:
        eid, raw = conn.execute(
            "SELECT id, raw FROM entries WHERE author = ? AND seq = 2", (Author.device(0).key,)
        ).fetchone()
        forged = bytes(raw[:-1]) + bytes([raw[-1] ^ 1])  # the signature's last byte
        conn.execute("UPDATE entries SET raw = ? WHERE id = ?", (forged, eid))
    code, out = _verify(db, "--site", d.site)
    assert code == EXIT_FAILED
    assert out["ok"] is False
    assert out["rejected"] == {"bad_signature": 1}
    assert out["held"] == 1  # the entry after it has no predecessor now


def test_a_hole_in_a_chain_is_a_defect(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    db = tmp_path / "replica.db"
    _replica(d, db)
    device = Author.device(0).key
    _tamper(db, "DELETE FROM entries WHERE author = ? AND seq = 1", device)
    code, out = _verify(db, "--site", d.site)
    assert code == EXIT_FAILED
    assert out["held"] == READINGS - 1
    assert out["rejected"] == {}


def test_an_equivocation_is_a_defect(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    db = tmp_path / "replica.db"
    _replica(d, db)
    identity = SiteIdentity.from_hex(d.site)
    signer = read_key(d.root / "keys" / "s1-fridge.key")
    with sqlite3.connect(db) as conn:
        prev = conn.execute(
            "SELECT id FROM entries WHERE author = ? AND seq = 1", (Author.device(0).key,)
        ).fetchone()[0]
        twin = sign_entry(
            signer,
            identity.site_hash,
            author=Author.device(0),
            seq=2,
            prev=bytes(prev),
            period=0,
            timestamp_ms=1_800_000_000_001,
            body=MeterReading(1_704_067_200_000 + 900_000, 900, 999, 1),
        )
        row = (twin.id, Author.device(0).key, 2, twin.prev, 0, twin.timestamp_ms, 0, twin.raw)
        kind = conn.execute(
            "SELECT kind FROM entries WHERE author = ? AND seq = 2", (Author.device(0).key,)
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*row[:6], kind, row[7])
        )
    code, out = _verify(db, "--site", d.site)
    assert code == EXIT_FAILED
    assert out["equivocators"] == [str(Author.device(0))]


def test_another_site_s_replica_is_a_defect(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    db = tmp_path / "replica.db"
    _replica(d, db)
    other = deploy(tmp_path / "other")
    code, out = _verify(db, "--site", other.site)
    assert code == EXIT_FAILED
    assert out["same_site"] is False
    assert out["replayed"] == 0


@pytest.mark.parametrize(
    ("content", "args", "says"),
    [
        (None, ["--site", ANY_SITE], "no such file"),
        (b"not sqlite at all" * 100, ["--site", ANY_SITE], "not a p2pgrid replica"),
        (b"", [], "give the site"),
        (b"", ["--site", "zz"], "--site: not a hex public key"),
    ],
    ids=["missing", "not sqlite", "no site", "bad site"],
)
def test_what_is_no_replica_is_exit_2(
    tmp_path: Path, content: bytes | None, args: list[str], says: str
) -> None:
    db = tmp_path / "x.db"
    if content is not None:
        db.write_bytes(content)
    result = cli("log", "verify", str(db), *args)
    assert result.exit_code == EXIT_CONFIG, result.output + result.stderr
    assert "Traceback" not in result.output
    assert says in result.stderr


# -- --against-lnd / --against-utility-lnd: flags and an lnd that does not answer ---


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--site", "{site}", "--against-lnd", "s1-fridge"], "give --config site.toml"),
        (["-c", "{site_file}", "--against-lnd", "nope"], "no device 'nope' (devices: s1-fridge"),
        (
            [
                "-c",
                "{site_file}",
                "--against-lnd",
                "s1-fridge",
                "--against-utility-lnd",
                "{utility_file}",
            ],
            "give one node",
        ),
        (["-c", "{site_file}", "--against-utility-lnd", "{root}/nope.toml"], "no such file"),
        # lnd's files named in the device row do not exist: a configuration error.
        (["-c", "{site_file}", "--against-lnd", "s1-fridge"], "cannot load TLS cert or macaroon"),
    ],
    ids=["no site file", "no such device", "two nodes", "no utility file", "no cert"],
)
def test_bad_lnd_flags_are_exit_2_in_one_line(tmp_path: Path, flags: list[str], says: str) -> None:
    d = deploy(tmp_path)
    db = tmp_path / "replica.db"
    _replica(d, db)
    fill = {"site": d.site, "site_file": d.site_file, "utility_file": d.utility_file}
    args = [f.format(root=tmp_path, **fill) for f in flags]
    result = cli("log", "verify", str(db), *args)
    assert result.exit_code == EXIT_CONFIG, result.output + result.stderr
    assert "Traceback" not in result.output + result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert says in line


@pytest.mark.parametrize("node", ["device", "utility"])
def test_an_lnd_that_does_not_answer_is_exit_3_in_one_line(tmp_path: Path, node: str) -> None:
    port = free_port()  # nothing listens there
    d = deploy(
        tmp_path,
        lnd={"s1-fridge": lnd_table(tmp_path, "s1-fridge", port)},
        utility_lnd_table=lnd_table(tmp_path, "utility", port),
    )
    name = "s1-fridge" if node == "device" else "utility"
    (tmp_path / name).mkdir()
    self_signed_cert(tmp_path / name / "tls.cert")
    macaroon = tmp_path / name / "admin.macaroon"
    macaroon.write_bytes(b"\x02macaroon")
    macaroon.chmod(0o600)
    db = tmp_path / "replica.db"
    _replica(d, db)
    flag = (
        ["--against-lnd", "s1-fridge"]
        if node == "device"
        else ["--against-utility-lnd", str(d.utility_file)]
    )
    result = cli("log", "verify", str(db), "-c", str(d.site_file), *flag, "--json")
    assert result.exit_code == EXIT_UNAVAILABLE, result.output + result.stderr
    assert "Traceback" not in result.output + result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert f"lnd of {name} at 127.0.0.1:{port} does not answer" in line
