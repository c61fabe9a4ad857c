"""Who may speak on a topic: a set of sites, each an extended public key.

A device of a site is a member if its index is within the site's provisioned
range; its public key is the site xpub's non-hardened child at that index, so a
member list is just the sites' xpubs and needs no server.

Topics (names are part of the wire protocol, see docs/protocol-net.md):

- ``/p2pgrid/1/site/<site_id>``: the devices of one site.
- ``/p2pgrid/1/owner/<group_id>``: the sites of one owner (e.g. the HVAC
  networks of two stores); ``group_id`` is derived from the sorted site ids.
- ``/p2pgrid/1/utility/<utility_site_id>/<site_id>``: one site and its utility.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pgrid.identity import SiteIdentity

PROTOCOL_PREFIX = "/p2pgrid/1"
#: Devices ``0..DEFAULT_MAX_DEVICES-1`` of a site are members unless configured otherwise.
DEFAULT_MAX_DEVICES = 1024


@dataclass(frozen=True)
class Membership:
    """The sites whose devices may publish on a topic."""

    sites: frozenset[SiteIdentity]
    max_devices: int = DEFAULT_MAX_DEVICES
    _by_id: dict[str, SiteIdentity] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {site.site_id: site for site in self.sites})

    def device_pubkey(self, site_id: str, device_index: int) -> bytes | None:
        """The member's public key, or ``None`` if the device is not a member."""
        site = self._by_id.get(site_id)
        if site is None or not 0 <= device_index < self.max_devices:
            return None
        return site.device_pubkey(device_index)

    def __contains__(self, site_id: object) -> bool:
        return site_id in self._by_id


@dataclass(frozen=True)
class Topic:
    """A pubsub topic and who may publish on it."""

    name: str
    members: Membership


def site_topic(site: SiteIdentity, *, max_devices: int = DEFAULT_MAX_DEVICES) -> Topic:
    """The topic of the devices of one site."""
    return Topic(
        f"{PROTOCOL_PREFIX}/site/{site.site_id}",
        Membership(frozenset({site}), max_devices),
    )


def owner_group_id(sites: Iterable[SiteIdentity]) -> str:
    """SHA-256 of the sorted site ids joined by ``,``; first 16 hex characters."""
    joined = ",".join(sorted(site.site_id for site in sites))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def owner_topic(sites: Iterable[SiteIdentity], *, max_devices: int = DEFAULT_MAX_DEVICES) -> Topic:
    """The topic between the sites of one owner (every site lists the same sites)."""
    members = frozenset(sites)
    return Topic(
        f"{PROTOCOL_PREFIX}/owner/{owner_group_id(members)}",
        Membership(members, max_devices),
    )


def utility_topic(
    utility: SiteIdentity, site: SiteIdentity, *, max_devices: int = DEFAULT_MAX_DEVICES
) -> Topic:
    """The topic between one site and its utility (the utility is a site too)."""
    return Topic(
        f"{PROTOCOL_PREFIX}/utility/{utility.site_id}/{site.site_id}",
        Membership(frozenset({utility, site}), max_devices),
    )
