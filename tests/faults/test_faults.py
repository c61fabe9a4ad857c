"""Fault trials: the shipped scenario with one fault injected at a moment chosen by
the seed (p2pgrid.testing.faults.FAULTS), each checked by the one checker
(tests/faults/checker.py) against lnd itself and every replica; a network fault
(a partition, a slow link) also against the accounts of an uncut run of the
scenario (one per session), in the scope the scenario allows
(:func:`tests.faults.checker.compare_accounts`).

Every trial prints its seed, fault, victim and moment; replay one with
``--fault-seed S --trials N`` (trial i uses seed S + i).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario, load_scenario
from p2pgrid.testing.faults import Action, Fault, Target, runnable
from tests.faults.checker import Scope, compare_accounts, needs_no_market, read_accounts
from tests.faults.conftest import SCENARIO
from tests.faults.trials import References, record_of, run_once

#: The faults whose run is also judged against an uncut run: they cut links, they
#: stop no process (a kill may make a device miss intervals, which is allowed).
NETWORK = (Action.PARTITION, Action.SLOW)


def choose(scenario: Scenario, seed: int, trial: int) -> tuple[Fault, list[str], float]:
    """The trial's fault (in turn through the table, from the seed), victim and moment
    (seconds after interval 0 of the run)."""
    rng = random.Random(seed + trial)
    faults = runnable()
    fault = faults[(seed + trial) % len(faults)]
    devices = [d.name for s in scenario.sites for d in s.devices]
    if fault.target is Target.LND:  # a device's lnd or the utility's
        victims = [rng.choice([*devices, scenario.utility.name])]
    elif fault.target is Target.AGENT:
        victims = [rng.choice(devices)]
    elif fault.target is Target.SITE:
        victims = [d.name for d in rng.choice(scenario.sites).devices]
    elif fault.target is Target.UTILITY:
        victims = [scenario.utility.name]
    else:
        victims = ["btcd"]
    run_s = scenario.periods * scenario.intervals_per_period * scenario.interval_s
    return fault, victims, rng.uniform(0.0, run_s)


async def test_fault_trial(
    fault_stack: tuple[Scenario, Stack],
    fault_seed: int,
    trial: int,
    tmp_path: Path,
    record: list[dict[str, Any]],
    references: References,
) -> None:
    shipped, stack = fault_stack
    scenario = load_scenario(SCENARIO)
    assert [s.name for s in scenario.sites] == [s.name for s in shipped.sites]
    fault, victims, moment = choose(scenario, fault_seed, trial)
    print(f"seed {fault_seed} trial {trial}: {fault.name} on {victims} at +{moment:.1f}s")
    done = await run_once(
        stack,
        scenario,
        SCENARIO,
        tmp_path / "run",
        fault=fault,
        victims=victims,
        moment=moment,
        trial=f"{fault_seed}-{trial}",
    )
    differ: list[str] = []
    if fault.action in NETWORK and not done.error:
        scope = Scope.EXACT if needs_no_market(scenario) else Scope.METERED
        reference = await references.get(SCENARIO)
        if isinstance(reference, str):
            done.verdict.problem(f"no uncut run to compare with: {reference[:2000]}")
        else:
            cut = await read_accounts(scenario, done.work_dir, done.sites)
            differ = compare_accounts(reference, cut, scope)
        for line in differ:
            done.verdict.problem(f"accounts ({scope.value}): {line}")
    record.append(record_of(fault_seed, trial, fault, victims, moment, done, len(differ)))
    assert done.verdict.ok, f"{fault.name} on {victims} at +{moment:.1f}s:\n" + "\n".join(
        done.verdict.problems
    )
