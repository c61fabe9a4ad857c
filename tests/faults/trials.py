"""One run of a scenario on the fault suite's stack, with one fault or none, checked
by the one checker; and the uncut reference runs that partitions are judged against.

Shared by the fault trials (``test_faults.py``) and the partition trials
(``test_partition.py``). Every run is deployed as an operator deploys it (files
with fresh keys, :func:`tests.regtest.deployed.deploy`) and runs ``p2pgrid utility
run`` and ``p2pgrid agent run`` (:func:`p2pgrid.launcher.run_deployment`): so every
run on the shared stack has its own keys and invoice secret, and no invoice is
made twice. Keys change nothing of the accounts that the comparison reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from p2pgrid.demo import snapshots
from p2pgrid.identity import SiteIdentity
from p2pgrid.launcher import Running, run_deployment
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
)
from tests.faults.checker import Accounts, Verdict, check_trial, read_accounts
from tests.regtest.deployed import deploy

#: Deadline for every process of the run to be up before the fault's clock starts.
PROCESSES_UP_S = 120.0


@dataclasses.dataclass
class Outcome:
    """What one run left behind."""

    verdict: Verdict
    work_dir: Path
    sites: dict[str, SiteIdentity]  # each site's key (the deployment's)
    error: str = ""  # what ended the run, if it did not end by itself
    injected: list[Injected] = dataclasses.field(default_factory=list)
    seconds: int = 0


async def run_once(
    stack: Stack,
    scenario: Scenario,
    path: Path,
    work: Path,
    *,
    fault: Fault | None = None,
    victims: list[str] | None = None,
    moment: float = 0.0,
    trial: str = "reference",
) -> Outcome:
    """Deploy ``scenario`` (its file ``path``) in ``work`` and run it; with ``fault``,
    inject it on ``victims`` ``moment`` seconds into the run (after interval 0 of the
    deployment's clock; not before every process of the run is up).
    Then heal the stack and check the run (:func:`tests.faults.checker.check_trial`)."""
    victims = victims or []
    # An agent or the utility killed is started again by the launcher, which keeps
    # the run's processes (and reads their "done" only once the restart is over).
    restarts = (
        fault is not None
        and fault.action is Action.KILL
        and fault.target in (Target.AGENT, Target.UTILITY)
    )
    running: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    over = asyncio.Event()

    async def during(run: Running) -> None:
        running.set_result(run)
        if restarts:
            await over.wait()

    async def restart(name: str) -> None:
        run = running.result()
        await (run.restart_utility() if name == scenario.utility.name else run.restart(name))

    started = time.monotonic()
    before = await snapshots(scenario, stack)
    deployment = await deploy(path, stack, work)
    injector = Injector(stack, deployment, trial=trial, restart=restart)
    processes = len(deployment.names)
    injected: list[Injected] = []

    async def inject(fault: Fault) -> None:
        async def all_up() -> bool:
            return len(processes_under(work)) >= processes

        try:
            await wait_until(all_up, timeout_s=PROCESSES_UP_S, what="the run's processes")
            # Every process is ready and interval 0 fixed (the launcher's start); the
            # launcher can restart what is killed from here on.
            run = await running
            # The moment the seed chose, on the run's clock: a timer, not a sync.
            await asyncio.sleep(max(0.0, run.at + moment - time.time()))
            done = await injector.inject(fault, victims)
            done.at_s = moment
            injected.append(done)
        finally:
            over.set()

    error = ""
    try:
        async with asyncio.TaskGroup() as tasks:
            if fault is not None:
                tasks.create_task(inject(fault))
            tasks.create_task(run_deployment(deployment, during=during, start_when_ready=True))
    except* Exception as group:  # noqa: BLE001 - a trial records whatever ended its run
        error = "; ".join(f"{type(e).__name__}: {e}"[:300] for e in group.exceptions)
    finally:
        clear_rules()
        await injector.heal()
    sites = dict(deployment.identities)
    verdict = await check_trial(scenario, stack, work, before, sites)
    if error:
        verdict.problem(f"run failed: {error}")
    await stack.wait_settled()
    return Outcome(verdict, work, sites, error, injected, round(time.monotonic() - started))


class References:
    """The uncut runs of a pytest session, one per scenario file: each is run on
    first use and its accounts kept for every later trial of that scenario (a
    failed one is not run again: its failure is kept)."""

    def __init__(self, stack: Stack, root: Path) -> None:
        self.stack = stack
        self.root = root
        self._runs: dict[Path, Accounts | str] = {}  # accounts, or why the run failed
        self._lock = asyncio.Lock()

    async def get(self, source: Path) -> Accounts | str:
        """The accounts of an uncut run of ``source`` (run now if not yet), or why
        that run failed."""
        async with self._lock:
            if source not in self._runs:
                where = self.root / f"reference-{len(self._runs)}-{source.stem}"
                scenario = load_scenario(source)
                done = await run_once(self.stack, scenario, source, where)
                print(f"uncut reference run of {source.name}: {done.seconds} s")
                self._runs[source] = (
                    await read_accounts(scenario, done.work_dir, done.sites)
                    if done.verdict.ok
                    else f"the uncut run of {source.name} failed:\n"
                    + "\n".join(done.verdict.problems)
                )
            return self._runs[source]

    async def accounts(self, source: Path) -> Accounts:
        """The accounts of the uncut run of ``source``; AssertionError if it failed."""
        got = await self.get(source)
        assert not isinstance(got, str), got
        return got


def record_of(
    seed: int,
    trial: int,
    fault: Fault,
    victims: list[str],
    moment: float,
    done: Outcome,
    accounts_differ: int,
) -> dict[str, object]:
    """One line of ``--fault-report`` (read by :mod:`tests.faults.figures`)."""
    v = done.verdict
    return {
        "seed": seed,
        "trial": trial,
        "fault": fault.name,
        "victims": victims,
        "moment_s": round(moment, 1),
        "injected": bool(done.injected),
        "run_error": done.error,
        "double_payments": v.double_payments,
        "lost_payments": v.lost_payments,
        "diverged_sites": v.diverged_sites,
        "unsettled_periods": v.unsettled_periods,
        "in_flight": v.in_flight,
        "duplicate_readings": v.duplicate_readings,
        "hanging": v.hanging,
        "unreconciled": v.unreconciled,
        "accounts_differ": accounts_differ,
        "problems": v.problems,
        "seconds": done.seconds,
    }
