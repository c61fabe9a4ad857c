"""The fault suite's stack (one for all trials) and the record of every trial.

``pytest tests/faults`` runs the short run (``--trials 3``, and one partition judged
against an uncut run: ``--partition-trials 1``); the long run is
``pytest tests/faults --trials 40 --partition-trials 8 --fault-report faults.json``
(figures in docs/reliability.md). ``--fault-seed`` replays a run: the seed chooses each
trial's fault, victim and moment.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from p2pgrid.regtest import Stack, StackConfig, ensure_daemons
from p2pgrid.regtest.topology import utility_star
from p2pgrid.scenario import Scenario, load_scenario
from p2pgrid.testing.faults import clear_rules
from tests.faults.trials import References
from tests.regtest.conftest import TEST_ROOT

SCENARIO = Path(__file__).parents[2] / "p2pgrid" / "scenarios" / "two_sites.toml"
#: The partition scenario: SCENARIO's sites and devices, no market needed.
NO_MARKET = Path(__file__).parent / "no_market.toml"
RECORDS: list[dict[str, Any]] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # the trials (on the suite's stack), not the checker's unit tests
        if "tests/faults/" in str(item.fspath) and "fault_stack" in item.fixturenames:
            item.add_marker(pytest.mark.regtest)
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.slow)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "trial" in metafunc.fixturenames:
        n = metafunc.config.getoption("--trials")
        metafunc.parametrize("trial", range(n), ids=[f"trial-{i}" for i in range(n)])
    if "partition_trial" in metafunc.fixturenames:
        n = metafunc.config.getoption("--partition-trials")
        metafunc.parametrize("partition_trial", range(n), ids=[f"cut-{i}" for i in range(n)])


@pytest.fixture(scope="session")
def fault_seed(request: pytest.FixtureRequest) -> int:
    seed = str(request.config.getoption("--fault-seed"))
    if seed == "random":
        return random.SystemRandom().randrange(2**32)
    try:
        return int(seed)
    except ValueError:
        message = f"--fault-seed must be an integer or 'random', not {seed!r}"
        raise pytest.UsageError(message) from None


@pytest.fixture(scope="session")
async def fault_stack() -> AsyncIterator[tuple[Scenario, Stack]]:
    daemons = await ensure_daemons()
    clear_rules()  # a crashed run's cut, if any
    scenario = load_scenario(SCENARIO)
    devices = tuple(d.name for s in scenario.sites for d in s.devices)
    stack = Stack(
        StackConfig(name=f"faults-{os.getpid()}", root=TEST_ROOT, topology=utility_star(devices)),
        daemons,
    )
    await stack.up()
    try:
        yield scenario, stack
    finally:
        clear_rules()
        await stack.down()


@pytest.fixture(scope="session")
def references(
    fault_stack: tuple[Scenario, Stack], tmp_path_factory: pytest.TempPathFactory
) -> References:
    """The session's uncut runs, one per scenario, made on first use."""
    return References(fault_stack[1], tmp_path_factory.mktemp("references"))


@pytest.fixture(scope="session")
def record(request: pytest.FixtureRequest, fault_seed: int) -> list[dict[str, Any]]:
    return RECORDS


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--fault-report")
    if path and RECORDS:
        Path(path).write_text(json.dumps(RECORDS, indent=2) + "\n")
