"""The one way to open a node's replicated log: its store, its libp2p host and its replica.

The utility opens one :class:`NodeParts` per site it serves;
:func:`open_node_parts` is :func:`open_log_store`, :func:`start_host` and
:func:`start_replica` in turn, which a site gateway calls apart (its devices of
one site: one store, one replica, each device's host a view on the site's
:class:`~p2pgrid.net.HostHub`; :mod:`p2pgrid.agent.gateway`).
They open the SQLite log (:func:`open_node_parts` first takes the file's
writer lock, :func:`~p2pgrid.ledger.lock_store`; a gateway takes it itself,
before its devices open; and they ingest the owner's provisioning entries: they
enrol the site's members into the store's roster),
start the :class:`~p2pgrid.net.PeerHost` on the log topic and any other topics
(on a libp2p host of its own, or on a gateway's :class:`~p2pgrid.net.HostHub`),
whose members are read from that roster, then starts the :class:`NetReplica`
and, for a node run from the owner's entries file, the :class:`EntriesWatch`
that ingests what the owner adds to that file while the node runs. Each part's
stop goes on the caller's exit stack as soon as the part is usable, so the
parts stop in reverse order (watch, replica, host, and the database last) also
when a later part fails to start.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from p2pgrid.identity import Roster, SiteIdentity
from p2pgrid.ledger import LogStore, lock_store
from p2pgrid.net import DeviceKey, HostHub, NetConfig, PeerHost, Topic, TrioBridge
from p2pgrid.replication.entries_watch import ENTRIES_CHECK_S, EntriesWatch
from p2pgrid.replication.replica import NetReplica, ReplicaConfig, log_net_topic


def _no_topics(roster: Roster) -> Sequence[Topic]:
    return ()


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """What to open: where the log lives, who speaks on the network, on which topics."""

    #: Names the store, the host and the replica in logs.
    name: str
    db_path: Path
    site: SiteIdentity
    net: NetConfig
    key: DeviceKey
    replica: ReplicaConfig
    #: Other topics the host joins, given the store's roster of the site (the
    #: site's and owner's topics of an agent). The log topic is always joined.
    topics: Callable[[Roster], Sequence[Topic]] = _no_topics
    #: Raw entries (the owner's signed provisioning) ingested when the store opens.
    provision: Sequence[bytes] = ()
    #: A bridge shared by several hosts of one process; a host runs its own otherwise.
    bridge: TrioBridge | None = None
    #: The libp2p host shared with other devices of the site (a gateway's; its
    #: owner starts and stops it): ``net`` and ``bridge`` are then the hub's.
    hub: HostHub | None = None
    #: The owner's entries file the node watches while it runs (None: no file,
    #: e.g. a test's node, whose provisioning is fixed for the run).
    entries_file: Path | None = None
    entries_check_s: float = ENTRIES_CHECK_S


@dataclasses.dataclass(frozen=True)
class NodeParts:
    """A node's open log, running host and running replica."""

    store: LogStore
    host: PeerHost
    replica: NetReplica
    entries: EntriesWatch | None = None


async def open_node_parts(parts: contextlib.AsyncExitStack, spec: NodeSpec) -> NodeParts:
    """Lock the store's file (:func:`~p2pgrid.ledger.lock_store`: refused if
    another process writes it), open the store, start the host and the replica;
    their stops go on ``parts``."""
    spec.db_path.parent.mkdir(parents=True, exist_ok=True)
    parts.enter_context(lock_store(spec.db_path))
    store = await open_log_store(parts, spec.db_path, spec.site, spec.name, spec.provision)
    host = await start_host(parts, spec, store)
    replica, entries = await start_replica(parts, spec, store, host)
    return NodeParts(store, host, replica, entries)


async def open_log_store(
    parts: contextlib.AsyncExitStack,
    path: Path,
    site: SiteIdentity,
    name: str,
    provision: Sequence[bytes] = (),
) -> LogStore:
    """Open the SQLite log at ``path`` and ingest the owner's ``provision``; its
    close goes on ``parts``."""
    store = await LogStore.open(path, site, name=name)
    parts.push_async_callback(store.close)
    await store.ingest_many(list(provision))
    return store


async def start_host(parts: contextlib.AsyncExitStack, spec: NodeSpec, store: LogStore) -> PeerHost:
    """Start ``spec``'s host on the log topic and ``spec.topics``, whose members
    ``store``'s roster makes up; its stop goes on ``parts``."""
    host = PeerHost(
        spec.net,
        spec.key,
        [log_net_topic(store.roster), *spec.topics(store.roster)],
        bridge=spec.bridge,
        name=spec.name,
        hub=spec.hub,
    )
    await host.start()
    parts.push_async_callback(host.stop)
    return host


async def start_replica(
    parts: contextlib.AsyncExitStack,
    spec: NodeSpec,
    store: LogStore,
    host: PeerHost,
    *,
    serves: Sequence[str] = (),
) -> tuple[NetReplica, EntriesWatch | None]:
    """Start the replica of ``store`` on ``host`` (running, on the log topic) and,
    if ``spec`` names one, the watch of the owner's entries file; their stops go
    on ``parts``. ``serves``: the addresses of the hosts it will also answer on
    (:meth:`NetReplica.serve_on`), never synced with."""
    replica = NetReplica(
        store, host, spec.replica, topic=log_net_topic(store.roster), serves=serves
    )
    await replica.start()
    parts.push_async_callback(replica.stop)
    entries = None
    if spec.entries_file is not None:
        entries = EntriesWatch(store, replica, spec.entries_file, interval_s=spec.entries_check_s)
        await entries.start()
        parts.push_async_callback(entries.stop)
    return replica, entries
