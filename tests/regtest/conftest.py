"""The real regtest stack, once per test session, started by the same code as ``regtest/up``.

Every test here is marked ``regtest`` and runs in CI: the daemons are built on
first use (cached), and the stack lives under the p2pgrid cache dir, named after
this pytest process so that a crashed session's stack is found and reaped.

The modules that run the shipped two-site scenarios (the demo's
``two_sites_light.toml``, and ``two_sites.toml``: end to end, the restarts)
share one more stack, :func:`two_sites_stack` (a utility, the six devices and
the demo's site node of store-1, each with a channel to it), and those that run ``pooled_site.toml``
(pooled sales, pay on delivery) :func:`pooled_stack` (each up until this
directory's tests are done): bringing one up takes about a minute on a loaded
2-core machine. Each run on one snapshots every node
first and checks only its own run's differences (:func:`p2pgrid.demo.snapshots`),
so the modules hold in any order and each alone.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pgrid.lightning import LndClient
from p2pgrid.regtest import Daemons, Stack, StackConfig, ensure_daemons
from p2pgrid.regtest.process import alive
from p2pgrid.regtest.stack import default_root
from p2pgrid.regtest.topology import utility_star
from p2pgrid.scenario import load_scenario

TEST_ROOT = default_root() / "pytest"
#: The shipped two-site scenario: one owner's two stores, three devices each.
TWO_SITES = Path(__file__).parents[2] / "p2pgrid" / "scenarios" / "two_sites.toml"
#: The demo's: the same with store-1's fridge and hvac light on a site node.
TWO_SITES_LIGHT = TWO_SITES.with_name("two_sites_light.toml")
#: One site's block of devices selling to each other (its seed: the test's to replace).
POOLED = Path(__file__).with_name("pooled_site.toml")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/regtest/" in str(item.fspath):
            item.add_marker(pytest.mark.regtest)


async def _reap_abandoned(daemons: Daemons) -> None:
    """Stop stacks of earlier pytest sessions that died without stopping them."""
    if not TEST_ROOT.exists():
        return
    for stack_dir in TEST_ROOT.iterdir():
        try:
            owner = int(json.loads((stack_dir / "stack.json").read_text())["owner_pid"])
        except (OSError, ValueError, KeyError):
            owner = 0
        if owner != os.getpid() and not alive(owner):
            await Stack(StackConfig(name=stack_dir.name, root=TEST_ROOT), daemons).down()


@pytest.fixture(scope="session")
async def daemons() -> Daemons:
    return await ensure_daemons()


@pytest.fixture(scope="session")
async def stack(daemons: Daemons) -> AsyncIterator[Stack]:
    await _reap_abandoned(daemons)
    config = StackConfig(name=f"session-{os.getpid()}", root=TEST_ROOT)
    stack = Stack(config, daemons)
    await stack.up()
    try:
        yield stack
    finally:
        await stack.down()


@contextlib.asynccontextmanager
async def scenario_stack(daemons: Daemons, name: str, *scenarios: Path) -> AsyncIterator[Stack]:
    """A stack of the lnd nodes of ``scenarios`` (one per process: the utility's,
    each device's on its own lnd, each site node; each with a channel to the
    utility), named ``name`` and this session's pid."""
    devices: dict[str, None] = {}  # ordered: the scenarios', in their order
    site_nodes: dict[str, int] = {}
    for path in scenarios:
        scenario = load_scenario(path)
        devices |= dict.fromkeys(scenario.own_lnd_devices)
        for node, light in scenario.site_nodes.items():
            site_nodes[node] = max(light, site_nodes.get(node, 0))
    config = StackConfig(
        name=f"{name}-{os.getpid()}",
        root=TEST_ROOT,
        topology=utility_star(tuple(devices), site_nodes),
    )
    stack = Stack(config, daemons)
    await stack.up()
    try:
        yield stack
    finally:
        await stack.down()


@pytest.fixture(scope="package")  # stopped once tests/regtest is done, not idle after it
async def two_sites_stack(daemons: Daemons) -> AsyncIterator[Stack]:
    """The stack of :data:`TWO_SITES` and :data:`TWO_SITES_LIGHT`, shared by the
    modules that run them."""
    async with scenario_stack(daemons, "two-sites", TWO_SITES, TWO_SITES_LIGHT) as stack:
        yield stack


@pytest.fixture(scope="package")
async def pooled_stack(daemons: Daemons) -> AsyncIterator[Stack]:
    """The stack of :data:`POOLED` (one site's block of devices), shared by the
    modules that run that scenario (pooled sales, pay on delivery)."""
    async with scenario_stack(daemons, "pooled", POOLED) as stack:
        yield stack


@pytest.fixture
async def utility(stack: Stack) -> AsyncIterator[LndClient]:
    async with stack.client("utility") as client:
        yield client


@pytest.fixture
async def dev_a(stack: Stack) -> AsyncIterator[LndClient]:
    async with stack.client("dev-a") as client:
        yield client


@pytest.fixture
async def dev_b(stack: Stack) -> AsyncIterator[LndClient]:
    async with stack.client("dev-b") as client:
        yield client


@pytest.fixture(autouse=True)
async def _clean_after(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """After each test that used the session stack: no HTLC left in flight anywhere."""
    yield
    if "stack" not in request.fixturenames:
        return
    stack: Stack = request.getfixturevalue("stack")
    await stack.wait_settled()
