"""The utility node: per-period invoices from its replica of the sites' logs."""

from p2pgrid.utility.invoicer import (
    INVOICE_EXPIRY_S,
    MAX_INVOICE_REVISIONS,
    Collection,
    Invoicer,
    InvoiceStatus,
    UnloggedInvoiceError,
)

__all__ = [
    "INVOICE_EXPIRY_S",
    "MAX_INVOICE_REVISIONS",
    "Collection",
    "InvoiceStatus",
    "Invoicer",
    "UnloggedInvoiceError",
]
