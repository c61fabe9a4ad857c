"""Leftover allowance (docs/market.md 2.9) with its buyer and its seller killed
(SIGKILL) in its money path, on the pooled stack (``pooled_stack``, shared with
``test_pooled_sales.py`` and ``test_pay_on_delivery.py``): every agent its own
OS process with its own lnd, real libp2p, real SQLite; each killed one started
again on the same files by the launcher (:meth:`p2pgrid.launcher.Running.restart`),
the dying processes being :mod:`p2pgrid.testing.crash` on the same files.

The run is ``test_pooled_sales.allowance_scenario`` (the EV short, roof-a selling):
the EV dies in the middle of its first allowance payment (intent recorded,
payment with lnd, nothing logged, no "paid" sent to the seller), and roof-a, the
seller, dies instead of logging the ``allowance_sale`` of the invoice it finds
paid (at its period's close: the buyer never said so). Restarted, the EV
resolves its payment by hash and logs it once; roof-a loads its open offer from
its intents file and logs the sale once.

Checked with the fault suite's checker (:func:`tests.faults.checker.check_trial`:
lnd and every replica, no payment twice, nothing in flight, lnd and the logs agree
to the msat) and, beyond it: every allowance invoice that the seller's lnd settled
in the run has exactly one ``allowance_sale`` and one ``payment``. (Every device
sells its leftover, so the same holds of each device's lnd: while roof-a is down,
the EV may buy from another.) (The kill of a
buyer across sites is in ``test_pooled_sales.py``, on its first run.)
"""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from p2pgrid.ledger import AllowanceSale, Payment
from p2pgrid.lightning import InvoiceState
from p2pgrid.regtest import Stack
from tests.faults.checker import utility_log
from tests.regtest.test_pooled_sales import (
    Killed,
    allowance_scenario,
    run_with_kills,
    short_wait,
)

BUYER_DIES = ("ev", "--mid-payment", "allowance:0")
SELLER_DIES = ("roof-a", "--before-entry", "allowance_sale:0")


@pytest.fixture(scope="module")
async def allowance_run(pooled_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Killed:
    tmp = tmp_path_factory.mktemp("allowance-kills")
    path = short_wait(allowance_scenario(tmp / "allowance.toml"), tmp / "short.toml")
    return await run_with_kills(pooled_stack, path, tmp / "run", (BUYER_DIES, SELLER_DIES))


async def test_allowance_buyer_and_seller_died_where_they_were_meant_to(
    allowance_run: Killed,
) -> None:
    _, _, result, _, exits, _ = allowance_run
    assert exits == {BUYER_DIES[0]: -signal.SIGKILL, SELLER_DIES[0]: -signal.SIGKILL}
    first = {name: (result.work_dir / f"{name}.log").read_text() for name in exits}
    assert "is with lnd, not in the log" in first[BUYER_DIES[0]]
    assert "allowance_sale of period 0 is not in the log" in first[SELLER_DIES[0]]
    restarted = (result.work_dir / f"{SELLER_DIES[0]}.1.log").read_text()
    assert "is open (restored)" in restarted


async def test_each_allowance_paid_is_sold_and_paid_once_to_the_msat(
    allowance_run: Killed,
) -> None:
    scenario, stack, result, before, _, verdict = allowance_run
    assert verdict.ok, "\n".join(verdict.problems)
    [site] = scenario.sites
    entries = await utility_log(scenario, result.work_dir, site.name, result.identity(site))
    sales = Counter(e.body.payment_hash for e in entries if isinstance(e.body, AllowanceSale))
    payments = Counter(e.body.payment_hash for e in entries if isinstance(e.body, Payment))
    seller_of = {
        e.body.payment_hash: e.author.index for e in entries if isinstance(e.body, AllowanceSale)
    }
    # every device sells its leftover: while roof-a is down, the EV may buy from another
    settled: dict[bytes, int] = {}
    for device in site.devices:
        old = {i.payment_hash for i in before[device.name].invoices}
        async with stack.client(device.name) as node:
            for i in await node.list_invoices():
                if (
                    i.payment_hash not in old
                    and i.state is InvoiceState.SETTLED
                    and i.memo.startswith("p2pgrid allowance ")
                ):
                    settled[bytes.fromhex(i.payment_hash)] = device.index
    seller = next(d for d in site.devices if d.name == SELLER_DIES[0])
    assert seller.index in settled.values(), "no allowance invoice of the killed seller was paid"
    assert set(sales) == set(settled)  # every paid invoice is a sale, and no sale is unpaid
    for payment_hash, index in settled.items():
        assert (sales[payment_hash], payments[payment_hash]) == (1, 1), payment_hash.hex()
        assert seller_of[payment_hash] == index, "a sale logged by another device than the payee"
