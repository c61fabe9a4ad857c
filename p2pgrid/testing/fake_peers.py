"""Fake site peers in memory, for unit tests of the agent's desks.

:class:`FakePeerNet` connects :class:`FakePeers` (each implementing
:class:`p2pgrid.agent.ports.Peers`): a request is encoded, handed to the
other side's handler as a :class:`~p2pgrid.net.Delivery` naming the sender, and
its answer comes back the same way, as over real libp2p streams. A handler
that raises a ``ReportableError`` refuses the request (``RequestRejected`` at
the sender). ``drop_reply`` (a protocol) makes a peer's next answer on it get lost after its
handler ran on that protocol (the sender sees ``PeerUnreachable``): a payment made whose proof
never arrives.
"""

from __future__ import annotations

import time

from p2pgrid.agent.ports import Handler
from p2pgrid.errors import ReportableError
from p2pgrid.net import Delivery, PeerRef, PeerUnreachable, RequestRejected
from p2pgrid.net.messages import WireMessage


class FakePeerNet:
    def __init__(self) -> None:
        self.peers: dict[str, FakePeers] = {}

    def join(self, site_id: str, device_index: int) -> FakePeers:
        peer = FakePeers(self, site_id, device_index)
        self.peers[peer.peer_id] = peer
        return peer


class FakePeers:
    def __init__(self, net: FakePeerNet, site_id: str, device_index: int) -> None:
        self.net = net
        self.site_id = site_id
        self.device_index = device_index
        self.peer_id = f"fake-{site_id[:8]}-{device_index}"
        self.handlers: dict[str, Handler] = {}
        self.drop_reply: str | None = None
        self.misbehaviour: list[tuple[str, str]] = []  # (peer id, reason) reported

    @property
    def ref(self) -> PeerRef:
        return PeerRef(self.peer_id, self.site_id, self.device_index, ())

    def report_misbehaviour(self, peer_id: str, reason: str, *, scored: bool = True) -> None:
        self.misbehaviour.append((peer_id, reason))

    def handle(self, protocol: str, handler: Handler) -> None:
        self.handlers[protocol] = handler

    def peers(self) -> tuple[PeerRef, ...]:
        return tuple(p.ref for p in self.net.peers.values() if p is not self)

    def _delivery(self, protocol: str, message: WireMessage) -> Delivery:
        return Delivery(
            topic=protocol,
            site_id=self.site_id,
            device_index=self.device_index,
            peer_id=self.peer_id,
            kind=message.KIND,
            data=message.encode(),
            sent_at_ms=int(time.time() * 1000),
        )

    async def request(
        self, peer_id: str, protocol: str, message: WireMessage, *, timeout_s: float = 5.0
    ) -> Delivery:
        other = self.net.peers.get(peer_id)
        if other is None or protocol not in other.handlers:
            raise PeerUnreachable(f"{peer_id} does not answer {protocol}")
        try:
            answer = await other.handlers[protocol](self._delivery(protocol, message))
        except ReportableError as exc:
            raise RequestRejected(f"{peer_id} refused: {exc}") from exc
        if other.drop_reply == protocol:
            other.drop_reply = None
            raise PeerUnreachable(f"{peer_id} dropped the stream")
        return other._delivery(protocol, answer)
