"""One device of a gateway fails: it stops alone, the others go on, the gateway reports it.

In process, on the real lnds of the session stack (a gateway's devices open
their own lnd client) and real SQLite and libp2p: a gateway of two devices of a
deployed site file, whose second device's paymaster finds its intents corrupt
when the run starts (a :class:`~p2pgrid.errors.FatalError`). Asserted: a
``failed`` line names that device; the other still answers ``digest`` after it
and stops cleanly (``stopped``); the failed device answers nothing more; the
gateway ends with the failure, for its exit code.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from p2pgrid.agent import gateway
from p2pgrid.agent.gateway import run_gateway
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.config import SiteFile, agent_setup
from p2pgrid.errors import FatalError
from p2pgrid.net import TrioBridge
from p2pgrid.regtest import Stack
from p2pgrid.service import EXIT_FAILED, Command, exit_code
from tests.cli.deployment import DEVICES, deploy
from tests.regtest.nodes import inline

LND = {"s1-fridge": "dev-a", "s1-hvac": "dev-b"}
FAILING = "s1-hvac"


class CorruptIntents(Paymaster):
    """A paymaster whose intents file is found corrupt when the agent starts."""

    def __init__(self, *, failed: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failed = failed

    async def recover(self) -> list[Any]:
        self.failed.set()
        raise FatalError("intents file corrupt")


async def test_a_failing_device_stops_alone(
    stack: Stack,
    bridge: TrioBridge,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = deploy(tmp_path, lnd={name: inline(stack.endpoint(node)) for name, node in LND.items()})
    site = SiteFile(d.site_file)
    setups = [agent_setup(site, name) for name, _, _ in DEVICES]
    failed = asyncio.Event()
    reported = asyncio.Event()  # the gateway's "failed" line is out: the device is marked

    emit = gateway.emit

    def emit_and_see(event: str, **fields: Any) -> None:
        emit(event, **fields)
        if event == "failed":
            reported.set()

    monkeypatch.setattr(gateway, "emit", emit_and_see)

    def make_paymaster(**kwargs: Any) -> Paymaster:
        if kwargs["name"] == FAILING:
            return CorruptIntents(failed=failed, **kwargs)
        return Paymaster(**kwargs)

    async def commands() -> AsyncIterator[Command]:
        # Interval 0 a day away: the healthy device waits for it, the other fails at once.
        yield {"cmd": "start", "at": time.time() + 86_400}
        await failed.wait()
        await reported.wait()  # the failure unwinds through the agent's tasks first
        yield {"cmd": "digest"}  # then end of input: the gateway stops

    with pytest.raises(ExceptionGroup) as raised:
        # The session's trio guest run (one per thread), as the net tests' hosts use.
        await run_gateway(setups, commands, make_paymaster=make_paymaster, bridge=bridge)
    assert exit_code(raised.value) == (EXIT_FAILED, "error: intents file corrupt")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    seen = [(e["event"], e.get("name")) for e in events if e["event"] != "ready"]
    assert seen == [("failed", FAILING), ("digest", "s1-fridge"), ("stopped", "s1-fridge")]
    assert {e["name"] for e in events if e["event"] == "ready"} == set(LND)
