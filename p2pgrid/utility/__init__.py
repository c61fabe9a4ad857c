"""The utility node: per-period invoices from its replica of the sites' logs."""

from p2pgrid.utility.invoicer import INVOICE_EXPIRY_S, Collection, Invoicer, InvoiceStatus

__all__ = ["INVOICE_EXPIRY_S", "Collection", "InvoiceStatus", "Invoicer"]
