"""A payment stream is read to its end before the client returns its outcome, so
that its connection goes back to the pool (httpx closes the connection of a
response closed early: the next call would pay a new TCP and TLS handshake); a
stream that does not end is closed after ``STREAM_END_S``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from p2pgrid.lightning import PaymentFailed, PaymentStatus
from p2pgrid.lightning import lnd as lnd_module
from p2pgrid.lightning.lnd import LndClient
from tests.lightning.mock_lnd import mock_client
from tests.lightning.test_bolt11 import REAL

PREIMAGE = bytes(range(32))
HASH = hashlib.sha256(PREIMAGE).hexdigest()
DECODED = {"destination": "02" + "ab" * 32, "payment_hash": HASH, "num_msat": "1000",
           "timestamp": "1", "expiry": "3600"}  # fmt: skip


def update(status: str) -> bytes:
    failed = status == "FAILED"
    payment = {"payment_hash": HASH, "status": status, "value_msat": "1000",
               "payment_preimage": "" if failed else PREIMAGE.hex(),
               "failure_reason": "FAILURE_REASON_NO_ROUTE" if failed else ""}  # fmt: skip
    return json.dumps({"result": payment}).encode() + b"\n"


class Body(httpx.AsyncByteStream):
    """A streamed response body: its lines, then (``hang``) a wait that never ends;
    records how far it was read and whether it was closed."""

    def __init__(self, lines: list[bytes], *, hang: bool = False) -> None:
        self.lines = lines
        self.hang = hang
        self.read_to_end = False
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for line in self.lines:
            yield line
        if self.hang:
            await asyncio.Event().wait()
        self.read_to_end = True

    async def aclose(self) -> None:
        self.closed = True


class FakeLnd:
    def __init__(self, lines: list[bytes], *, hang: bool = False) -> None:
        self.lines = lines
        self.hang = hang
        self.bodies: list[Body] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/v1/payreq/"):
            return httpx.Response(200, json=DECODED)
        if path == "/v2/router/send" or path.startswith("/v2/router/track/"):
            body = Body(self.lines, hang=self.hang)
            self.bodies.append(body)
            return httpx.Response(200, stream=body)
        return httpx.Response(404, json={"message": f"no {path}"})


def client_of(lnd: FakeLnd) -> LndClient:
    return mock_client(lnd.handle)


async def test_a_payment_returns_once_its_stream_has_ended() -> None:
    lnd = FakeLnd([update("IN_FLIGHT"), update("SUCCEEDED")])
    client = client_of(lnd)
    payment = await client.pay_invoice(REAL, fee_limit_msat=10)
    assert payment.status is PaymentStatus.SUCCEEDED
    [body] = lnd.bodies
    assert body.read_to_end
    assert body.closed
    await client.aclose()


async def test_a_failed_payment_reads_its_stream_to_the_end_too() -> None:
    lnd = FakeLnd([update("FAILED")])
    client = client_of(lnd)
    with pytest.raises(PaymentFailed, match="NO_ROUTE"):
        await client.pay_invoice(REAL, fee_limit_msat=10)
    assert lnd.bodies[0].read_to_end
    await client.aclose()


async def test_tracking_reads_the_stream_to_the_end() -> None:
    lnd = FakeLnd([update("SUCCEEDED")])
    client = client_of(lnd)
    payment = await client.track_payment(HASH)
    assert payment.status is PaymentStatus.SUCCEEDED
    assert lnd.bodies[0].read_to_end
    assert lnd.bodies[0].closed
    await client.aclose()


async def test_a_stream_that_does_not_end_is_closed_after_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lnd_module, "STREAM_END_S", 0.05)
    lnd = FakeLnd([update("SUCCEEDED")], hang=True)
    client = client_of(lnd)
    started = time.monotonic()
    payment = await client.pay_invoice(REAL, fee_limit_msat=10)
    assert payment.status is PaymentStatus.SUCCEEDED
    assert time.monotonic() - started < 5.0  # the bound, not the payment's deadline
    [body] = lnd.bodies
    assert body.closed
    assert not body.read_to_end
    await client.aclose()


async def test_no_bound_closes_the_stream_at_the_final_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``STREAM_END_S = 0`` is the behaviour before the streams were read to their end
    (the settlement benchmark compares the two)."""
    monkeypatch.setattr(lnd_module, "STREAM_END_S", 0.0)
    lnd = FakeLnd([update("SUCCEEDED"), update("SUCCEEDED")])
    client = client_of(lnd)
    payment = await client.pay_invoice(REAL, fee_limit_msat=10)
    assert payment.status is PaymentStatus.SUCCEEDED
    [body] = lnd.bodies
    assert body.closed
    assert not body.read_to_end
    await client.aclose()
