"""The Lightning layer: the ``LightningNode`` interface and its lnd REST backend."""

from p2pgrid.lightning.availability import NODE_RETRY, NodeState, NodeWatch
from p2pgrid.lightning.errors import (
    AuthError,
    InvoiceError,
    InvoiceExists,
    InvoiceExpired,
    LightningError,
    LndApiError,
    LndFilesError,
    NodeUnreachable,
    PaymentFailed,
)
from p2pgrid.lightning.lnd import LndClient, LndEndpoint
from p2pgrid.lightning.models import (
    Channel,
    ChannelBalance,
    DecodedInvoice,
    Invoice,
    InvoiceState,
    NodeInfo,
    Payment,
    PaymentStatus,
    Peer,
    PendingChannel,
    WalletBalance,
)
from p2pgrid.lightning.node import LightningNode
from p2pgrid.lightning.watched import WatchedNode

__all__ = [
    "NODE_RETRY",
    "AuthError",
    "Channel",
    "ChannelBalance",
    "DecodedInvoice",
    "Invoice",
    "InvoiceError",
    "InvoiceExists",
    "InvoiceExpired",
    "InvoiceState",
    "LightningError",
    "LightningNode",
    "LndApiError",
    "LndClient",
    "LndEndpoint",
    "LndFilesError",
    "NodeInfo",
    "NodeState",
    "NodeUnreachable",
    "NodeWatch",
    "Payment",
    "PaymentFailed",
    "PaymentStatus",
    "Peer",
    "PendingChannel",
    "WalletBalance",
    "WatchedNode",
]
