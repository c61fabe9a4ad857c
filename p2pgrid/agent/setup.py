"""What one device agent is built from: :class:`AgentSetup`, typed and validated once.

A setup comes from a scenario and a runtime file (:func:`setup_from_scenario`,
the launcher's children) or from a site file (:mod:`p2pgrid.config.setups`,
``p2pgrid agent run``); :func:`p2pgrid.agent.gateway.run_gateway` assembles
the agents of one or more setups the same way for both.
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
from p2pgrid.provision import provisioned_membership
from p2pgrid.runtime import Runtime
from p2pgrid.scenario import DeviceSpec, Scenario, Timing


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

    Built from a scenario and a runtime file (:func:`setup_from_scenario`, the
    launcher's children) or from a site file (:mod:`p2pgrid.config`, ``p2pgrid
    agent run``); :func:`p2pgrid.agent.gateway.run_gateway` assembles the agent
    the same way for both.
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
    #: runs, and read again on SIGHUP (None: the launcher's fixed provisioning).
    entries_file: Path | None = None
    #: A light device's site node (None: the device has its own lnd).
    site_node: SiteNodeSpec | None = None

    @property
    def name(self) -> str:
        return self.device.name


def setup_from_scenario(scenario: Scenario, runtime: Runtime, name: str) -> AgentSetup:
    """The setup of device ``name`` of a launcher's run (demo keys from the scenario)."""
    site, device = scenario.site_of(name)
    return AgentSetup(
        site_name=site.name,
        identity=site.identity,
        device=device,
        signer=site.device_signer(device.index),
        timing=scenario.timing,
        tariff=scenario.tariff,
        runtime=runtime,
        provision=tuple(bytes.fromhex(h) for h in runtime.provision.get(site.name, [])),
        peer_sites=tuple(
            PeerSite(s.name, provisioned_membership(s, runtime.provision.get(s.name, [])))
            for s in scenario.sites
            if s != site
        ),
        parties={
            d.name: Party(s.identity.site_id, d.index) for s in scenario.sites for d in s.devices
        },
        config=scenario.agent,
    )
