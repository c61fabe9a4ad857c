"""The net layer's handlers over real py-libp2p hosts: hostile hello values signed by a
member key, and hostile requests to an agent's real share desk. The host keeps serving."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.agent.messages import ShareInvoice
from p2pgrid.agent.sharing import SHARE_PAY_PROTOCOL, SHARE_REQUEST_PROTOCOL
from p2pgrid.ledger import Author, LogWriter
from p2pgrid.market import Party, ShareRequest
from p2pgrid.net import DeviceKey, NetConfig, PeerHost, RequestRejected, TrioBridge, site_topic
from p2pgrid.net.envelope import KIND_HELLO, MAX_ENVELOPE_BYTES, Record
from p2pgrid.net.frames import Hello
from p2pgrid.net.node import HELLO_PROTOCOL
from tests.fuzz.conftest import budget, tried
from tests.fuzz.fakes import FakeNode, share_desk
from tests.fuzz.mutate import mutants
from tests.fuzz.seeds import BOLT11, SITE

#: Nobody gets banned while the fuzzer runs (bans have their own tests).
CONFIG = NetConfig(misbehaviour_threshold=10**9)


@dataclass(frozen=True)
class Hosts:
    bridge: TrioBridge
    victim: PeerHost
    liar: PeerHost  # a member device that signs whatever it is told to


@pytest.fixture(scope="module")
async def hosts(
    bridge: TrioBridge, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Hosts]:
    """A victim with a real share desk and a lying member, on the session's bridge."""
    topic = site_topic(SITE.membership.roster)  # devices 0..63, as the genesis enrols them
    site = SITE.identity

    def host(index: int, config: NetConfig) -> PeerHost:
        key = DeviceKey(site, index, SITE.device(index))
        return PeerHost(config, key, [topic], bridge=bridge, name=f"fuzz-{index}")

    victim = host(1, CONFIG)
    await victim.start()
    liar = host(2, dataclasses.replace(CONFIG, bootstrap=victim.addrs))
    await liar.start()
    await liar.wait_for_peer(victim.peer_id, topic, timeout_s=10)
    path: Path = tmp_path_factory.mktemp("net-fuzz") / "victim.sqlite"
    store = await SITE.open(path, "victim")

    async def headroom(period: int) -> int:
        return 50_000 if period == 1 else 0

    try:
        async with share_desk(
            path.parent,
            me=Party(site.site_id, 1),
            host=victim,
            node=FakeNode(),
            store=store,
            writer=LogWriter(store, SITE.device(1), Author.device(1)),
            headroom=headroom,
            name="victim",
        ) as desk:
            desk.install()
            yield Hosts(bridge, victim, liar)
    finally:
        await liar.stop()
        await victim.stop()
        await store.close()


texts = st.one_of(
    st.sampled_from(["garbage", "", "/ip4/1.2.3.4/tcp/99999", "/ip4/127.0.0.1/tcp/1/p2p/x"]),
    st.text(max_size=80),
)


@budget(1 / 5)
@given(listen=st.lists(texts, max_size=5), known=st.lists(texts, max_size=5))
async def test_hostile_hello_values(hosts: Hosts, listen: list[str], known: list[str]) -> None:
    """A member signs a hello with any addresses: the victim's hello handler survives."""
    tried("net hello handler")
    liar, victim = hosts.liar, hosts.victim
    hello = Hello(tuple(listen), tuple(known)).encode()
    sealed = liar._seal_context(HELLO_PROTOCOL, [Record(KIND_HELLO, hello)], MAX_ENVELOPE_BYTES)
    node = victim._node
    assert node is not None
    assert liar._node is not None
    peer = liar._node.peer_id

    async def accept() -> None:
        node._accept_hello(peer, sealed)

    await hosts.bridge.run(accept)
    assert victim.stats().bans == 0
    assert victim._state == "running"


@dataclass(frozen=True)
class Raw:
    """Any record: a kind and bytes, sent as they are."""

    KIND: int
    data: bytes

    def encode(self) -> bytes:
        return self.data


_REQUEST = ShareRequest(Party(SITE.identity.site_id, 2), 1, 1_000, 0)
_SEEDS = [_REQUEST.encode(), ShareInvoice(_REQUEST.id, 1_000, BOLT11).encode()]


@budget(1 / 5)
@given(
    protocol=st.sampled_from([SHARE_REQUEST_PROTOCOL, SHARE_PAY_PROTOCOL]),
    kind=st.sampled_from([ShareRequest.KIND, ShareInvoice.KIND, 0x0100, 0xFFFF]),
    data=mutants(_SEEDS),
)
async def test_hostile_requests_to_a_real_share_desk(
    hosts: Hosts, protocol: str, kind: int, data: bytes
) -> None:
    """Any record on the share protocols: answered or refused, never a dead host."""
    tried("net request handler")
    try:
        await hosts.liar.request(hosts.victim.peer_id, protocol, Raw(kind, data), timeout_s=10)
    except RequestRejected:
        tried("net request handler: refused")
    assert hosts.victim._state == "running"
