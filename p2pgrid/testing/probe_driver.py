"""Drive probe agents (``python -m p2pgrid.testing.probe``) as OS processes, from asyncio.

The multi-process tests and ``bench/net_latency.py`` use this: a
:class:`ProbeFleet` spawns probes and kills every one of them when it closes; a
:class:`ProbeProcess` (a :class:`p2pgrid.jsonlines.ChildProcess`) reads the
probe's event lines into typed events, folds them into its state (who it heard,
its report) and writes commands to its stdin. Nothing here sleeps: callers wait
for events under their own deadline (``async with asyncio.timeout(...)``).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pgrid.jsonlines import ChildProcess, ProcessFailed

PROBE_MODULE = "p2pgrid.testing.probe"
#: How long a graceful ``stop`` waits for the probe to exit before killing it.
PROBE_STOP_TIMEOUT_S = 10.0


class ProbeExited(ProcessFailed):
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
    #: p2pgrid mode with py-libp2p's gossipsub behaviour (see the probe's --untuned-gossip).
    untuned_gossip: bool = False
    #: raw mode with p2pgrid's gossipsub tuning (see the probe's --tuned-gossip).
    tuned_gossip: bool = False
    #: p2pgrid mode trying each hello exchange once, as before NetConfig.hello_tries.
    hello_once: bool = False
    #: p2pgrid mode without first-hop records (NetConfig.first_hop_claims off).
    no_first_hop: bool = False
    #: Where it listens (and what it advertises), and whether it also finds peers by mDNS.
    host: str = "127.0.0.1"
    mdns: bool = False
    #: Runs the probe through this command (``ip netns exec NS``: in a namespace).
    prefix: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        args = ["--seed", self.seed, "--index", str(self.index)]
        args += ["--interval", str(self.interval_s), "--muxer", self.muxer]
        args += ["--host", self.host, "--port", str(self.port)]
        if self.mdns:
            args.append("--mdns")
        if self.untuned_gossip:
            args.append("--untuned-gossip")
        if self.tuned_gossip:
            args.append("--tuned-gossip")
        if self.hello_once:
            args.append("--hello-once")
        if self.no_first_hop:
            args.append("--no-first-hop")
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


def decode_event(event: dict[str, Any]) -> ProbeEvent:
    """One event of a probe as a typed event; :class:`ProbeExited` if malformed."""
    fields = dict(event)
    name = fields.pop("event")
    try:
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
        raise ProbeExited(f"malformed probe event {event!r:.200}: {exc}") from exc
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


class ProbeProcess(ChildProcess):
    """One running probe: its events so far, and a way to command and end it."""

    def __init__(
        self, name: str, proc: asyncio.subprocess.Process, log_path: Path, *, spec: ProbeSpec
    ) -> None:
        super().__init__(name, proc, log_path)
        self.spec = spec
        self.listening: Listening | None = None
        #: How many times each sender was heard (once per run of that sender).
        self.heard: Counter[int] = Counter()
        self.report: Report | None = None
        self.stopped = False

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

    async def next_event(self) -> dict[str, Any]:
        """Read the probe's next event and fold it into this object's state."""
        try:
            fields = await super().next_event()
        except ProcessFailed as exc:
            raise ProbeExited(str(exc)) from exc
        self._apply(decode_event(fields))
        return fields

    async def read_until(self, done: Callable[[ProbeProcess], bool]) -> None:
        """Read events until ``done(self)`` holds (the caller owns the deadline)."""
        while not done(self):
            await self.next_event()

    def rss_kb(self) -> int:
        return vm_rss_kb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    async def stop(self, timeout_s: float = PROBE_STOP_TIMEOUT_S) -> int:
        """Ask the probe to stop, wait for it; kill it if it does not exit in time."""
        return await super().stop(timeout_s)


class ProbeFleet:
    """Spawns probes and kills every one it spawned when it closes."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.spawned: list[ProbeProcess] = []

    async def spawn(self, spec: ProbeSpec) -> ProbeProcess:
        """Start a probe (returns at once; see :meth:`listening` to wait for it)."""
        run = sum(1 for probe in self.spawned if probe.spec.index == spec.index)
        mode = "raw" if spec.raw else "p2pgrid"
        name = f"probe-{mode}-{spec.index}-{run}"
        probe = await ProbeProcess.spawn(
            name,
            PROBE_MODULE,
            spec.argv(),
            self._log_dir / f"{name}.stderr",
            prefix=spec.prefix,
            spec=spec,
        )
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
