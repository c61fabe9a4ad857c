"""Negotiation messages: canonical bytes that round-trip, strict decoding, content ids."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.market import (
    FORMAT_VERSION,
    MAX_GRANTS,
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    Ask,
    Bid,
    Clearing,
    Grant,
    MarketMessage,
    MessageError,
    Party,
    ShareAccept,
    ShareOffer,
    ShareRequest,
    Trade,
    book_id,
    decode_message,
)
from tests.market.strategies import messages

A = Party("00000000000000aa", 1)
B = Party("00000000000000aa", 2)
REQ = ShareRequest(A, period=7, amount_msat=5_000, deadline_ms=1_700_000_000_000)


@given(messages)
def test_every_message_round_trips(message: MarketMessage) -> None:
    data = message.encode()
    assert len(data) <= MAX_MESSAGE_BYTES
    assert type(message).decode(data) == message
    assert decode_message(message.KIND, data) == message


@given(messages)
def test_every_truncation_and_every_extension_is_rejected(message: MarketMessage) -> None:
    data = message.encode()
    cls = type(message)
    for cut in range(len(data)):
        with pytest.raises(MessageError):
            cls.decode(data[:cut])
    with pytest.raises(MessageError):
        cls.decode(data + b"\x00")


@given(messages, st.data())
def test_decoding_is_canonical(message: MarketMessage, data: st.DataObject) -> None:
    """Change one byte: the result is refused or decodes to a message whose
    encoding is exactly the changed bytes (one value, one encoding)."""
    raw = bytearray(message.encode())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]))
    try:
        other = type(message).decode(bytes(raw))
    except MessageError:
        return
    assert other.encode() == bytes(raw)
    assert other != message
    assert other.id != message.id


@given(messages)
def test_the_id_is_derived_from_the_content(message: MarketMessage) -> None:
    again = type(message).decode(message.encode())
    assert again.id == message.id
    assert len(message.id) == 32


def test_another_version_is_refused() -> None:
    data = bytearray(REQ.encode())
    assert data[0] == FORMAT_VERSION
    data[0] = FORMAT_VERSION + 1
    with pytest.raises(MessageError, match="version"):
        ShareRequest.decode(bytes(data))


def test_kinds_are_in_the_market_range_and_distinct() -> None:
    assert sorted(MESSAGE_TYPES) == list(range(0x0300, 0x0307))
    assert all(0x0300 <= cls.KIND <= 0x03FF for cls in MESSAGE_TYPES.values())
    with pytest.raises(MessageError, match="not a market message"):
        decode_message(0x0101, REQ.encode())


def test_request_layout_is_as_documented() -> None:
    assert REQ.encode().hex() == (
        "0100000000000000aa000000010000000700000000000013880000018bcfe56800"
    )
    assert len(REQ.id) == 32


def test_a_retried_request_has_the_same_id_and_a_new_one_another() -> None:
    retry = ShareRequest(A, 7, 5_000, 1_700_000_000_000)
    assert retry.id == REQ.id
    assert ShareRequest(A, 7, 5_000, 1_700_000_001_000).id != REQ.id
    # The same bytes under another kind are another message.
    ask = Ask(A, 7, 1, 10, 1000)
    bid = Bid(A, 7, 1, 10, 1000)
    assert ask.encode() == bid.encode()
    assert ask.id != bid.id


@pytest.mark.parametrize(
    "build",
    [
        lambda: ShareRequest(A, 7, 0, 1),  # nothing to ask for
        lambda: ShareRequest(A, 2**32, 1, 1),  # period beyond u32
        lambda: ShareRequest(A, 7, 2**63, 1),  # amount beyond 2**63-1
        lambda: ShareOffer(b"\x00" * 31, B, 1),  # not a hash
        lambda: ShareOffer(b"\x00" * 32, B, -1),
        lambda: Party("00000000000000AA", 1),  # site ids are lowercase hex
        lambda: Party("00aa", 1),
        lambda: Party("00000000000000aa", -1),
        lambda: Ask(A, 7, 1, 10, 1500),  # off the price tick
        lambda: Bid(A, 7, 1, 0, 1000),  # no energy
        lambda: Bid(A, 7, 1, 10**9 + 1, 1000),  # too much energy
        lambda: Trade(A, A, 1, 1),  # with itself
        lambda: ShareAccept(b"\x00" * 32, (Grant(B, 1), Grant(A, 1))),  # out of order
        lambda: ShareAccept(b"\x00" * 32, (Grant(A, 1), Grant(A, 2))),  # one giver twice
        lambda: Clearing(7, 1, 2000, b"\x00" * 32, (Trade(A, B, 3, 5000),)),  # wrong amount
        lambda: Clearing(7, 1, 0, b"\x00" * 32, (Trade(A, B, 3, 3),)),  # trades at no price
        lambda: Clearing(7, 1, 1000, b"\x00" * 32, ()),  # a price without trades
    ],
)
def test_invalid_values_cannot_be_built(build: object) -> None:
    with pytest.raises(MessageError):
        build()  # type: ignore[operator]


def test_list_limits_are_enforced_when_decoding() -> None:
    grants = tuple(Grant(Party("00000000000000aa", i), 1) for i in range(MAX_GRANTS))
    accept = ShareAccept(b"\x01" * 32, grants)
    assert ShareAccept.decode(accept.encode()) == accept
    raw = bytearray(accept.encode())
    raw[33:35] = (MAX_GRANTS + 1).to_bytes(2, "big")
    with pytest.raises(MessageError, match="exceed"):
        ShareAccept.decode(bytes(raw))
    with pytest.raises(MessageError):
        ShareAccept(b"\x01" * 32, (*grants, Grant(Party("00000000000000aa", 999), 1)))


def test_oversized_and_non_bytes_input_is_refused() -> None:
    with pytest.raises(MessageError, match="exceeds"):
        Clearing.decode(b"\x01" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(MessageError):
        ShareRequest.decode("not bytes")  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="exceeds 2"):
        ShareOffer.decode(ShareOffer(b"\x00" * 32, B, 1).encode()[:-8] + b"\xff" * 8)


def test_a_wire_message_for_the_net_layer() -> None:
    """The shape that p2pgrid.net's WireMessage protocol asks for."""
    for cls in MESSAGE_TYPES.values():
        assert isinstance(cls.KIND, int)
        assert 0x0100 <= cls.KIND <= 0xFFFF
        assert callable(cls.encode)
        assert callable(cls.decode)


