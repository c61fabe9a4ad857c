"""The real regtest stack, once per test session, started by the same code as ``regtest/up``.

Every test here is marked ``regtest`` and runs in CI: the daemons are built on
first use (cached), and the stack lives under the p2pgrid cache dir, named after
this pytest process so that a crashed session's stack is found and reaped.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import pytest

from p2pgrid.lightning import LndClient
from p2pgrid.regtest import Daemons, Stack, StackConfig, ensure_daemons
from p2pgrid.regtest.process import alive
from p2pgrid.regtest.stack import default_root

TEST_ROOT = default_root() / "pytest"


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
