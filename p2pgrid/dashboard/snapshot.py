"""A node's replicas as one JSON-ready snapshot: what the dashboard page shows.

:func:`site_snapshot` reads one site's replica (a :class:`~p2pgrid.ledger.LogStore`)
and nothing else: the devices of the current period (the last one with entries)
with their money from :func:`p2pgrid.ledger.fold`, the movements, invoices,
payments, curtailments and indicators from
:func:`p2pgrid.ledger.activity.activity`, the inefficiency findings of every
period with their reasons, and the replica's digest against the digests its
peers last reported in anti-entropy rounds. Money is integer msat, energy
integer Wh; the page formats them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from p2pgrid.ledger import LedgerView, LogStore, Membership, Replicator, fold, inefficiencies
from p2pgrid.ledger.activity import Activity, activity, explain

#: How many movements (newest first) a snapshot carries.
FEED_LENGTH = 60


@dataclasses.dataclass(frozen=True)
class SiteFeed:
    """One site replica a node serves on its dashboard.

    ``peer_sites``: the owner's other sites (site hash -> membership), so shares
    across sites are verified as in the fold; ``replicator``: the replica's sync
    side, whose :attr:`~p2pgrid.ledger.Replicator.peer_digests` say what the node
    last heard of its peers' digests;
    ``peer_names``: how to call the other sites."""

    name: str
    store: LogStore
    peer_sites: Mapping[bytes, Membership] = dataclasses.field(default_factory=dict)
    replicator: Replicator | None = None
    peer_names: Mapping[bytes, str] = dataclasses.field(default_factory=dict)  # site hash -> name


def _device_rows(view: LedgerView, act: Activity, period: int) -> list[dict[str, Any]]:
    now = view.period(period)
    rows = []
    for device in sorted(set(act.names) | set(now.accounts)):
        acc = now.account(device)
        rows.append(
            {
                "index": device,
                "name": act.name(device),
                "class": act.classes.get(device) or view.device_classes.get(device, "?"),
                "allocation_msat": acc.allocation_msat + acc.carried_in_msat,
                "left_msat": acc.balance_msat,
                "spent_msat": acc.spent_msat,
                "overdraft_msat": acc.overdraft_msat,
                "energy_wh": acc.energy_wh,
                "received_msat": acc.received_msat,
                "given_msat": acc.given_msat,
                "bought_wh": acc.bought_wh,
                "sold_wh": acc.sold_wh,
                "paid_msat": act.paid_msat(device, period),
            }
        )
    return rows


async def site_snapshot(feed: SiteFeed) -> dict[str, Any]:
    """One site as the page shows it (JSON types only)."""
    store = feed.store
    entries = await store.entries()
    view = fold(entries, site_hash=store.membership.site_hash, peer_sites=feed.peer_sites)
    act = activity(entries, peer_sites=feed.peer_sites.keys())
    period = max((e.period for e in entries), default=0)  # the last period with entries
    digest = store.digest()
    peers = [
        {"peer": peer, "digest": d.hex(), "agrees": d == digest}
        for peer, d in sorted(feed.replicator.peer_digests.items() if feed.replicator else ())
    ]
    site_names = {h.hex(): f"site {h.hex()[:8]}" for h in feed.peer_sites}
    site_names.update({h.hex(): n for h, n in feed.peer_names.items()})
    flows = [
        {
            "kind": f.kind.value,
            "period": f.period,
            "ts_ms": f.timestamp_ms,
            "id": f.entry_id[:16],
            "from": act.name(f.payer)
            if not f.payer_abroad
            else f"{site_names.get(f.other_site, 'other site')} #{f.payer}",
            "to": act.name(f.payee)
            if not f.payee_abroad
            else f"{site_names.get(f.other_site, 'other site')} #{f.payee}",
            "msat": f.amount_msat,
            "wh": f.energy_wh,
        }
        for f in reversed(act.flows[-FEED_LENGTH:])
    ]
    findings = [
        {
            "period": p,
            "device": found.device,
            "name": act.name(found.device),
            "findings": sorted(found.findings),
            "reason": explain(found),
        }
        for p in sorted(view.periods)
        for found in inefficiencies(view, p)
    ]
    return {
        "site": feed.name,
        "replica": store.name,
        "site_hash": store.membership.site_hash.hex(),
        "digest": digest.hex(),
        "peers": peers,
        "agree": all(p["agrees"] for p in peers) if peers else None,
        "entries": act.entries,
        "period": period,
        "budget_msat": view.period(period).budget_msat,
        "devices": _device_rows(view, act, period),
        "flows": flows,
        "invoices": [
            dataclasses.asdict(i) | {"name": act.name(i.device), "state": i.state.value}
            for i in act.invoices
        ],
        "payments": [
            dataclasses.asdict(p) | {"name": act.name(p.device)}
            for p in act.payments[-FEED_LENGTH:]
        ],
        "curtailments": [
            dataclasses.asdict(c) | {"name": act.name(c.device)} for c in act.curtailments
        ],
        "findings": findings,
        "indicators": [
            dataclasses.asdict(k)
            | {
                "invoiced_msat": view.period(k.period).invoiced_msat,
                "paid_msat": view.period(k.period).paid_msat,
            }
            for k in act.indicators
        ],
    }


async def node_snapshot(node: str, feeds: tuple[SiteFeed, ...]) -> dict[str, Any]:
    """Every site replica of a node."""
    return {
        "node": node,
        "generated_ms": int(time.time() * 1000),
        "sites": [await site_snapshot(f) for f in feeds],
    }
