"""Typed errors of the Lightning layer, split by what the caller should do."""

from __future__ import annotations

from p2pgrid.errors import ConfigError, P2PGridError, ReportableError, RetryableError
from p2pgrid.lightning.models import Invoice


class LightningError(P2PGridError):
    """Root of the Lightning layer's errors."""


class NodeUnreachable(LightningError, RetryableError):
    """The node did not answer (down, starting, or the call timed out)."""


class AuthError(LightningError, ReportableError):
    """The node refused our macaroon or its TLS certificate did not verify."""


class LndFilesError(AuthError, ConfigError):
    """lnd's TLS certificate or macaroon, named in the configuration, cannot be
    read or loaded: a configuration error (exit 2), not a refusal by the node."""


class LndApiError(LightningError, ReportableError):
    """The node answered the call with an error."""

    def __init__(self, message: str, *, status: int = 0, code: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class InvoiceError(LightningError, ReportableError):
    """An invoice is malformed, expired, or otherwise not payable."""


class InvoiceExists(InvoiceError):
    """An invoice of the payment hash asked for exists on the node with another
    amount or description: nothing was created. ``existing`` is that invoice
    (in any state), so the caller can decide what to do with it."""

    def __init__(self, message: str, *, existing: Invoice) -> None:
        super().__init__(message)
        self.existing = existing


class InvoiceExpired(InvoiceError):
    """The invoice's expiry has passed; nothing was sent."""


class PaymentFailed(LightningError, ReportableError):
    """The payment failed; ``reason`` is lnd's failure reason (e.g. ``NO_ROUTE``)."""

    def __init__(self, payment_hash: str, reason: str) -> None:
        super().__init__(f"payment {payment_hash[:16]}... failed: {reason}")
        self.payment_hash = payment_hash
        self.reason = reason
