"""The accounts comparator of the fault checker, on hand-built account tables: it
finds every difference the statement forbids (docs/reliability.md, "Partitions
judged against an uncut run") and none it allows. No stack: these run in the unit
part of the test command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from p2pgrid.ledger import Author, Entry, Order, SaleSide, SiteSale
from p2pgrid.scenario import load_scenario
from tests.faults.checker import (
    DevicePeriod,
    Scope,
    compare_accounts,
    needs_no_market,
    replica_paths,
    unpaired_site_sales,
)
from tests.faults.conftest import NO_MARKET, SCENARIO
from tests.ledger.ledger_factory import Site

SHIPPED_LIGHT = Path(__file__).parents[2] / "p2pgrid" / "scenarios" / "two_sites_light.toml"
T0 = 1_704_103_200_000  # an interval start (modelled ms)
STEP = 900_000


def paid(readings: tuple[tuple[int, int], ...], **changes: object) -> DevicePeriod:
    """A device period billed 250 msat/Wh, invoiced and paid once, in full."""
    amount = 250 * sum(wh for _, wh in readings)
    account = DevicePeriod(
        readings=readings,
        bill_msat=amount,
        invoiced_msat=amount,
        paid_msat=amount,
        payments=1,
    )
    return dataclasses.replace(account, **changes)  # type: ignore[arg-type]


READ = ((T0, 100), (T0 + STEP, 120), (T0 + 2 * STEP, 90))
REFERENCE = {
    ("store-1", "s1-fridge", 0): paid(READ),
    ("store-1", "s1-ev", 0): paid(((T0, 400), (T0 + STEP, 410))),
}


@pytest.mark.parametrize("scope", list(Scope))
def test_equal_accounts_pass(scope: Scope) -> None:
    assert compare_accounts(REFERENCE, dict(REFERENCE), scope) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"readings": ((T0, 100), (T0 + STEP, 121), (T0 + 2 * STEP, 90))},
            f"interval {T0 + STEP}: 121 Wh cut, 120 Wh uncut",
        ),
        ({"readings": READ[:2]}, f"interval {T0 + 2 * STEP} read uncut (90 Wh), not cut"),
        ({"bill_msat": 1}, "bill 1 msat"),
        ({"invoiced_msat": None}, "no invoice"),
        ({"paid_msat": 2 * 250 * 310, "payments": 2}, "in 2 payments"),
        ({"carried_out_msat": 5}, "carried_out_msat 5 cut, 0 uncut"),
        ({"curtailed": (T0,)}, "curtailed"),
        ({"shares_received_msat": 1000}, "shares_received_msat 1000 cut, 0 uncut"),
        ({"orders": 1}, "orders 1 cut, 0 uncut"),
    ],
)
def test_a_difference_the_statement_forbids_is_named(
    change: dict[str, object], expected: str
) -> None:
    key = ("store-1", "s1-fridge", 0)
    cut = {**REFERENCE, key: dataclasses.replace(REFERENCE[key], **change)}  # type: ignore[arg-type]
    problems = compare_accounts(REFERENCE, cut, Scope.EXACT)
    assert problems, f"{change} went unnoticed"
    assert any(expected in p and "store-1/s1-fridge period 0" in p for p in problems), problems


def test_a_device_period_missing_from_one_run_is_named() -> None:
    cut = {k: v for k, v in REFERENCE.items() if k[1] != "s1-ev"}
    assert compare_accounts(REFERENCE, cut, Scope.EXACT) == [
        "store-1/s1-ev/0: in the uncut run only"
    ]


def test_metered_scope_allows_market_decisions_and_nothing_else() -> None:
    """Where the market is needed, a cut may change purchases, shares and the
    curtailed intervals (and so those readings), never which intervals were read,
    nor a reading no market decision touched, nor invoice == bill, paid once."""
    key = ("store-1", "s1-fridge", 0)
    helped = dataclasses.replace(REFERENCE[key], shares_received_msat=7000)
    curtailed = paid(((T0, 100), (T0 + STEP, 0), (T0 + 2 * STEP, 90)), curtailed=(T0 + STEP,))
    bought = paid(((T0, 70), (T0 + STEP, 90), (T0 + 2 * STEP, 90)), bought_wh=60)
    for cut in (curtailed, bought):
        assert compare_accounts({**REFERENCE, key: helped}, {**REFERENCE, key: cut},
                                Scope.METERED) == []  # fmt: skip
        assert compare_accounts({**REFERENCE, key: helped}, {**REFERENCE, key: cut},
                                Scope.EXACT) != []  # fmt: skip
    # An untouched reading that differs, an interval not read, an invoice not the bill:
    wrong = paid(((T0, 101), (T0 + STEP, 120)))
    wrong = dataclasses.replace(wrong, invoiced_msat=wrong.bill_msat + 1)
    problems = compare_accounts(REFERENCE, {**REFERENCE, key: wrong}, Scope.METERED)
    assert any(f"interval {T0}: 101 Wh cut, 100 Wh uncut" in p for p in problems), problems
    assert any(f"interval {T0 + 2 * STEP} read uncut" in p for p in problems), problems
    assert any(p.startswith("cut run:") and "!= bill" in p for p in problems), problems


def test_no_market_scenario_is_judged_exactly_and_the_shipped_one_is_not() -> None:
    assert needs_no_market(load_scenario(NO_MARKET))
    assert not needs_no_market(load_scenario(SCENARIO))  # a producer, budgets short


@pytest.mark.parametrize(("budget", "enough"), [(3_459_000, True), (3_458_998, False)])
def test_one_msat_short_needs_the_market(tmp_path: Path, budget: int, enough: bool) -> None:
    """s1-ev (weight 4 of 8) costs 1 729 500 msat in period 0: a site budget of
    3 459 000 covers it exactly, 2 msat less leaves it 1 msat short."""
    text = NO_MARKET.read_text().replace("budget_msat = 8000000", f"budget_msat = {budget}", 1)
    path = tmp_path / "budget.toml"
    path.write_text(text)
    assert needs_no_market(load_scenario(path)) is enough


def test_a_purchase_across_sites_must_be_sold_once_by_the_sellers_site() -> None:
    buyers, sellers = Site.make(b"checker: buyers"), Site.make(b"checker: sellers")
    buyer, seller = buyers.chain(Author.device(0)), sellers.chain(Author.device(1))
    order = seller.next(Order(3, "0303ff"))  # opaque to the log

    def bought(h: bytes) -> Entry:
        return buyer.next(
            SiteSale(SaleSide.BOUGHT, sellers.membership.site_hash, 1, 3, 60, 12_000, h, order.raw)
        )

    def sold(purchase: Entry) -> Entry:
        assert isinstance(purchase.body, SiteSale)
        h = purchase.body.payment_hash
        return seller.next(
            SiteSale(SaleSide.SOLD, buyers.membership.site_hash, 0, 3, 60, 12_000, h, purchase.raw)
        )

    one, two = bought(b"\x01" * 32), bought(b"\x02" * 32)
    logs = {"x": [one, two], "y": [order, sold(one)]}
    assert unpaired_site_sales(logs) == [f"site sale {'02' * 6}: bought 1x, sold 0x"]
    logs["y"].append(sold(two))
    assert unpaired_site_sales(logs) == []
    logs["y"].append(sold(two))  # sold twice
    assert unpaired_site_sales(logs) == [f"site sale {'02' * 6}: bought 1x, sold 2x"]


def test_the_light_devices_of_a_site_node_keep_one_replica_in_their_gateway() -> None:
    """The demo's store-1: fridge and hvac light on store-1-node, one gateway
    process whose one replica is ``store-1.gateway.db`` in the fridge's (lowest
    index) data dir; the EV and every device of store-2 keep their own."""
    scenario = load_scenario(SHIPPED_LIGHT)
    work = Path("/run")
    assert replica_paths(scenario, work, "store-1") == {
        "utility": work / "utility" / "utility-store-1.db",
        "s1-ev": work / "s1-ev" / "s1-ev.db",
        "store-1-node": work / "s1-fridge" / "store-1.gateway.db",
    }
    assert set(replica_paths(scenario, work, "store-2")) == {
        "utility",
        "s2-solar",
        "s2-hvac",
        "s2-heater",
    }
