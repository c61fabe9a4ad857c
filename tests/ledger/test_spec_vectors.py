"""The test vectors printed in docs/protocol-log.md hold for this implementation."""

from __future__ import annotations

import hashlib

from p2pgrid.identity import verify
from p2pgrid.ledger import Author, MeterReading, Payment, Share, decode_entry
from p2pgrid.ledger.bodies import EntryKind, decode_body, encode_body
from p2pgrid.ledger.entry import DOMAIN_TAG
from p2pgrid.ledger.heads import AuthorHead, Heads
from tests.ledger.ledger_factory import Site

XPUB = (
    "zpub6jftahH18ngZwHjCjaKnb9wdBY3Mm4U981DXxiK82hswem5ApDTuXMZpFkDZizvk8QYDyuouG4mH7YhgGSu"
    "Cxpyw767T1TjdtrkQMsbTM9n"
)
SITE_HASH = "ec7e6445298d21270df5defa009db1593af7d953694ad6e277edc6413367ab33"
DEVICE1_PUB = "03eff8addf604ae336723472a1b30882ae7636e5673888c1dfc4e50ce0fcb99aba"
E1 = (
    "01000000000100000000000000010000000000000000000000000000000000000000000000000000000000"
    "000000000000070000018bcfe5680001001c0000018bcfe568000000038400000000000000fa0000000000"
    "0061a8",
    "924b6f9b23e961aa8b5b3b7c6183b3d9496ec078d6dd105d58edf94573c90cd2",
    "e01b9c36567547784ce046dd0684274c8e1254b1f3a68e04a923e11b1a7db2d03fc2dcf5965d5b137071109b"
    "e53bccae3f2d450379c294920e42f0ab622964a7",
)
E2 = (
    "0100000000010000000000000002924b6f9b23e961aa8b5b3b7c6183b3d9496ec078d6dd105d58edf94573"
    "c90cd2000000070000018bcfe56be8040012000000020000000000001388000468656c70",
    "ff37b1513dd055a4c2db33e376d4da0863b286a7bdb3933bea1dba9b9c4c2b25",
    "3d653b1a4c14e46f0261ea69bf6a2eee2bedd0931aa0cb315f57a7d9760069db7108dfdfed2f777ca2784808"
    "a763d43bc3d3cf3660e72ec10352c6f6c8ee6a55",
)
DIGEST = "a7be6314cd9da12cb4f4b61b4f644c24a1c61de150ab824f6cd71b0fcc853170"
EMPTY_DIGEST = "e1e1f5cc34882a29ddd9af86bfd52645e7f1878955c8830d8a123bb12a2c5dfe"
PAYMENT_BODY = (
    "0000000000895440"
    "630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd"
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "00000000000003e8"
)


def test_vectors(site: Site) -> None:
    assert site.owner.identity.xpub == XPUB
    site_hash = bytes.fromhex(SITE_HASH)
    assert hashlib.sha256(XPUB.encode("ascii")).digest() == site_hash == site.membership.site_hash
    assert site.membership.pubkey(Author.device(1)).hex() == DEVICE1_PUB
    decoded = []
    for unsigned_hex, id_hex, sig_hex in (E1, E2):
        unsigned, sig = bytes.fromhex(unsigned_hex), bytes.fromhex(sig_hex)
        message = DOMAIN_TAG + site_hash + unsigned
        assert hashlib.sha256(message).hexdigest() == id_hex
        assert verify(bytes.fromhex(DEVICE1_PUB), message, sig)
        entry = decode_entry(unsigned + sig, site_hash)
        assert site.membership.check(entry) is None
        decoded.append(entry)
    assert decoded[0].body == MeterReading(1_700_000_000_000, 900, 250, 25_000)
    assert decoded[1].body == Share(2, 5_000, "help")
    acc = bytes(a ^ b for a, b in zip(decoded[0].id, decoded[1].id, strict=True))
    heads = Heads([AuthorHead(Author.device(1), 2, 2, acc, decoded[1].id)])
    assert heads.digest().hex() == DIGEST
    assert Heads().digest().hex() == EMPTY_DIGEST


def test_payment_body_vector() -> None:
    preimage = bytes(range(32))
    payment = Payment(9_000_000, hashlib.sha256(preimage).digest(), preimage, 1_000)
    assert encode_body(payment).hex() == PAYMENT_BODY
    assert decode_body(EntryKind.PAYMENT, bytes.fromhex(PAYMENT_BODY)) == payment
