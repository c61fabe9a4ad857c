"""p2pgrid: peer-to-peer device agents that pay for electricity in satoshis."""

from p2pgrid.errors import P2PGridError

__all__ = ["P2PGridError"]
__version__ = "0.1.0"
