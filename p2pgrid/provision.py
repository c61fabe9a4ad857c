"""The site owner's provisioning, as its entries make up the site's membership.

The owner enrols the utility's key and each device's own key (``enrol``
entries: the site's membership), describes the devices (``device_info``) and
splits each period's budget between them (``allocation``), all signed with the
owner's key before the run (``p2pgrid site init`` / ``device add`` / ``site
allocate``: :mod:`p2pgrid.config.owner`); every replica of the site starts from
them (the replicated log then carries them to any replica that lacks them).
:func:`membership_of` reads who those entries admit.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pgrid.identity import SiteIdentity
from p2pgrid.ledger import Entry, Membership


def membership_of(site: SiteIdentity, entries: Iterable[Entry]) -> Membership:
    """The site's members as these owner entries enrol and revoke them."""
    membership = Membership(site)
    membership.learn_from(entries)
    return membership
