"""``p2pgrid ... run`` processes started as an operator does, for the deployment tests.

:class:`Node` is one such process (its JSON-line events on stdout, its log in a
file); :func:`agree` polls the replica files until they hold the same entries;
:func:`inline` writes an lnd endpoint as a site file's inline table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from p2pgrid.lightning.lnd import LndEndpoint

EVENT_WAIT_S = 180.0  # a whole compressed period, its invoices and payments, under load


def inline(endpoint: LndEndpoint) -> str:
    return (
        f'{{ rest_host = "{endpoint.rest_host}", rest_port = {endpoint.rest_port}, '
        f'tls_cert = "{endpoint.tls_cert}", macaroon = "{endpoint.macaroon}" }}'
    )


class Node:
    """A ``p2pgrid ... run`` process: its JSON-line events on stdout, its log in a file."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self._unread: list[dict[str, Any]] = []  # events read past while waiting for another

    @classmethod
    async def start(cls, args: list[str], log: Path) -> Node:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "p2pgrid", *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=err, env=env,
            )  # fmt: skip
        return cls(proc, log)

    async def expect(self, event: str, name: str | None = None) -> dict[str, Any]:
        """The next ``event`` line (of device ``name``, for a gateway of several)."""

        def wanted(message: dict[str, Any]) -> bool:
            return message.get("event") == event and name in (None, message.get("name"))

        for message in self._unread:
            if wanted(message):
                self._unread.remove(message)
                return message
        assert self.proc.stdout is not None
        async with asyncio.timeout(EVENT_WAIT_S):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"ended before {event!r}: {self.log.read_text()[-3000:]}")
                message: dict[str, Any] = json.loads(line)
                if wanted(message):
                    return message
                self._unread.append(message)

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            return await self.proc.wait()


def agree(replicas: list[Path]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        held = []
        for path in replicas:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                held.append({bytes(i) for (i,) in db.execute("SELECT id FROM entries")})
        return all(ids == held[0] for ids in held)

    return probe
