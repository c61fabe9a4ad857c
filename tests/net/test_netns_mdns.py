"""Hosts on several machines of one LAN find each other by mDNS alone.

Three probe processes (``python -m p2pgrid.testing.probe``), each in its own
network namespace on one bridge (:class:`p2pgrid.testing.netns.Lan`, removed
again by the test), listen on their namespace's address with mDNS on and no
bootstrap address: each must hear the others, which it can only have dialled
from an mDNS announcement over the bridge. Skipped, with the reason, only where
``ip netns add`` is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from p2pgrid.testing.netns import Lan, netns_refused
from p2pgrid.testing.probe_driver import ProbeFleet, ProbeProcess, ProbeSpec, wait_all

SEED = "p2pgrid-mdns-tests-site"
PARTIES = ("a", "b", "c")
#: Three interpreters importing libp2p on two busy cores.
START_TIMEOUT_S = 60.0
#: mDNS announcements, a dial, a hello, and one message from each probe.
FIND_TIMEOUT_S = 60.0

pytestmark = pytest.mark.slow


@pytest.fixture
def lan() -> Iterator[Lan]:
    refused = netns_refused()
    if refused is not None:
        pytest.skip(f"this machine makes no network namespaces: {refused}")
    lan = Lan(PARTIES)
    lan.up()
    try:
        yield lan
    finally:
        lan.down()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[ProbeFleet]:
    async with ProbeFleet(tmp_path) as fleet:
        yield fleet


async def test_probes_in_separate_namespaces_find_each_other_by_mdns(
    lan: Lan, fleet: ProbeFleet
) -> None:
    specs = [
        ProbeSpec(
            seed=SEED,
            index=i,
            host=lan.address(party),
            mdns=True,
            prefix=lan.prefix(party),
        )
        for i, party in enumerate(PARTIES)
    ]
    async with asyncio.timeout(START_TIMEOUT_S):
        probes = await fleet.start(specs)
    assert lan.subnet is not None
    for probe, party in zip(probes, PARTIES, strict=True):
        hosts = {addr.split("/")[2] for addr in probe.addrs}
        assert hosts == {lan.address(party)}, hosts
        assert all(ipaddress.IPv4Address(h) in lan.subnet for h in hosts)

    def heard_everyone(probe: ProbeProcess) -> bool:
        return all(probe.heard[s.index] >= 1 for s in specs if s.index != probe.spec.index)

    try:
        async with asyncio.timeout(FIND_TIMEOUT_S):
            await wait_all(probes, heard_everyone)
    except TimeoutError:
        pass
    gaps = [
        f"{p.spec.index} did not hear {s.index}"
        for p in probes
        for s in specs
        if s.index != p.spec.index and p.heard[s.index] < 1
    ]
    assert gaps == []
