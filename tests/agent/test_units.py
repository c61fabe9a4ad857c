"""Agent pieces without the network: the payment handshake's codec, the share
proof and the scenario file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.agent.messages import (
    AllowanceOffer,
    AllowancePaid,
    AllowanceReceipt,
    AllowanceRequest,
    SaleOffer,
    ShareInvoice,
    ShareReceipt,
    TradeRequest,
)
from p2pgrid.agent.payguard import (
    allowance_memo,
    payee_of,
    sale_memo,
    share_memo,
    site_sale_memo,
)
from p2pgrid.errors import ConfigError
from p2pgrid.ledger.proof import parse_proof, proof_memo
from p2pgrid.market import MessageError, Party, Priority
from p2pgrid.scenario import load_scenario, parse_scenario

SCENARIO = Path(__file__).parents[2] / "p2pgrid" / "scenarios" / "two_sites.toml"


@given(st.binary(min_size=32, max_size=32), st.integers(1, 2**63 - 1), st.text("lnbcrt0123456789"))
def test_share_invoice_round_trips_and_rejects_truncation(
    request_id: bytes, amount: int, bolt11: str
) -> None:
    message = ShareInvoice(request_id, amount, bolt11)
    data = message.encode()
    assert ShareInvoice.decode(data) == message
    for cut in range(len(data)):
        with pytest.raises(MessageError):
            ShareInvoice.decode(data[:cut])
    with pytest.raises(MessageError):
        ShareInvoice.decode(data + b"\x00")


def test_sale_offer_round_trips_and_refuses_non_ascii() -> None:
    offer = SaleOffer(b"\x03" * 32, 508, 101_600, "lnbcrt1016n1...")
    assert SaleOffer.decode(offer.encode()) == offer
    with pytest.raises(MessageError, match="not ASCII"):
        SaleOffer.decode(offer.encode()[:-1] + b"\xff")
    with pytest.raises(MessageError):
        SaleOffer(b"\x03" * 32, 0, 1, "")


def test_trade_request_round_trips_and_refuses_a_bad_book() -> None:
    request = TradeRequest(3, 17, b"\x04" * 32, (0, 2, 5))
    raw = request.encode()
    assert raw.hex() == "010000000300000011" + "04" * 32 + "0003000000000000000200000005"
    assert TradeRequest.decode(raw) == request
    for bad in (raw[:-1], raw + b"\x00"):
        with pytest.raises(MessageError):
            TradeRequest.decode(bad)
    for devices in ((), (2, 2), (5, 2)):
        with pytest.raises(MessageError):
            TradeRequest(3, 17, b"\x04" * 32, devices)


def test_share_receipt_round_trips() -> None:
    receipt = ShareReceipt(b"\x01" * 32, b"\x02" * 32, b"entry bytes")
    assert ShareReceipt.decode(receipt.encode()) == receipt
    with pytest.raises(MessageError):
        ShareReceipt(b"\x01" * 31, b"\x02" * 32, b"")


def test_share_proof_must_match_its_hash() -> None:
    preimage = b"\x07" * 32
    payment_hash = hashlib.sha256(preimage).digest()
    proof = parse_proof(proof_memo(payment_hash, preimage, 1000))
    assert proof is not None
    assert (proof.payment_hash, proof.preimage, proof.fee_msat) == (payment_hash, preimage, 1000)
    assert parse_proof(proof_memo(b"\x00" * 32, preimage, 0)) is None
    assert parse_proof(proof_memo(payment_hash, preimage, -1)) is None
    assert parse_proof("help") is None


def test_the_shipped_scenario() -> None:
    """Its sites, and devices that the market ranks apart (the owner's entries of a
    deployment of it: tests/config/test_deployment.py)."""
    scenario = load_scenario(SCENARIO)
    assert [len(s.devices) for s in scenario.sites] == [3, 3]
    assert {d.priority for s in scenario.sites for d in s.devices} >= {
        Priority.CRITICAL,
        Priority.DEFERRABLE,
    }


def test_a_bad_scenario_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r'sites\[0\] \("s"\)\.seed: missing'):
        parse_scenario(
            {
                "clock": {"intervals_per_period": 4, "interval_s": 1, "periods": 1},
                "tariff": {"msat_per_kwh": 1},
                "utility": {"seed": "u"},
                "sites": [{"name": "s", "budget_msat": 1, "devices": []}],
            }
        )
    with pytest.raises(ConfigError, match="cannot read scenario"):
        load_scenario(Path("/nonexistent.toml"))


def test_allowance_messages_round_trip_and_refuse_bad_values() -> None:
    """The vector of docs/protocol.md ("Selling leftover allowance")."""
    request = AllowanceRequest(Party("00000000000000aa", 3), 7, 30_000, 90, 1_700_000_000_000)
    raw = request.encode()
    assert raw.hex() == ("0100000000000000aa000000030000000700000000000075305a0000018bcfe56800")
    assert request.id.hex() == "b5d21eff3c39b1fc64ae3c5fd246088de14be42fbcc819bc553559934c347e13"
    assert AllowanceRequest.decode(raw) == request
    offer = AllowanceOffer(request.id, Party("00000000000000aa", 0), 30_000, 80, 24_000, "lnbcrt1")
    paid = AllowancePaid(request.id, b"\x02" * 32)
    receipt = AllowanceReceipt(request.id, b"entry bytes")
    for message in (request, offer, paid, receipt):
        data = message.encode()
        assert type(message).decode(data) == message
        for bad in (data[:-1], data + b"\x00"):
            with pytest.raises(MessageError):
                type(message).decode(bad)
    for bad_request in (
        lambda: AllowanceRequest(request.buyer, 7, 0, 90, 0),  # nothing asked
        lambda: AllowanceRequest(request.buyer, 7, 1, 101, 0),  # above face value
    ):
        with pytest.raises(MessageError):
            bad_request()
    with pytest.raises(MessageError):
        AllowanceOffer(request.id, offer.seller, 30_000, 0, 24_000, "")  # a price of 0 %


def test_invoice_descriptions_end_with_their_payee() -> None:
    """The vectors of docs/protocol.md ("Invoice descriptions")."""
    rid = bytes(range(32))
    one, three = Party("00000000000000aa", 1), Party("00000000000000aa", 3)
    other = Party("00000000000000bb", 0)
    head = "p2pgrid {} " + rid.hex()
    vectors = {
        share_memo(rid, three, one, 24_000): (
            head.format("share") + " from 00000000000000aa/1 to 00000000000000aa/3 24000 msat"
            " payee 00000000000000aa/3",
            three,
        ),
        sale_memo(rid, one, three, 60, 12_000, on_delivery=True): (
            head.format("sale") + " 60 Wh from 00000000000000aa/1 to 00000000000000aa/3"
            " 12000 msat on delivery payee 00000000000000aa/1",
            one,
        ),
        site_sale_memo(rid, one, other, 60, 12_000): (
            head.format("site sale") + " 60 Wh from 00000000000000aa/1 to 00000000000000bb/0"
            " 12000 msat payee 00000000000000aa/1",
            one,
        ),
        allowance_memo(rid, one, three, 30_000, 24_000, 7): (
            head.format("allowance") + " 30000 msat of period 7 from 00000000000000aa/1"
            " to 00000000000000aa/3 for 24000 msat payee 00000000000000aa/1",
            one,
        ),
    }
    for memo, (expected, payee) in vectors.items():
        assert memo == expected
        assert payee_of(memo) == payee
