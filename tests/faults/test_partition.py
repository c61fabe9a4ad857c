"""A site cut off from the utility and the other site for part of a period, judged
against an uncut run of the same scenario (docs/reliability.md, "Partitions judged
against an uncut run").

The scenario is ``no_market.toml``: the fault suite's sites and devices, with every
allocation above its device's demand and no producer, so no market decision ever
needs a peer and the statement asks for *every* figure to be equal: each
interval's reading, curtailments (none), the bill, the invoice, the amount paid
(once), the carry-over, the market's figures (none). The cut is the fault table's
``site-partition`` row (10 s), on the site and at the moment the seed draws; the
uncut run is made once per session (``References``). Each trial is also checked by
the fault checker (replicas converge, every period settled, lnd and the log agree).

``--partition-trials N`` (default 1, the test command's) runs N trials; trial i
uses seed ``--fault-seed`` + i.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario, load_scenario
from p2pgrid.testing.faults import FAULTS, Action
from tests.faults.checker import Scope, compare_accounts, needs_no_market, read_accounts
from tests.faults.conftest import NO_MARKET
from tests.faults.trials import References, record_of, run_once

(PARTITION,) = [f for f in FAULTS if f.action is Action.PARTITION]


async def test_partition_against_uncut_run(
    fault_stack: tuple[Scenario, Stack],
    fault_seed: int,
    partition_trial: int,
    tmp_path: Path,
    record: list[dict[str, Any]],
    references: References,
) -> None:
    shipped, stack = fault_stack
    seed = fault_seed + partition_trial
    scenario = load_scenario(NO_MARKET)
    assert [d.name for s in scenario.sites for d in s.devices] == [
        d.name for s in shipped.sites for d in s.devices
    ]  # the suite's stack has their lnd nodes
    assert needs_no_market(scenario)  # so every figure must be equal
    rng = random.Random(seed)
    site = rng.choice(scenario.sites)
    victims = [d.name for d in site.devices]
    # Cut within the metered part of the run, so that it overlaps part of a period.
    run_s = scenario.periods * scenario.intervals_per_period * scenario.interval_s
    moment = rng.uniform(0.0, run_s - PARTITION.outage_s)
    print(f"seed {seed}: {site.name} cut for {PARTITION.outage_s:.0f} s at +{moment:.1f}s")
    reference = await references.accounts(NO_MARKET)
    done = await run_once(
        stack,
        scenario,
        NO_MARKET,
        tmp_path / "run",
        fault=PARTITION,
        victims=victims,
        moment=moment,
        trial=f"p{seed}",
    )
    assert done.injected, f"the cut was never made: {done.error or done.verdict.problems}"
    differ = (
        []
        if done.error
        else compare_accounts(
            reference, await read_accounts(scenario, done.work_dir, done.sites), Scope.EXACT
        )
    )
    for line in differ:
        done.verdict.problem(f"accounts (exact): {line}")
    record.append(
        record_of(seed, partition_trial, PARTITION, victims, moment, done, len(differ))
        | {"fault": "site-partition/uncut"}
    )
    assert done.verdict.ok, f"{site.name} cut at +{moment:.1f}s:\n" + "\n".join(
        done.verdict.problems
    )
