"""The site owner's provisioning: device descriptions and per-period allocations.

The owner splits each period's site budget between its devices in proportion
to their weights (:func:`p2pgrid.billing.split_budget`, exact to the msat) and
signs the ``device_info`` and ``allocation`` entries once, before the run; every
agent of the site starts from them (the replicated log then carries them to any
replica that lacks them).
"""

from __future__ import annotations

import time

from p2pgrid.billing import split_budget
from p2pgrid.ledger import Allocation, Author, Body, DeviceInfo, Entry, sign_entry, site_hash
from p2pgrid.ledger.entry import GENESIS_PREV
from p2pgrid.scenario import Scenario, SiteSpec


def owner_entries(scenario: Scenario, site: SiteSpec, *, now_ms: int | None = None) -> list[Entry]:
    """The owner's signed entries for ``site``: one ``device_info`` per device, then
    the allocations of every period of the scenario."""
    owner = site.owner
    signer = owner.owner_signer
    site_h = site_hash(owner.identity)
    t0 = now_ms if now_ms is not None else int(time.time() * 1000)
    bodies: list[tuple[int, Body]] = [
        (0, DeviceInfo(d.index, d.device_class, d.name)) for d in site.devices
    ]
    weights = {d.index: d.weight for d in site.devices}
    for period in range(scenario.periods):
        for device, amount in split_budget(site.budget_msat, weights).items():
            if amount > 0:
                bodies.append((period, Allocation(device, amount)))
    entries: list[Entry] = []
    for i, (period, body) in enumerate(bodies):
        entry = sign_entry(
            signer,
            site_h,
            author=Author.owner(),
            seq=i + 1,
            prev=entries[-1].id if entries else GENESIS_PREV,
            period=period,
            timestamp_ms=t0 + i,
            body=body,
        )
        entries.append(entry)
    return entries
