"""Finding and keeping peers (trio side): bootstrap list, learned peers, back-off redial.

The :class:`Redialer` holds the peers we want to be connected to:

- bootstrap peers from the config: dialled at start and redialled forever
  (so an agent started alone waits for them to appear);
- peers learned from hellos (peer exchange) and from mDNS: dialled while fewer
  than ``target_peers`` are connected or being dialled, redialled after they
  leave up to ``reconnect_attempts`` times.

At most ``max_concurrent_dials`` dials run at once, bootstrap peers first, then
the peers waiting longest; a waiting peer that connects to us meanwhile is not
dialled.

Delays double from ``reconnect_min_s`` to ``reconnect_max_s`` with +-25 % jitter,
and reset once a connection succeeds. These delays are the only back-off: py-libp2p's
swarm refuses, for 60 s, to dial a peer after a dial of all its addresses failed
(its negative cache), so a peer that is back sooner (a utility restarted on its
port, a few seconds later) would wait a minute; each redial clears that entry.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from p2pgrid.net.config import NetConfig
from p2pgrid.net.frames import PEER_ERRORS

log = logging.getLogger(__name__)

#: A single dial gives up after this long (py-libp2p's connect takes >= 250 ms).
DIAL_TIMEOUT_S = 5.0


@dataclass
class _Wanted:
    addrs: list[multiaddr.Multiaddr]
    bootstrap: bool
    attempts: int = 0
    next_at: float = 0.0
    dialling: bool = False
    delay: float = field(default=0.0)


def parse_peer_addr(addr: str) -> PeerInfo:
    """A multiaddr string ending in ``/p2p/<peer id>`` as a PeerInfo."""
    return info_from_p2p_addr(multiaddr.Multiaddr(addr))


def _forget_failed_dial(host: IHost, peer_id: ID) -> None:
    """Clear py-libp2p 0.8.1's negative dial cache entry of ``peer_id`` (a private
    part of its swarm: if a later version drops it, there is nothing to clear)."""
    cache = getattr(host.get_network(), "_negative_peer_cache", None)
    if cache is not None:
        cache.evict(str(peer_id))


class Redialer:
    """Dials wanted peers, with back-off; runs as one trio task."""

    def __init__(
        self,
        host: IHost,
        config: NetConfig,
        *,
        name: str,
        is_connected: Callable[[ID], bool],
        is_banned: Callable[[ID], bool] = lambda peer: False,
        rng: random.Random | None = None,
    ) -> None:
        self._host = host
        self._config = config
        self._name = name
        self._is_connected = is_connected
        self._is_banned = is_banned
        self._rng = rng or random.Random()
        self._wanted: dict[ID, _Wanted] = {}
        self._wake = trio.Event()
        #: Dials started, and those that failed (the peer down, unreachable, slow).
        self.dials = 0
        self.dial_failures = 0

    def want(self, info: PeerInfo, *, bootstrap: bool = False) -> None:
        """Remember a peer to keep connected to (idempotent; merges addresses)."""
        if info.peer_id == self._host.get_id() or not info.addrs or self._is_banned(info.peer_id):
            return
        entry = self._wanted.get(info.peer_id)
        if entry is None:
            self._wanted[info.peer_id] = _Wanted(list(info.addrs), bootstrap)
        else:
            if bootstrap and not entry.bootstrap:
                entry.next_at = min(entry.next_at, trio.current_time())
            entry.bootstrap = entry.bootstrap or bootstrap
            for addr in info.addrs:
                if addr not in entry.addrs:
                    entry.addrs.append(addr)
        self._wake.set()

    def forget(self, peer_id: ID) -> None:
        """Stop dialling a peer (a banned one); bootstrap peers too, until wanted again."""
        self._wanted.pop(peer_id, None)

    def connected(self, peer_id: ID) -> None:
        entry = self._wanted.get(peer_id)
        if entry is not None:
            entry.attempts = 0
            entry.delay = 0.0

    def lost(self, peer_id: ID) -> None:
        """A peer left: redial it after the next back-off delay."""
        entry = self._wanted.get(peer_id)
        if entry is not None:
            self._schedule_retry(entry)
            self._wake.set()

    def _schedule_retry(self, entry: _Wanted) -> None:
        cfg = self._config
        entry.delay = min(max(entry.delay * 2, cfg.reconnect_min_s), cfg.reconnect_max_s)
        entry.next_at = trio.current_time() + entry.delay * self._rng.uniform(0.75, 1.25)

    def _connected_count(self) -> int:
        return len(self._host.get_connected_peers())

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                self._start_due_dials(nursery)
                self._wake = trio.Event()
                with trio.move_on_at(self._next_due()):
                    await self._wake.wait()

    def _start_due_dials(self, nursery: trio.Nursery) -> None:
        """Start the dials that are due, bootstrap peers first, then the longest
        due, while fewer than ``max_concurrent_dials`` run; learned peers only
        while fewer than ``target_peers`` are connected or being dialled."""
        cfg = self._config
        now = trio.current_time()
        in_flight = sum(entry.dialling for entry in self._wanted.values())
        room = cfg.target_peers - self._connected_count() - in_flight
        due: list[tuple[ID, _Wanted]] = []
        for peer_id, entry in list(self._wanted.items()):
            if entry.dialling or self._is_connected(peer_id):
                continue
            if not entry.bootstrap and entry.attempts >= cfg.reconnect_attempts:
                del self._wanted[peer_id]
            elif entry.next_at <= now:
                due.append((peer_id, entry))
        due.sort(key=lambda item: (not item[1].bootstrap, item[1].next_at))
        for peer_id, entry in due[: max(0, cfg.max_concurrent_dials - in_flight)]:
            if not entry.bootstrap:
                if room <= 0:
                    continue
                room -= 1
            entry.dialling = True
            nursery.start_soon(self._dial, peer_id, entry)

    def _next_due(self) -> float:
        """When the next waiting dial falls due (at most ``reconnect_max_s`` from now).
        One due already but held back waits for a wake: a dial ending, a peer lost."""
        now = trio.current_time()
        next_at = now + self._config.reconnect_max_s
        for entry in self._wanted.values():
            if not entry.dialling and entry.next_at > now:
                next_at = min(next_at, entry.next_at)
        return next_at

    async def _dial(self, peer_id: ID, entry: _Wanted) -> None:
        try:
            entry.attempts += 1
            self.dials += 1
            _forget_failed_dial(self._host, peer_id)
            with trio.move_on_after(DIAL_TIMEOUT_S) as scope:
                await self._host.connect(PeerInfo(peer_id, entry.addrs))
            if scope.cancelled_caught:
                raise TimeoutError("dial timed out")
            entry.delay = 0.0
        except PEER_ERRORS as exc:
            self.dial_failures += 1
            log.debug("%s: dial %s failed (%s)", self._name, peer_id, exc)
            self._schedule_retry(entry)
        finally:
            entry.dialling = False
            self._wake.set()
