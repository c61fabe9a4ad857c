"""What the lnd client lets near a URL: BOLT11 strings and payment hashes are checked first."""

from __future__ import annotations

import pytest

from p2pgrid.lightning.errors import InvoiceError
from p2pgrid.lightning.lnd import check_bolt11, check_payment_hash
from tests.regtest.test_client_errors import HOSTILE_BOLT11

#: A real regtest invoice (lnd, 1000 msat), as lnd prints it.
REAL = (
    "lnbcrt10n1p5hd6a9pp5qpj6ukzfxedrqn6t7z6y3e8w7jn7s5gzdxwy8rw6ngmkyyq0yqdsdqqcqzzsxqyz5vq"
    "sp5yv7lwmzc6yh0ltk2kq6ljg9afs7awyp4u5adxuyg8j4x0quf6kpq9qxpqysgqe2w3gaq9mtdzdvysdq3rwkm"
    "y9u0jccvh0qsmvx3v6t79q0tm4cq9fusfd2pyy0f6xq8j48p6lwxdwrjyc7dzhhfr6g7vqn4tsp5yxlcqvksvth"
)


def test_a_bolt11_shaped_string_passes_in_lower_case() -> None:
    assert check_bolt11(REAL) == REAL
    assert check_bolt11(REAL.upper()) == REAL


@pytest.mark.parametrize("bolt11", HOSTILE_BOLT11)
def test_hostile_bolt11_is_refused_before_any_request(bolt11: str) -> None:
    with pytest.raises(InvoiceError):
        check_bolt11(bolt11)


@pytest.mark.parametrize("payment_hash", ["../getinfo", "ab" * 31, "AB" * 32, "ab" * 32 + "\n"])
def test_payment_hash_is_64_lower_hex(payment_hash: str) -> None:
    with pytest.raises(InvoiceError):
        check_payment_hash(payment_hash)
    assert check_payment_hash("ab" * 32) == "ab" * 32
