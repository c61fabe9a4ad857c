"""The site owner's provisioning: enrolments, device descriptions and allocations.

The owner enrols the utility's key and each device's own key (``enrol``
entries: the site's membership), describes the devices (``device_info``),
splits each period's site budget between its devices in proportion to their
weights (:func:`p2pgrid.billing.split_budget`, exact to the msat) and signs all
these entries once, before the run; every agent of the site starts from them
(the replicated log then carries them to any replica that lacks them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from p2pgrid.billing import split_budget
from p2pgrid.identity import SiteIdentity
from p2pgrid.ledger import (
    Allocation,
    Author,
    Body,
    DeviceInfo,
    Enrol,
    Entry,
    Membership,
    Role,
    decode_entry,
    sign_entry,
)
from p2pgrid.ledger.entry import GENESIS_PREV
from p2pgrid.scenario import Scenario, SiteSpec


def owner_entries(scenario: Scenario, site: SiteSpec, *, now_ms: int | None = None) -> list[Entry]:
    """The owner's signed entries for ``site``: the utility's and every device's
    enrolment, one ``device_info`` per device, then the allocations of every
    period of the scenario."""
    signer = site.owner_signer
    site_h = site.identity.site_hash
    t0 = now_ms if now_ms is not None else int(time.time() * 1000)
    utility_key = scenario.utility.signer(site).pubkey
    bodies: list[tuple[int, Body]] = [(0, Enrol(Role.UTILITY, 0, utility_key, "utility", 0))]
    bodies += [
        (0, Enrol(Role.DEVICE, d.index, site.device_signer(d.index).pubkey, d.device_class, 0))
        for d in site.devices
    ]
    bodies += [(0, DeviceInfo(d.index, d.device_class, d.name)) for d in site.devices]
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


def membership_of(site: SiteIdentity, entries: Iterable[Entry]) -> Membership:
    """The site's members as these owner entries enrol and revoke them."""
    membership = Membership(site)
    membership.learn_from(entries)
    return membership


def provisioned_membership(site: SiteSpec, entries_hex: list[str]) -> Membership:
    """The membership of ``site`` as its owner's provisioned entries enrol it:
    how an agent knows the devices of the owner's *other* sites, whose logs it
    does not keep (to check their envelopes and their ``site_share`` evidence)."""
    site_h = site.identity.site_hash
    return membership_of(
        site.identity, (decode_entry(bytes.fromhex(h), site_h) for h in entries_hex)
    )
