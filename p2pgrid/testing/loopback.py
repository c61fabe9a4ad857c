"""An in-memory, in-process fake of the network, for tests and benchmarks.

This is NOT a network: no sockets, no libp2p, no concurrency between peers.
``request`` calls the peer's handler directly and ``publish`` hands the bytes to
every reachable replica in turn, so delivery is deterministic. It exists so that
the sync protocol can be tested (bytes really go through the wire codec) before
and without ``p2pgrid.net``. Partitions and downed nodes are data on the network.
"""

from __future__ import annotations

from p2pgrid.ledger.store import LogStore
from p2pgrid.ledger.sync import Replicator
from p2pgrid.net.errors import PeerUnreachable


class LoopbackNetwork:
    """A set of named replicas that reach each other unless partitioned or down."""

    def __init__(self) -> None:
        self.replicas: dict[str, Replicator] = {}
        self._group: dict[str, int] = {}
        self._down: set[str] = set()

    def join(self, store: LogStore) -> Replicator:
        """Attach a store under its name; returns its replicator."""
        replicator = Replicator(store, LoopbackTransport(self, store.name))
        self.replicas[store.name] = replicator
        self._group[store.name] = 0
        self._down.discard(store.name)
        return replicator

    def leave(self, name: str) -> None:
        self.replicas.pop(name, None)
        self._group.pop(name, None)

    def partition(self, *groups: set[str]) -> None:
        """Only nodes in the same group reach each other (others stay in group 0)."""
        for number, group in enumerate(groups, start=1):
            for name in group:
                self._group[name] = number

    def heal(self) -> None:
        for name in self._group:
            self._group[name] = 0

    def reachable(self, src: str, dst: str) -> bool:
        return (
            dst in self.replicas
            and src not in self._down
            and dst not in self._down
            and self._group.get(src) == self._group.get(dst)
        )


class LoopbackTransport:
    """One replica's view of the :class:`LoopbackNetwork` (a fake; see module doc)."""

    def __init__(self, network: LoopbackNetwork, name: str) -> None:
        self._network = network
        self._name = name

    async def request(self, peer: str, payload: bytes) -> bytes:
        if not self._network.reachable(self._name, peer):
            raise PeerUnreachable(f"{self._name} cannot reach {peer}")
        return await self._network.replicas[peer].handle_request(payload)

    async def publish(self, payload: bytes) -> None:
        for name, replica in list(self._network.replicas.items()):
            if name != self._name and self._network.reachable(self._name, name):
                await replica.handle_announce(payload, from_peer=self._name)
