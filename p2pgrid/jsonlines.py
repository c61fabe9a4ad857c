"""The line protocol between a parent and its child processes: JSON events out, JSON commands in.

A child prints one JSON object per line on stdout (``{"event": name, ...}``) and
reads commands, one JSON object per line, on stdin (``{"cmd": name, ...}``). End
of input counts as ``{"cmd": "stop"}``, so a child whose parent died stops. A
command the child cannot read is answered with ``{"event": "error", "message"}``.

Both ends live here, and every parent and child of p2pgrid uses them (the
launcher and the agent and utility processes, the test probes and their driver):

- child side: :func:`emit`, :func:`commands` (asyncio), :func:`parse_command`
  (for a child that reads stdin itself, e.g. under trio);
- parent side: :class:`ChildProcess` spawns ``python -m <module>`` with its
  stderr in a log file, reads its events (:meth:`ChildProcess.next_event`,
  :meth:`ChildProcess.expect`), sends commands and stops or kills it.
  Nothing here sleeps: callers wait under their own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncGenerator, Collection, Sequence
from pathlib import Path
from typing import Any, Self

from p2pgrid.errors import ReportableError

#: Longest line either end reads (a probe's report carries every latency sample).
MAX_LINE_BYTES = 16 * 1024 * 1024
#: How long :meth:`ChildProcess.stop` waits for the child to exit before killing it.
STOP_TIMEOUT_S = 30.0


class ProcessFailed(ReportableError):
    """A child process exited, printed a malformed line or reported an error."""


# -- child side ---------------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    """Print one event line on stdout."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def parse_command(line: bytes | str) -> dict[str, Any] | None:
    """One command line as a dict, or ``None`` after emitting an ``error`` event."""
    try:
        command = json.loads(line)
    except ValueError:
        emit("error", message=f"not a JSON command: {line[:80]!r}")
        return None
    if not isinstance(command, dict) or not isinstance(command.get("cmd"), str):
        emit("error", message="a command is an object with a 'cmd' string")
        return None
    return command


async def commands() -> AsyncGenerator[dict[str, Any], None]:
    """Commands from stdin until ``stop`` or end of input (then one ``stop``)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while line := await reader.readline():
            if (command := parse_command(line)) is None:
                continue
            yield command
            if command["cmd"] == "stop":
                return
        yield {"cmd": "stop"}
    finally:
        transport.close()


# -- parent side --------------------------------------------------------------------


def decode_event(line: bytes) -> dict[str, Any]:
    """One event line as a dict with an ``event`` string; :class:`ProcessFailed` if not."""
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise ProcessFailed(f"malformed event line {line[:200]!r}: {exc}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise ProcessFailed(f"an event is an object with an 'event' string: {line[:200]!r}")
    return event


class ChildProcess:
    """One child process speaking the line protocol, seen from its parent."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self._proc = proc
        self.log_path = log_path

    @classmethod
    async def spawn(
        cls,
        name: str,
        module: str,
        args: Sequence[str],
        log_path: Path,
        *,
        prefix: Sequence[str] = (),
        **kwargs: Any,
    ) -> Self:
        """Start ``python -m module *args`` (stderr to ``log_path``); returns at once.

        ``prefix`` runs it through another program that then executes it in
        place, keeping its pipes and pid (``ip netns exec <ns>`` puts it in a
        network namespace). Extra keyword arguments go to the constructor of ``cls``."""
        with log_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *prefix,
                sys.executable,
                "-m",
                module,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                limit=MAX_LINE_BYTES,
            )
        return cls(name, proc, log_path, **kwargs)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def next_event(self) -> dict[str, Any]:
        """The child's next event; :class:`ProcessFailed` once its output ends."""
        assert self._proc.stdout is not None
        line = await self._proc.stdout.readline()
        if not line:
            code = await self._proc.wait()
            raise ProcessFailed(
                f"{self.name} (pid {self.pid}) exited ({code}); "
                f"stderr ({self.log_path}):\n{self.stderr_tail()}"
            )
        return decode_event(line)

    async def expect(self, event: str) -> dict[str, Any]:
        """Read events until one named ``event`` (others are skipped); an ``error``
        event or the end of the child raises :class:`ProcessFailed`."""
        while True:
            got = await self.next_event()
            if got["event"] == event:
                return got
            if got["event"] == "error":
                raise ProcessFailed(f"{self.name}: {got} (see {self.log_path})")

    async def expect_each(self, event: str, names: Collection[str]) -> dict[str, dict[str, Any]]:
        """Read events until one named ``event`` of each device of ``names`` (every
        line of an agent or gateway names its device: a gateway of several answers
        for each; others are skipped). An ``error`` event, a ``failed`` event of one
        of ``names`` or the end of the child raises :class:`ProcessFailed`."""
        got: dict[str, dict[str, Any]] = {}
        while len(got) < len(set(names)):
            line = await self.next_event()
            name = line.get("name")
            ours = isinstance(name, str) and name in names
            if line["event"] == event and isinstance(name, str) and ours and name not in got:
                got[name] = line
            elif line["event"] == "error" or (line["event"] == "failed" and ours):
                raise ProcessFailed(f"{self.name}: {line} (see {self.log_path})")
        return got

    async def send(self, cmd: str, **fields: Any) -> None:
        """Write one command line (nothing if the child has exited)."""
        assert self._proc.stdin is not None
        if self._proc.returncode is None and not self._proc.stdin.is_closing():
            self._proc.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
            # It may have exited meanwhile: its end of output says so.
            with contextlib.suppress(ConnectionError):
                await self._proc.stdin.drain()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Ask the child to stop and wait (reading its last events) until it exits;
        kill it if it does not within ``timeout_s``. Returns its exit code."""
        if self._proc.returncode is None:
            await self.send("stop")
            try:
                async with asyncio.timeout(timeout_s):
                    while True:
                        await self.next_event()
            except (TimeoutError, ProcessFailed):
                pass  # ended (or is killed below)
        return await self.kill()

    async def wait(self) -> int:
        """Wait until the child exits (on its own); returns its exit code."""
        return await self._proc.wait()

    async def kill(self) -> int:
        """SIGKILL the child (if it still runs) and reap it; returns its exit code."""
        if self._proc.returncode is None:
            self._proc.kill()
        code = await self._proc.wait()
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()
        return code

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
