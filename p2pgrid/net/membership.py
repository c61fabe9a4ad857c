"""Who may speak on a topic: members of a set of sites, each site a roster.

A site's :class:`~p2pgrid.identity.Roster` holds its owner's key (the site
identity) and the keys the owner enrolled in the site's log (devices, the
utility). The roster is filled by the site's log store as enrolments and
revocations join the log, and read here: so a host learns a new device's key
from the log, with no server and nothing derived. A revoked member may not
speak at all.

An envelope names ``(site_id, member index)``: a device's index (0..65535), or
the reserved indices of the owner and the utility (:data:`OWNER_NET_INDEX`,
:data:`UTILITY_NET_INDEX`). A topic admits some roles of its sites.

Topics (names are part of the wire protocol, see docs/protocol-net.md):

- ``/p2pgrid/1/site/<site_id>``: the devices of one site.
- ``/p2pgrid/1/owner/<group_id>``: the devices of the sites of one owner (e.g.
  the HVAC networks of two stores); ``group_id`` is derived from the sorted site ids.
- ``p2pgrid/log/1/<site_id>`` (:func:`p2pgrid.ledger.log_net_topic`): every
  member of one site (devices, owner, utility).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pgrid.identity import (
    OWNER_NET_INDEX,
    UTILITY_NET_INDEX,
    Role,
    Roster,
    role_of_net_index,
)

PROTOCOL_PREFIX = "/p2pgrid/1"
DEVICES = frozenset({Role.DEVICE})
EVERY_ROLE = frozenset(Role)

__all__ = ["OWNER_NET_INDEX", "UTILITY_NET_INDEX", "Membership", "Topic"]


@dataclass(frozen=True)
class Membership:
    """The members of some sites (their rosters) with one of ``roles``."""

    rosters: frozenset[Roster]
    roles: frozenset[Role] = DEVICES
    _by_id: dict[str, Roster] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {r.site.site_id: r for r in self.rosters})

    @property
    def site_ids(self) -> frozenset[str]:
        return frozenset(self._by_id)

    def device_pubkey(self, site_id: str, member_index: int) -> bytes | None:
        """The member's public key, or ``None`` if it is not a member (unknown
        site, not enrolled, revoked, or of a role this membership leaves out)."""
        roster = self._by_id.get(site_id)
        who = role_of_net_index(member_index)
        if roster is None or who is None or who[0] not in self.roles:
            return None
        return roster.net_pubkey(member_index)

    def __contains__(self, site_id: object) -> bool:
        return site_id in self._by_id

    @classmethod
    def union(cls, memberships: Iterable[Membership]) -> Membership:
        """Everyone any of ``memberships`` admits (for hellos and requests, which
        have no topic). One roster per site: the first one given wins."""
        rosters: dict[str, Roster] = {}
        roles: set[Role] = set()
        for members in memberships:
            roles |= members.roles
            for roster in members.rosters:
                rosters.setdefault(roster.site.site_id, roster)
        return cls(frozenset(rosters.values()), frozenset(roles))


@dataclass(frozen=True)
class Topic:
    """A pubsub topic and who may publish on it."""

    name: str
    members: Membership


def site_topic(roster: Roster) -> Topic:
    """The topic of the devices of one site."""
    return Topic(f"{PROTOCOL_PREFIX}/site/{roster.site.site_id}", Membership(frozenset({roster})))


def owner_group_id(site_ids: Iterable[str]) -> str:
    """SHA-256 of the sorted site ids joined by ``,``; first 16 hex characters."""
    joined = ",".join(sorted(site_ids))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def owner_topic(rosters: Iterable[Roster]) -> Topic:
    """The topic between the devices of the sites of one owner (every site lists
    the same sites)."""
    members = frozenset(rosters)
    return Topic(
        f"{PROTOCOL_PREFIX}/owner/{owner_group_id(r.site.site_id for r in members)}",
        Membership(members),
    )
