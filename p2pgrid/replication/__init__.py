"""Replication of the log over the network: a :class:`NetReplica` per store and host.

:mod:`p2pgrid.ledger` knows the log and the sync protocol
(:class:`~p2pgrid.ledger.Replicator` over any :class:`~p2pgrid.ledger.SyncTransport`);
this package carries it over a :class:`p2pgrid.net.PeerHost`, and
:func:`open_node_parts` is the one way a process (agent, utility) opens its
store, host and replica. Arrows: replication -> ledger, net; never back.
"""

from p2pgrid.replication.entries_watch import ENTRIES_CHECK_S, Announcer, EntriesWatch, Reload
from p2pgrid.replication.merge import (
    MERGED_SUFFIX,
    Merged,
    check_not_behind,
    merge_replica,
    merged_path,
    remove_replica,
    retire_replica,
)
from p2pgrid.replication.parts import (
    NodeParts,
    NodeSpec,
    open_log_store,
    open_node_parts,
    start_host,
    start_replica,
)
from p2pgrid.replication.replica import (
    LOG_RECORD_KIND,
    HostTransport,
    LogRecord,
    NetReplica,
    ReplicaConfig,
    ReplicaState,
    ReplicaStats,
    ReplicaStopped,
    log_net_topic,
)

__all__ = [
    "ENTRIES_CHECK_S",
    "LOG_RECORD_KIND",
    "MERGED_SUFFIX",
    "Announcer",
    "EntriesWatch",
    "HostTransport",
    "LogRecord",
    "Merged",
    "NetReplica",
    "NodeParts",
    "NodeSpec",
    "Reload",
    "ReplicaConfig",
    "ReplicaState",
    "ReplicaStats",
    "ReplicaStopped",
    "check_not_behind",
    "log_net_topic",
    "merge_replica",
    "merged_path",
    "open_log_store",
    "open_node_parts",
    "remove_replica",
    "retire_replica",
    "start_host",
    "start_replica",
]
