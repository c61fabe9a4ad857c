"""What one device agent is built from: :class:`AgentSetup`, typed and validated once.

A setup comes from a site file (:mod:`p2pgrid.config.setups`, ``p2pgrid agent
run``; tests build their own); :func:`p2pgrid.agent.gateway.run_gateway`
assembles the agents of one or more setups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from p2pgrid.agent.config import AgentConfig
from p2pgrid.billing import FlatTariff
from p2pgrid.identity import Signer, SiteIdentity
from p2pgrid.ledger import Membership
from p2pgrid.market import Party
from p2pgrid.runtime import Runtime
from p2pgrid.scenario import DeviceSpec, Timing


@dataclasses.dataclass(frozen=True)
class PeerSite:
    """Another site of the same owner, as its provisioned enrolments make it up."""

    name: str
    membership: Membership


@dataclasses.dataclass(frozen=True)
class SiteNodeSpec:
    """The site node a light device pays and is paid through (its ``runtime.lnd``
    is that node's endpoint): its public key and the site's devices light on it."""

    pubkey: str
    light: frozenset[int]


@dataclasses.dataclass(frozen=True)
class AgentSetup:
    """Everything one device agent is built from (typed, validated once).

    Built from a site file (:mod:`p2pgrid.config`, ``p2pgrid agent run``);
    :func:`p2pgrid.agent.gateway.run_gateway` assembles the agent.
    """

    site_name: str
    identity: SiteIdentity
    device: DeviceSpec
    signer: Signer
    timing: Timing
    tariff: FlatTariff
    runtime: Runtime
    #: The owner's signed entries of this site (enrolments, allocations).
    provision: tuple[bytes, ...]
    peer_sites: tuple[PeerSite, ...] = ()
    #: Every device of the owner by name, for the ``nodes`` of ``start``.
    parties: Mapping[str, Party] = dataclasses.field(default_factory=dict)
    #: The agent's tuning (the project's defaults unless a site file's ``[agent]`` sets them).
    config: AgentConfig = dataclasses.field(default_factory=AgentConfig)
    #: The owner's entries file ``provision`` was read from: watched while the agent
    #: runs, and read again on SIGHUP (None: a test's fixed provisioning).
    entries_file: Path | None = None
    #: A light device's site node (None: the device has its own lnd).
    site_node: SiteNodeSpec | None = None

    @property
    def name(self) -> str:
        return self.device.name
