"""Regtest stacks: build btcd/lnd, run btcd + lnd nodes, fund them, open channels."""

from p2pgrid.regtest.build import BuildError, Daemons, ensure_daemons
from p2pgrid.regtest.stack import Stack, StackBusy, StackConfig, StackError
from p2pgrid.regtest.topology import (
    DEFAULT_TOPOLOGY,
    ChannelSpec,
    NodeSpec,
    Topology,
    utility_star,
)

__all__ = [
    "DEFAULT_TOPOLOGY",
    "BuildError",
    "ChannelSpec",
    "Daemons",
    "NodeSpec",
    "Stack",
    "StackBusy",
    "StackConfig",
    "StackError",
    "Topology",
    "ensure_daemons",
    "utility_star",
]
