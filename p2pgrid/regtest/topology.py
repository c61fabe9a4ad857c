"""Stacks described as data: which lnd nodes, how they are funded, which channels."""

from __future__ import annotations

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


def utility_star(devices: tuple[str, ...]) -> Topology:
    """A utility and devices, each device with one channel to the utility.

    The device opens the channel and pushes ``DEVICE_PUSH_SAT`` to the utility's
    side, so the utility can forward payments *to* devices (device -> device
    payments route through it).
    """
    nodes = (NodeSpec(UTILITY), *(NodeSpec(d) for d in devices))
    channels = tuple(
        ChannelSpec(d, UTILITY, DEVICE_CHANNEL_SAT, push_sat=DEVICE_PUSH_SAT) for d in devices
    )
    return Topology(nodes=nodes, channels=channels)


DEFAULT_TOPOLOGY = utility_star(("dev-a", "dev-b", "dev-c"))
