"""Which peers a periodic anti-entropy round picks (:meth:`NetReplica.periodic_peers`):
at most one device address per libp2p host, the hosts and the device at random."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from p2pgrid.net import PeerRef
from p2pgrid.replication import NetReplica, ReplicaConfig, log_net_topic
from tests.ledger.ledger_factory import Site


@dataclasses.dataclass
class _Host:
    """What a replica asks its host about its peers (a fake: no network)."""

    device: SimpleNamespace
    topics: dict[str, SimpleNamespace]
    refs: list[PeerRef]

    def peers(self) -> list[PeerRef]:
        return self.refs


def _ref(host_id: str, index: int, site_id: str, hub: bool) -> PeerRef:
    address = f"{host_id}/{site_id}/{index}" if hub else host_id
    return PeerRef(address, site_id, index, (), host_id)


async def test_a_periodic_round_picks_one_address_per_host(site: Site, tmp_path: Path) -> None:
    async with await site.open(tmp_path / "d0.sqlite", "d0") as store:
        site_id = site.identity.site_id
        topic = log_net_topic(store.roster)
        refs = [
            *(_ref("hubA", i, site_id, hub=True) for i in (1, 2, 3)),
            *(_ref("hubB", i, site_id, hub=True) for i in (4, 5)),
            _ref("lone", 6, site_id, hub=False),
        ]
        host = _Host(SimpleNamespace(site=site.identity), {topic.name: topic}, refs)
        config = ReplicaConfig(peers_per_round=2, seed=7)
        replica = NetReplica(store, host, config, topic=topic)  # type: ignore[arg-type]
        host_of = {r.peer_id: r.host_id for r in refs}
        picked: set[str] = set()
        for _ in range(200):
            peers = replica.periodic_peers()
            assert len(peers) == 2
            assert len({host_of[p] for p in peers}) == 2  # never two devices of one hub
            picked.update(peers)
        assert picked == set(host_of)  # every device is picked now and then
        config_all = dataclasses.replace(config, peers_per_round=5)
        everyone = NetReplica(store, host, config_all, topic=topic).periodic_peers()  # type: ignore[arg-type]
        assert sorted(host_of[p] for p in everyone) == ["hubA", "hubB", "lone"]
