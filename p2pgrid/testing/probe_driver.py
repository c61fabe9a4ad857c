"""Drive probe agents (``python -m p2pgrid.testing.probe``) as OS processes, from asyncio.

The multi-process tests and ``bench/net_latency.py`` use this: a
:class:`ProbeFleet` spawns probes and kills every one of them when it closes; a
:class:`ProbeProcess` reads the probe's JSON lines from its stdout pipe into
typed events, folds them into its state (who it heard, its report) and writes
commands to its stdin. Nothing here sleeps: callers wait for events under their
own deadline (``async with asyncio.timeout(...)``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pgrid.errors import ReportableError

#: Longest JSON line a probe prints (a report carries every latency sample).
MAX_LINE_BYTES = 16 * 1024 * 1024
#: How long a graceful ``stop`` waits for the probe to exit before killing it.
PROBE_STOP_TIMEOUT_S = 10.0


class ProbeExited(ReportableError):
    """A probe ended (or printed garbage) while we waited for one of its events."""


@dataclass(frozen=True)
class ProbeSpec:
    """How to start one probe."""

    seed: str
    index: int
    bootstrap: tuple[str, ...] = ()
    raw: bool = False
    #: Seconds between the warm-up messages that make peers hear the probe.
    interval_s: float = 0.5
    muxer: str = "mplex"
    port: int = 0

    def argv(self) -> list[str]:
        args = ["-m", "p2pgrid.testing.probe", "--seed", self.seed, "--index", str(self.index)]
        args += ["--interval", str(self.interval_s), "--muxer", self.muxer]
        args += ["--port", str(self.port)]
        for addr in self.bootstrap:
            args += ["--bootstrap", addr]
        if self.raw:
            args.append("--raw")
        return args


@dataclass(frozen=True)
class Listening:
    peer_id: str
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class Heard:
    sender: int


@dataclass(frozen=True)
class Report:
    """The end of a measured phase, as one probe saw it."""

    sent: int
    received: int
    senders: int
    latencies_ms: tuple[float, ...]
    rss_mb: float
    #: Mode-specific counters (peers; for p2pgrid also envelopes, gaps, drops).
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Stopped:
    pass


ProbeEvent = Listening | Heard | Report | Stopped


def decode_event(line: bytes) -> ProbeEvent:
    """One JSON line of a probe as a typed event; :class:`ProbeExited` if malformed."""
    try:
        fields: dict[str, Any] = json.loads(line)
        name = fields.pop("event")
        if name == "listening":
            return Listening(str(fields["peer_id"]), tuple(fields["addrs"]))
        if name == "heard":
            return Heard(int(fields["from"]))
        if name == "report":
            return Report(
                sent=int(fields.pop("sent")),
                received=int(fields.pop("received")),
                senders=int(fields.pop("senders")),
                latencies_ms=tuple(float(x) for x in fields.pop("latencies_ms")),
                rss_mb=float(fields.pop("rss_mb")),
                counters={key: int(value) for key, value in fields.items()},
            )
        if name == "stopped":
            return Stopped()
    except (ValueError, KeyError, TypeError) as exc:
        raise ProbeExited(f"malformed probe line {line[:200]!r}: {exc}") from exc
    raise ProbeExited(f"unknown probe event {name!r}")


def vm_rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` (``VmRSS`` of ``/proc/PID/status``), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ProbeExited(f"process {pid} has no VmRSS (a zombie?)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` used so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class ProbeProcess:
    """One running probe: its events so far, and a way to command and end it."""

    def __init__(self, spec: ProbeSpec, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.spec = spec
        self._proc = proc
        self.log_path = log_path
        self.listening: Listening | None = None
        #: How many times each sender was heard (once per run of that sender).
        self.heard: Counter[int] = Counter()
        self.report: Report | None = None
        self.stopped = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def addrs(self) -> tuple[str, ...]:
        if self.listening is None:
            raise ProbeExited(f"probe {self.spec.index} is not listening yet")
        return self.listening.addrs

    def _apply(self, event: ProbeEvent) -> None:
        match event:
            case Listening():
                self.listening = event
            case Heard(sender):
                self.heard[sender] += 1
            case Report():
                self.report = event
            case Stopped():
                self.stopped = True

    async def next_event(self) -> ProbeEvent:
        """Read, apply and return the probe's next event."""
        assert self._proc.stdout is not None
        line = await self._proc.stdout.readline()
        if not line:
            raise ProbeExited(
                f"probe {self.spec.index} (pid {self.pid}) closed its output; "
                f"stderr:\n{self.stderr_tail()}"
            )
        event = decode_event(line)
        self._apply(event)
        return event

    async def read_until(self, done: Callable[[ProbeProcess], bool]) -> None:
        """Read events until ``done(self)`` holds (the caller owns the deadline)."""
        while not done(self):
            await self.next_event()

    async def send(self, command: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self._proc.stdin.drain()

    def rss_kb(self) -> int:
        return vm_rss_kb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    async def stop(self) -> int:
        """Ask the probe to stop, wait for it; kill it if it does not exit in time."""
        if self._proc.returncode is None:
            try:
                await self.send({"cmd": "stop"})
                async with asyncio.timeout(PROBE_STOP_TIMEOUT_S):
                    await self.read_until(lambda probe: probe.stopped)
                    await self._proc.wait()
            except (TimeoutError, ProbeExited, ConnectionError):
                pass  # it is killed below
        return await self.kill()

    async def kill(self) -> int:
        """SIGKILL the probe (if it still runs) and reap it; returns its exit code."""
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


class ProbeFleet:
    """Spawns probes and kills every one it spawned when it closes."""

    def __init__(self, log_dir: Path, *, python: str = sys.executable) -> None:
        self._log_dir = log_dir
        self._python = python
        self.spawned: list[ProbeProcess] = []

    async def spawn(self, spec: ProbeSpec) -> ProbeProcess:
        """Start a probe (returns at once; see :meth:`listening` to wait for it)."""
        run = sum(1 for probe in self.spawned if probe.spec.index == spec.index)
        mode = "raw" if spec.raw else "p2pgrid"
        log_path = self._log_dir / f"probe-{mode}-{spec.index}-{run}.stderr"
        with log_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                self._python,
                *spec.argv(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                limit=MAX_LINE_BYTES,
            )
        probe = ProbeProcess(spec, proc, log_path)
        self.spawned.append(probe)
        return probe

    async def start(self, specs: Iterable[ProbeSpec]) -> list[ProbeProcess]:
        """Spawn probes and wait (under the caller's deadline) until all listen."""
        probes = [await self.spawn(spec) for spec in specs]
        await wait_all(probes, lambda probe: probe.listening is not None)
        return probes

    async def close(self) -> None:
        """Kill every probe spawned (idempotent)."""
        for probe in self.spawned:
            await probe.kill()

    async def __aenter__(self) -> ProbeFleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def wait_all(probes: Sequence[ProbeProcess], done: Callable[[ProbeProcess], bool]) -> None:
    """Read every probe's events until ``done`` holds for each (caller owns the deadline).

    Raises one :class:`ProbeExited` naming every probe that ended meanwhile.
    """
    try:
        async with asyncio.TaskGroup() as tasks:
            for probe in probes:
                tasks.create_task(probe.read_until(done))
    except* ProbeExited as group:
        raise ProbeExited("\n".join(str(exc) for exc in group.exceptions)) from None