def test_vectors_of_docs_market_md() -> None:
    """The test vectors printed in docs/market.md, section 4."""
    assert REQ.id.hex() == "0c2ce95cbbfbf496de578cdaa8d28bb56ca5dd1a133b91b7b97f03cfe877afc4"
    offer = ShareOffer(REQ.id, B, 3_000)
    assert offer.encode().hex() == (
        "01" + REQ.id.hex() + "00000000000000aa000000020000000000000bb8"
    )
    accept = ShareAccept(REQ.id, (Grant(B, 3_000),))
    assert accept.encode().hex() == (
        "01" + REQ.id.hex() + "000100000000000000aa000000020000000000000bb8"
    )
    ask = Ask(B, 7, 40, 100, 120_000)
    bid = Bid(A, 7, 40, 100, 150_000)
    assert ask.encode().hex() == (
        "0100000000000000aa0000000200000007000000280000000000000064000000000001d4c0"
    )
    assert bid.encode().hex()[-16:] == "00000000000249f0"
    assert ask.id.hex() == "298bff2a2b4af74a759215fa12d1cc432a831a4a248e08a2fdb5528ce57ba140"
    clearing = Clearing(7, 40, 135_000, book_id([ask, bid]), (Trade(B, A, 100, 13_500),))
    assert clearing.encode().hex() == (
        "01"
        "00000007"
        "00000028"
        "0000000000020f58"
        "c3bf98c5b94f18210d6bb3d3c4c39f12cf32c613236de34879a64d56d354f2ca"
        "0001"
        "00000000000000aa"
        "00000002"
        "00000000000000aa"
        "00000001"
        "0000000000000064"
        "00000000000034bc"
    )
