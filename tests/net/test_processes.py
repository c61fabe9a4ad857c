"""Real hosts as separate OS processes (``python -m p2pgrid.testing.probe``).

Ten agents find each other from one bootstrap address (peer exchange through
signed hellos) and every agent hears every other; an agent killed with SIGKILL
and restarted (same device, same peer id, a new epoch) rejoins and is heard
again. A fleet that publishes gets every message in time, at about one RPC per
message and mesh peer. Every wait reads the probes' JSON lines under a named
deadline.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from p2pgrid.net import NetConfig
from p2pgrid.testing.probe_driver import ProbeFleet, ProbeProcess, ProbeSpec, wait_all

AGENTS = 10
#: The test site's seed: its devices' keys, so their peer ids. One per pytest
#: process: two runs of these tests at once on one machine (parallel suites) would
#: otherwise have the same peer ids, and a probe redialling a killed peer's old
#: port could reach the other run's probe of that device, which noise accepts.
SEED = f"p2pgrid-process-tests-site-{os.getpid()}"
#: Seconds between a probe's warm-up messages (what makes it heard).
INTERVAL_S = 0.5
# The deadlines below only stop a test that hangs: none is a bound the behaviour
# is judged by (each wait ends at the event it waits for, read from the probes'
# lines). They are generous because on two cores shared with other suites (load
# 12-16) the same runs took several times longer than on an idle machine: nine
# interpreters importing libp2p at once took over 30 s to listen, and one
# restarted probe over 30 s as well.
#: Ten interpreters importing libp2p (~1.3 s of CPU each) on two busy cores.
START_TIMEOUT_S = 180.0
#: Discovery from one bootstrap address, then one message from each agent.
MESH_TIMEOUT_S = 120.0
#: A restarted agent redials, re-grafts and is heard.
REJOIN_TIMEOUT_S = 120.0
#: A graceful stop of every probe at once: each drains and closes its host.
STOP_TIMEOUT_S = 60.0
#: The agent that is killed and restarted (not the bootstrap agent).
VICTIM = 4
#: The victim's first run is chatty (20 messages/s): py-libp2p 0.8.1 numbers a
#: host's messages from int(time.time()) up, one per publish, so a restarted
#: agent (same peer id) would reuse sequence numbers its peers still hold as
#: seen, and be unheard for a while, but for the workaround in TrioNode.
CHATTY_INTERVAL_S = 0.05

pytestmark = pytest.mark.slow


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[ProbeFleet]:
    """Probe processes of one test; every one is killed in teardown."""
    async with ProbeFleet(tmp_path) as fleet:
        yield fleet


def spec(index: int, bootstrap: Sequence[str] = (), interval_s: float = INTERVAL_S) -> ProbeSpec:
    return ProbeSpec(seed=SEED, index=index, bootstrap=tuple(bootstrap), interval_s=interval_s)


def missing(probes: Sequence[ProbeProcess], times: dict[int, int]) -> list[str]:
    """Who did not hear whom ``times[sender]`` times (default once)."""
    gaps = []
    for probe in probes:
        me = probe.spec.index
        for other in probes:
            sender = other.spec.index
            want = times.get(sender, 1)
            if sender != me and probe.heard[sender] < want:
                gaps.append(f"{me} heard {sender} {probe.heard[sender]}x (want {want})")
    return gaps


async def hear_all(
    probes: Sequence[ProbeProcess], times: dict[int, int], deadline_s: float
) -> None:
    """Read until every probe heard every other (or the deadline passes), then assert."""
    senders = [probe.spec.index for probe in probes]

    def done(probe: ProbeProcess) -> bool:
        me = probe.spec.index
        return all(probe.heard[s] >= times.get(s, 1) for s in senders if s != me)

    try:
        async with asyncio.timeout(deadline_s):
            await wait_all(probes, done)
    except TimeoutError:
        pass  # reported by the assertion below, with who missed whom
    gaps = missing(probes, times)
    logs = ", ".join(str(probe.log_path) for probe in probes)
    assert not gaps, f"not heard within {deadline_s}s: {'; '.join(gaps)} (stderr: {logs})"


async def test_ten_agents_discover_from_one_bootstrap_and_a_restarted_agent_rejoins(
    fleet: ProbeFleet,
) -> None:
    async with asyncio.timeout(START_TIMEOUT_S):
        (first,) = await fleet.start([spec(0)])
    bootstrap = first.addrs[:1]
    async with asyncio.timeout(START_TIMEOUT_S):
        others = await fleet.start(
            [
                spec(i, bootstrap, CHATTY_INTERVAL_S if i == VICTIM else INTERVAL_S)
                for i in range(1, AGENTS)
            ]
        )
    probes = [first, *others]
    await hear_all(probes, {}, MESH_TIMEOUT_S)

    victim = probes[VICTIM]
    assert await victim.kill() == -9
    async with asyncio.timeout(START_TIMEOUT_S):
        (restarted,) = await fleet.start([spec(VICTIM, bootstrap)])
    assert restarted.listening is not None
    assert victim.listening is not None
    assert restarted.listening.peer_id == victim.listening.peer_id  # derived from the device key
    probes[VICTIM] = restarted
    # Everyone else hears the new run of the victim (a second "heard"); the
    # restarted agent hears everyone from scratch.
    await hear_all(probes, {VICTIM: 2}, REJOIN_TIMEOUT_S)
    assert restarted.heard[VICTIM] == 0  # a probe does not count itself

    survivors = [p for p in probes if p is not restarted]
    assert all(p.returncode is None for p in survivors), "an agent died after the kill"
    async with asyncio.TaskGroup() as tasks:  # a graceful stop still works after the churn
        stops = [tasks.create_task(probe.stop(STOP_TIMEOUT_S)) for probe in probes]
    codes = {probe.spec.index: stop.result() for probe, stop in zip(probes, stops, strict=True)}
    assert codes == dict.fromkeys(codes, 0), [p.stderr_tail() for p in probes]


#: The publishing load of the gossip test: every agent publishes this many
#: messages per second for this long (the benchmark's load: 1/s per agent).
LOAD_AGENTS = 6
LOAD_RATE = 1.0
LOAD_DURATION_S = 5.0
LOAD_DRAIN_S = 3.0
#: Generous: 0.1-0.7 s when the layer keeps up (3.5 s seen at load ~15 from other
#: suites on two cores), 10-20 s when it falls behind.
LOAD_P99_MS = 5000.0


async def test_a_publishing_fleet_gets_every_message_in_time_at_one_rpc_per_mesh_peer(
    fleet: ProbeFleet,
) -> None:
    """Every agent publishes at LOAD_RATE; every message reaches every agent in time.

    What made agents fall behind on a busy machine (docs/performance.md) was py-libp2p's
    per-message cost: an IDONTWANT RPC to every mesh peer for every message however
    small, a signed peer record checked in every RPC, and a mesh of every connected
    peer. Each host now sends at most about one RPC per message per mesh peer, the
    mesh stays within ``mesh_degree_high`` and no outbound queue drops an RPC: the
    counters fail with py-libp2p's behaviour whatever the load (~1.8x the RPCs);
    delivery and latency fail when the machine starves the fleet of CPU (at 8
    agents x 2 msg/s and load ~15: 156 of 448 messages with py-libp2p's behaviour).
    """
    async with asyncio.timeout(START_TIMEOUT_S):
        (first,) = await fleet.start([spec(0, interval_s=1.0)])
        others = await fleet.start([spec(i, first.addrs[:1], 1.0) for i in range(1, LOAD_AGENTS)])
    probes = [first, *others]
    await hear_all(probes, {}, MESH_TIMEOUT_S)

    for probe in probes:
        await probe.send("measure", rate=LOAD_RATE, duration=LOAD_DURATION_S, drain=LOAD_DRAIN_S)
    async with asyncio.timeout(LOAD_DURATION_S + LOAD_DRAIN_S + 20):
        await wait_all(probes, lambda probe: probe.report is not None)
    reports = [probe.report for probe in probes if probe.report is not None]
    sent = sum(report.sent for report in reports)
    assert sent == LOAD_AGENTS * int(LOAD_RATE * LOAD_DURATION_S)
    received = sum(report.received for report in reports)
    assert received == sent * (LOAD_AGENTS - 1), "messages lost or later than the drain"
    latencies = sorted(x for report in reports for x in report.latencies_ms)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    assert p99 < LOAD_P99_MS, f"p99 {p99:.0f} ms"

    config = NetConfig()
    for report in reports:
        counters = report.counters
        assert counters["rpc_drops"] == 0, counters
        assert counters["idontwant"] == 0, counters  # probe messages are small
        assert counters["mesh"] <= config.mesh_degree_high, counters
    rpcs = sum(report.counters["rpcs"] for report in reports)
    # One RPC per mesh peer per message and host at most; heartbeat gossip and
    # mesh upkeep fit in the slack of the peers that do not forward back.
    assert rpcs <= sent * LOAD_AGENTS * config.mesh_degree_high, f"{rpcs / sent:.1f} RPCs/message"
