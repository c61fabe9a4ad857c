"""The line protocol of p2pgrid's processes: JSON events out, JSON commands in.

A process prints one JSON object per line on stdout (``{"event": ...}``) and
reads commands, one JSON object per line, on stdin (``{"cmd": ...}``). End of
input counts as ``{"cmd": "stop"}``, so a process whose launcher died stops.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncGenerator
from typing import Any


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def commands() -> AsyncGenerator[dict[str, Any], None]:
    """Commands from stdin until ``stop`` or end of input (then one ``stop``)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while line := await reader.readline():
            try:
                command = json.loads(line)
            except ValueError:
                emit("error", message=f"not a JSON command: {line[:80]!r}")
                continue
            if not isinstance(command, dict) or not isinstance(command.get("cmd"), str):
                emit("error", message="a command is an object with a 'cmd' string")
                continue
            yield command
            if command["cmd"] == "stop":
                return
        yield {"cmd": "stop"}
    finally:
        transport.close()
