"""The lnd client keeps what the node decoded: paying an invoice just checked asks
the node to decode it no second time (one round trip less per payment)."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from p2pgrid.lightning import InvoiceError, PaymentStatus
from p2pgrid.lightning.lnd import DECODED_KEPT, LndClient
from tests.lightning.mock_lnd import mock_client
from tests.lightning.test_bolt11 import REAL

PREIMAGE = bytes(range(32))
HASH = hashlib.sha256(PREIMAGE).hexdigest()


class FakeLnd:
    """lnd's REST answers for decode and send; counts the requests per path kind."""

    def __init__(self) -> None:
        self.decodes: list[str] = []
        self.sends = 0
        self.refuse_decode = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/v1/payreq/"):
            self.decodes.append(path.removeprefix("/v1/payreq/"))
            if self.refuse_decode:
                return httpx.Response(500, json={"code": 2, "message": "checksum failed"})
            return httpx.Response(200, json={"destination": "02" + "ab" * 32,
                                             "payment_hash": HASH, "num_msat": "1000",
                                             "timestamp": "1", "expiry": "3600"})  # fmt: skip
        if path == "/v2/router/send":
            self.sends += 1
            paid = {"payment_hash": HASH, "status": "SUCCEEDED", "value_msat": "1000",
                    "payment_preimage": PREIMAGE.hex()}  # fmt: skip
            line = {"result": paid}
            return httpx.Response(200, content=json.dumps(line).encode() + b"\n")
        return httpx.Response(404, json={"message": f"no {path}"})


def client_of(lnd: FakeLnd) -> LndClient:
    return mock_client(lnd.handle)


async def test_paying_a_checked_invoice_decodes_it_once() -> None:
    lnd = FakeLnd()
    client = client_of(lnd)
    decoded = await client.decode_invoice(REAL)
    payment = await client.pay_invoice(REAL, fee_limit_msat=10)
    assert (decoded.payment_hash, payment.status) == (HASH, PaymentStatus.SUCCEEDED)
    assert (len(lnd.decodes), lnd.sends) == (1, 1)
    await client.pay_invoice(REAL.upper(), fee_limit_msat=10)  # the same request
    assert len(lnd.decodes) == 1
    await client.aclose()


async def test_a_refused_decode_is_not_kept() -> None:
    lnd = FakeLnd()
    client = client_of(lnd)
    lnd.refuse_decode = True
    with pytest.raises(InvoiceError):
        await client.pay_invoice(REAL, fee_limit_msat=10)
    lnd.refuse_decode = False
    assert (await client.decode_invoice(REAL)).payment_hash == HASH
    assert (len(lnd.decodes), lnd.sends) == (2, 0)
    await client.aclose()


async def test_only_the_latest_decodes_are_kept() -> None:
    lnd = FakeLnd()
    client = client_of(lnd)
    others = [REAL[:-8] + f"{i:08d}".translate(str.maketrans("0123456789", "qpzry9x8gf"))
              for i in range(DECODED_KEPT)]  # fmt: skip
    await client.decode_invoice(REAL)
    for other in others:
        await client.decode_invoice(other)
    await client.decode_invoice(others[-1])
    assert len(lnd.decodes) == 1 + DECODED_KEPT
    await client.decode_invoice(REAL)  # pushed out by the newer ones: asked again
    assert len(lnd.decodes) == 2 + DECODED_KEPT
    await client.aclose()
