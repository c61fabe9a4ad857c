"""A child process for tests/test_jsonlines.py: echoes commands as events
(``say``: the event its ``event`` names, with its other fields)."""

from __future__ import annotations

import asyncio
import contextlib

from p2pgrid.jsonlines import commands, emit


async def main() -> None:
    emit("ready")
    async with contextlib.aclosing(commands()) as commands_in:
        async for command in commands_in:
            if command["cmd"] == "stop":
                break
            if command["cmd"] == "say":
                emit(**{k: v for k, v in command.items() if k != "cmd"})
            else:
                emit("echo", **command)
    emit("stopped")


if __name__ == "__main__":
    asyncio.run(main())
