"""Stacks described as data: which lnd nodes, how they are funded, which channels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from p2pgrid.errors import ConfigError


@dataclass(frozen=True)
class NodeSpec:
    """One lnd node; ``fund_sat`` goes to its on-chain wallet, in ``utxos`` outputs."""

    name: str
    fund_sat: int = 20_000_000
    utxos: int = 3


@dataclass(frozen=True)
class ChannelSpec:
    """A channel ``opener`` -> ``peer``. ``push_sat`` starts on the peer's side.

    Channels are public by default: the utility is a routing node, and lnd only
    adds route hints for private channels whose peer is public, so device ->
    device payments find their route through the announced graph.
    """

    opener: str
    peer: str
    capacity_sat: int
    push_sat: int = 0
    private: bool = False


@dataclass(frozen=True)
class Topology:
    nodes: tuple[NodeSpec, ...]
    channels: tuple[ChannelSpec, ...] = ()

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ConfigError(f"node names must be unique: {names}")
        for ch in self.channels:
            if ch.opener not in names or ch.peer not in names:
                raise ConfigError(f"channel {ch.opener}->{ch.peer} names an unknown node")
            if not 0 <= ch.push_sat < ch.capacity_sat:
                raise ConfigError(f"channel {ch.opener}->{ch.peer}: push must be < capacity")
        for node in self.nodes:
            opened = sum(ch.capacity_sat for ch in self.channels if ch.opener == node.name)
            if opened >= node.fund_sat:
                raise ConfigError(
                    f"{node.name} opens {opened} sat of channels with {node.fund_sat}"
                )

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError(f"no node named {name!r} in the topology")


UTILITY = "utility"
DEVICE_CHANNEL_SAT = 5_000_000
DEVICE_PUSH_SAT = 2_000_000
#: lnd's largest channel without ``--protocol.wumbo-channels``: 2^24 - 1 sat.
MAX_CHANNEL_SAT = 16_777_215


def utility_star(devices: Sequence[str], site_nodes: Mapping[str, int] | None = None) -> Topology:
    """A utility and devices, each device with one channel to the utility; and
    site nodes (``site_nodes``: each one's name and how many light devices pay
    through it), each with one channel to the utility sized for all of them.

    A device opens its channel of ``DEVICE_CHANNEL_SAT`` and pushes
    ``DEVICE_PUSH_SAT`` to the utility's side, so the utility can forward
    payments *to* devices (device -> device payments route through it). A site
    node of ``n`` light devices opens ``n`` times that channel and push (its
    light devices' bills, shares and sales all leave or reach it), at most
    :data:`MAX_CHANNEL_SAT`, funded to open it.
    """
    site_nodes = site_nodes or {}
    twice = sorted({d for d in devices if list(devices).count(d) > 1})
    if twice:
        raise ConfigError(f"a device named twice: {twice}")
    clash = sorted(set(devices) & set(site_nodes))
    if clash:
        raise ConfigError(f"a site node named as a device: {clash}")
    loads = {**dict.fromkeys(devices, 1), **site_nodes}
    nodes, channels = [NodeSpec(UTILITY)], []
    for name, light in loads.items():
        if light < 1:
            raise ConfigError(f"site node {name!r} pays for {light} devices: at least one")
        capacity = min(DEVICE_CHANNEL_SAT * light, MAX_CHANNEL_SAT)
        push = capacity * DEVICE_PUSH_SAT // DEVICE_CHANNEL_SAT
        fund = max(NodeSpec.fund_sat, capacity + NodeSpec.fund_sat // 2)
        nodes.append(NodeSpec(name, fund_sat=fund))
        channels.append(ChannelSpec(name, UTILITY, capacity, push_sat=push))
    return Topology(nodes=tuple(nodes), channels=tuple(channels))


DEFAULT_TOPOLOGY = utility_star(("dev-a", "dev-b", "dev-c"))
