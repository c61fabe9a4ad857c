"""Every decoder of peer bytes, fed mutations of real encodings: a value or its typed
error, never anything else; and a value decodes from exactly one encoding."""

from __future__ import annotations

import asyncio

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
    SiteSaleOffer,
    SiteSaleReceipt,
    SiteTradeRequest,
    TradeRequest,
)
from p2pgrid.ledger import EntryKind, MalformedError, wire
from p2pgrid.ledger.bodies import decode_body, encode_body
from p2pgrid.ledger.entry import decode_entry
from p2pgrid.market import MESSAGE_TYPES, MessageError, decode_message
from p2pgrid.net.envelope import EnvelopeError, parse
from p2pgrid.net.envelope import encode_body as encode_envelope_body
from p2pgrid.net.frames import FrameError, Hello, read_frame
from tests.fuzz.conftest import budget, tried
from tests.fuzz.mutate import mutants
from tests.fuzz.seeds import (
    AGENT_MESSAGES,
    BODY_SEEDS,
    ENTRY_SEEDS,
    HELLO_SEEDS,
    MARKET_MESSAGES,
    SITE,
    WIRE_SEEDS,
    envelope_seeds,
)

SITE_HASH = SITE.membership.site_hash


@budget()
@given(mutants(ENTRY_SEEDS))
def test_log_entries(raw: bytes) -> None:
    tried("ledger entry")
    try:
        entry = decode_entry(raw, SITE_HASH)
    except MalformedError:
        return
    assert entry.raw == raw
    assert encode_body(entry.body) == raw[61 : 61 + len(encode_body(entry.body))]


@budget()
@given(st.sampled_from(sorted(BODY_SEEDS)), st.data())
def test_log_bodies(kind: EntryKind, data: st.DataObject) -> None:
    tried("ledger body")
    raw = data.draw(mutants([BODY_SEEDS[kind], *BODY_SEEDS.values()]))
    try:
        body = decode_body(kind, raw)
    except MalformedError:
        return
    assert encode_body(body) == raw


@budget()
@given(mutants(WIRE_SEEDS))
def test_sync_frames(raw: bytes) -> None:
    tried("sync frame")
    try:
        message = wire.decode(raw)
    except MalformedError:
        return
    assert wire.encode(message) == raw


@budget()
@given(mutants(envelope_seeds()))
def test_net_envelopes(raw: bytes) -> None:
    tried("net envelope")
    try:
        envelope = parse(raw)
    except EnvelopeError:
        return
    body = encode_envelope_body(
        site_id=envelope.site_id,
        device_index=envelope.device_index,
        peer_id=envelope.peer_id,
        epoch=envelope.epoch,
        seq=envelope.seq,
        timestamp_ms=envelope.timestamp_ms,
        records=envelope.records,
    )
    assert body + envelope.signature == raw


@budget()
@given(mutants(HELLO_SEEDS))
def test_hellos(raw: bytes) -> None:
    tried("net hello")
    try:
        hello = Hello.decode(raw)
    except FrameError:
        return
    assert hello.encode() == raw


class _Bytes:
    """A stream that yields ``data`` in chunks of ``step`` bytes, then EOF."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = data, step

    async def read(self, n: int | None = None) -> bytes:
        size = min(n or self.step, self.step)
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk

    async def write(self, data: bytes) -> None:
        raise AssertionError("read only")


@budget()
@given(mutants([len(s).to_bytes(4, "big") + s for s in envelope_seeds()]), st.integers(1, 4096))
def test_net_frames(raw: bytes, step: int) -> None:
    tried("net frame")
    try:
        frame = asyncio.run(read_frame(_Bytes(raw, step), 4096))
    except FrameError:
        return
    assert raw[:4] == len(frame).to_bytes(4, "big")
    assert raw[4 : 4 + len(frame)] == frame


@budget()
@given(st.sampled_from(MARKET_MESSAGES), st.data())
def test_market_messages(seed: object, data: st.DataObject) -> None:
    tried("market message")
    kind = data.draw(st.sampled_from(sorted(MESSAGE_TYPES)))
    raw = data.draw(mutants([m.encode() for m in MARKET_MESSAGES]))
    try:
        message = decode_message(kind, raw)
    except MessageError:
        return
    assert message.encode() == raw


AgentMessage = (
    ShareInvoice
    | ShareReceipt
    | SaleOffer
    | TradeRequest
    | SiteTradeRequest
    | SiteSaleOffer
    | SiteSaleReceipt
    | AllowanceRequest
    | AllowanceOffer
    | AllowancePaid
    | AllowanceReceipt
)


@pytest.mark.parametrize(
    "cls",
    [
        ShareInvoice,
        ShareReceipt,
        SaleOffer,
        TradeRequest,
        SiteTradeRequest,
        SiteSaleOffer,
        SiteSaleReceipt,
        AllowanceRequest,
        AllowanceOffer,
        AllowancePaid,
        AllowanceReceipt,
    ],
)
@budget(1 / 3)
@given(data=st.data())
def test_agent_messages(cls: type[AgentMessage], data: st.DataObject) -> None:
    tried("agent message")
    raw = data.draw(mutants([m.encode() for m in AGENT_MESSAGES]))
    try:
        message = cls.decode(raw)
    except MessageError:
        return
    assert message.encode() == raw
