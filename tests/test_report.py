"""The period report: table rows from a real fold, and a PNG that decodes."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from rich.console import Console

from p2pgrid.ledger import (
    Allocation,
    AllowanceSale,
    Author,
    DeviceInfo,
    MeterReading,
    Payment,
    Share,
    fold,
)
from p2pgrid.ledger.activity import FlowKind, activity
from p2pgrid.ledger.proof import proof_memo
from p2pgrid.report import period_report, report_png, report_table
from tests.ledger.ledger_factory import T0_MS, Site


def test_report_names_the_device_that_uses_more_than_it_should(tmp_path: Path) -> None:
    site = Site.make(b"report test")
    owner = site.chain(Author.owner())
    entries = [
        owner.next(DeviceInfo(0, "fridge", "kitchen")),
        owner.next(DeviceInfo(1, "fridge", "garage")),
        owner.next(DeviceInfo(2, "fridge", "cellar")),
    ]
    entries += [owner.next(Allocation(d, 100_000)) for d in (0, 1, 2)]
    for device, wh in ((0, 300), (1, 320), (2, 900)):
        chain = site.chain(Author.device(device))
        if device == 0:
            preimage = b"\x01" * 32
            memo = proof_memo(hashlib.sha256(preimage).digest(), preimage, 1_500)
            entries.append(chain.next(Share(2, 40_000, memo), ts=T0_MS + 10_000))
        reading = MeterReading(T0_MS, 900, wh, wh * 250)
        entries.append(chain.next(reading, ts=T0_MS + 20_000))  # after allocations and shares
    report = period_report(fold(entries), 1, site="abc")
    by_device = {line.device: line for line in report.lines}
    assert by_device[2].findings == ("above_class", "borrowed", "exceeded_allocation")
    assert by_device[2].borrowed_msat == 40_000
    assert by_device[0].given_msat == 40_000
    assert (by_device[0].fees_msat, report.fees_msat) == (1_500, 1_500)
    assert by_device[2].spent_msat + by_device[2].overdraft_msat == 225_000
    assert report.wasteful == (2,)
    # device 2: 225 000 used against 100 000 allocated + 40 000 borrowed; device 0
    # gave 40 000 of its 100 000 and then used 75 000: the budget did not bind
    assert (by_device[2].overdraft_msat, by_device[0].overdraft_msat) == (85_000, 15_000)
    assert (report.overdraft_msat, report.overdrawn) == (100_000, (0, 2))
    assert report.alert == "OVERDRAFT 100.000 sat on 2 device(s): the budget did not bind"

    console = Console(record=True, width=200)
    console.print(report_table(report))
    text = console.export_text()
    assert "above_class, borrowed, exceeded_allocation" in text
    assert "site abc, period 1" in text
    assert "routing fees 1.500 sat" in text
    assert report.alert in text

    png = report_png(report, tmp_path / "report.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400
    assert height == 400


def test_report_shows_allowance_bought_and_sold_and_its_price() -> None:
    site = Site.make(b"report allowance")
    owner = site.chain(Author.owner())
    entries = [owner.next(Allocation(d, 100_000)) for d in (0, 1)]
    preimage = b"\x02" * 32
    paid = hashlib.sha256(preimage).digest()
    buyer = site.chain(Author.device(1))
    entries.append(buyer.next(Payment(24_000, paid, preimage, 3), ts=T0_MS + 10_000))
    seller = site.chain(Author.device(0))
    sale = AllowanceSale(1, 30_000, 24_000, paid, preimage)
    entries.append(seller.next(sale, ts=T0_MS + 11_000))
    report = period_report(fold(entries), 1, site="abc")
    by_device = {line.device: line for line in report.lines}
    assert (by_device[0].allowance_sold_msat, by_device[0].allowance_earned_msat) == (
        30_000,
        24_000,
    )
    assert (by_device[1].allowance_bought_msat, by_device[1].allowance_paid_msat) == (
        30_000,
        24_000,
    )
    assert (by_device[0].balance_msat, by_device[1].balance_msat) == (70_000, 130_000)
    console = Console(record=True, width=250)
    console.print(report_table(report))
    text = console.export_text()
    assert "allowance in/out sat" in text
    assert "0.000/30.000" in text  # device 0 sold 30 sat of allowance...
    assert "0.000/24.000" in text  # ...and earned 24 sat for it
    assert "30.000/0.000" in text
    assert "24.000/0.000" in text
    [flow] = activity(entries).flows  # the price's sats: buyer -> seller
    assert (flow.kind, flow.payer, flow.payee, flow.amount_msat) == (
        FlowKind.ALLOWANCE,
        1,
        0,
        24_000,
    )
