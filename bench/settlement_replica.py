"""One idle member of ``bench/settlement.py``'s site in its own OS process (``--processes``).

Run by the bench, not by hand: ``python bench/settlement_replica.py SPEC.json``.
It opens what an idle device of the site runs (a libp2p host, an SQLite replica
and a :class:`~p2pgrid.replication.NetReplica`, with the bench's net and replica
settings), waits until the utility's host is on the log topic, and speaks the
line protocol of :mod:`p2pgrid.jsonlines`:

- ``{"event": "ready", "peer_id", "addrs"}`` once it is on the topic with the utility;
- ``{"event": "entry", "kind": "invoice" | "payment", "hash": hex, "at": s}`` when an
  invoice or payment entry joins its store, ``at`` being ``time.time()`` in this
  process (the bench's marks use the same wall clock: one machine, one clock);
- ``{"event": "stats", "rpcs", "copies", "ihave", "skipped", "served"}`` answering
  the command ``stats``: the gossipsub RPCs its host sent (of which message copies
  and IHAVEs; the relays it skipped) and the sync requests its replica served so
  far;
- ``{"event": "stopped"}`` after the command ``stop`` (or the end of its stdin).

:func:`net_config` is the hosts' config of both the bench and this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from p2pgrid.identity import Signer, SiteIdentity
from p2pgrid.jsonlines import commands, emit
from p2pgrid.ledger import Invoice, LogChange, Payment
from p2pgrid.net import DeviceKey, NetConfig, TrioBridge
from p2pgrid.replication import NodeSpec, ReplicaConfig, open_node_parts

#: How long the member waits for the utility's host on the log topic.
JOIN_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """What the bench tells the member: who it is, whom it dials, the bench's switches."""

    name: str
    index: int
    secret: str  # hex: the member's signing key
    owner_pubkey: str  # hex: the site
    provision: list[str]  # hex: the owner's signed enrolments
    bootstrap: list[str]  # the utility host's addresses
    utility_peer_id: str
    db_path: str
    flood_publish: bool
    mesh_degree: int | None
    anti_entropy_interval_s: float


def net_config(
    bootstrap: tuple[str, ...], *, flood_publish: bool, mesh_degree: int | None
) -> NetConfig:
    """The hosts' config: the product's, but for the switches the bench turns."""
    config = NetConfig(bootstrap=bootstrap, flood_publish=flood_publish)
    if mesh_degree is None:
        return config
    return dataclasses.replace(
        config,
        mesh_degree=mesh_degree,
        mesh_degree_low=max(1, min(config.mesh_degree_low, mesh_degree - 1)),
        mesh_degree_high=max(mesh_degree + 1, config.mesh_degree_high - (6 - mesh_degree)),
    )


def heard(change: LogChange) -> None:
    at = time.time()
    for entry in change.appended:
        body = entry.body
        if isinstance(body, Invoice | Payment):
            kind = "invoice" if isinstance(body, Invoice) else "payment"
            emit("entry", kind=kind, hash=body.payment_hash.hex(), at=at)


async def run(spec: MemberSpec) -> None:
    site = SiteIdentity(bytes.fromhex(spec.owner_pubkey))
    async with contextlib.AsyncExitStack() as exits:
        bridge = TrioBridge()
        await bridge.start()
        exits.push_async_callback(bridge.stop)
        parts = await open_node_parts(
            exits,
            NodeSpec(
                name=spec.name,
                db_path=Path(spec.db_path),
                site=site,
                net=net_config(
                    tuple(spec.bootstrap),
                    flood_publish=spec.flood_publish,
                    mesh_degree=spec.mesh_degree,
                ),
                key=DeviceKey(site, spec.index, Signer.from_secret(bytes.fromhex(spec.secret))),
                replica=ReplicaConfig(anti_entropy_interval_s=spec.anti_entropy_interval_s),
                provision=[bytes.fromhex(raw) for raw in spec.provision],
                bridge=bridge,
            ),
        )
        parts.store.subscribe(heard)
        topic = parts.replica.topic
        await parts.host.wait_for_peer(spec.utility_peer_id, topic, timeout_s=JOIN_TIMEOUT_S)
        emit("ready", peer_id=parts.host.peer_id, addrs=list(parts.host.addrs))
        async for command in commands():
            if command["cmd"] == "stats":
                net = parts.host.stats()
                emit(
                    "stats",
                    rpcs=net.rpcs_queued,
                    copies=net.messages_sent,
                    ihave=net.ihave_sent,
                    skipped=net.relays_skipped,
                    served=parts.replica.stats().requests_served,
                )
            elif command["cmd"] != "stop":
                emit("error", message=f"unknown command {command['cmd']!r}")
    emit("stopped")


def main() -> None:
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # its noise as hosts stop
    spec = MemberSpec(**json.loads(Path(sys.argv[1]).read_text()))
    asyncio.run(run(spec))


if __name__ == "__main__":
    main()
