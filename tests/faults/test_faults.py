"""Fault trials: the shipped scenario with one fault injected at a moment chosen by
the seed (p2pgrid.testing.faults.FAULTS), each checked by the one checker
(tests/faults/checker.py) against lnd itself and every replica.

Every trial prints its seed, fault, victim and moment; replay one with
``--fault-seed S --trials N`` (trial i uses seed S + i).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from pathlib import Path
from typing import Any

from p2pgrid.demo import snapshots
from p2pgrid.launcher import Running, run_scenario
from p2pgrid.poll import wait_until
from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario, load_scenario
from p2pgrid.testing.faults import (
    Action,
    Fault,
    Injected,
    Injector,
    Target,
    clear_rules,
    processes_under,
    runnable,
)
from tests.faults.checker import check_trial
from tests.faults.conftest import SCENARIO

#: Deadline for every process of the run to be up before the fault's clock starts.
PROCESSES_UP_S = 120.0


def choose(scenario: Scenario, seed: int, trial: int) -> tuple[Fault, list[str], float]:
    """The trial's fault (in turn through the table, from the seed), victim and moment
    (seconds after every process of the run is up)."""
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
) -> None:
    shipped, stack = fault_stack
    # The trials share one stack (one set of lnd nodes): each runs the scenario
    # under its own keys, so that no invoice (its preimage derives from the
    # utility's seed, site, device and period) is one a previous trial made.
    path = tmp_path / "scenario.toml"
    path.write_text(
        re.sub(
            r'^(seed = ".*)"$', rf'\1 trial {fault_seed}-{trial}"', SCENARIO.read_text(), flags=re.M
        )
    )
    scenario = load_scenario(path)
    assert [s.name for s in scenario.sites] == [s.name for s in shipped.sites]
    fault, victims, moment = choose(scenario, fault_seed, trial)
    print(f"seed {fault_seed} trial {trial}: {fault.name} on {victims} at +{moment:.1f}s")
    work = tmp_path / "run"
    # An agent or the utility killed is started again by the launcher, which keeps
    # the run's processes (and reads their "done" only once the restart is over).
    restarts = fault.action is Action.KILL and fault.target in (Target.AGENT, Target.UTILITY)
    running: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    over = asyncio.Event()

    async def during(run: Running) -> None:
        running.set_result(run)
        if restarts:
            await over.wait()

    async def restart(name: str) -> None:
        run = running.result()
        await (run.restart_utility() if name == scenario.utility.name else run.restart(name))

    injector = Injector(stack, work, trial=f"{fault_seed}-{trial}", restart=restart)
    processes = 1 + sum(len(s.devices) for s in scenario.sites)
    injected: list[Injected] = []
    started = time.monotonic()
    before = await snapshots(scenario, stack)

    async def inject() -> None:
        async def all_up() -> bool:
            return len(processes_under(work)) >= processes

        try:
            await wait_until(all_up, timeout_s=PROCESSES_UP_S, what="the run's processes")
            if restarts:
                await running  # the launcher can restart what is killed from here on
            await asyncio.sleep(moment)  # the moment the seed chose: a timer, not a sync
            done = await injector.inject(fault, victims)
            done.at_s = moment
            injected.append(done)
        finally:
            over.set()

    error = ""
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(inject())
            tasks.create_task(run_scenario(scenario, path, stack, work, during=during))
    except* Exception as group:  # noqa: BLE001 - a trial records whatever ended its run
        error = "; ".join(f"{type(e).__name__}: {e}"[:300] for e in group.exceptions)
    finally:
        clear_rules()
        await injector.heal()
    verdict = await check_trial(scenario, stack, work, before)
    if error:
        verdict.problem(f"run failed: {error}")
    await stack.wait_settled()
    record.append(
        {
            "seed": fault_seed,
            "trial": trial,
            "fault": fault.name,
            "victims": victims,
            "moment_s": round(moment, 1),
            "injected": bool(injected),
            "run_error": error,
            "double_payments": verdict.double_payments,
            "lost_payments": verdict.lost_payments,
            "diverged_sites": verdict.diverged_sites,
            "unsettled_periods": verdict.unsettled_periods,
            "in_flight": verdict.in_flight,
            "duplicate_readings": verdict.duplicate_readings,
            "hanging": verdict.hanging,
            "unreconciled": verdict.unreconciled,
            "problems": verdict.problems,
            "seconds": round(time.monotonic() - started),
        }
    )
    assert verdict.ok, f"{fault.name} on {victims} at +{moment:.1f}s:\n" + "\n".join(
        verdict.problems
    )
