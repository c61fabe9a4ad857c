"""Device agents: settlement of the utility's invoices (trading comes with the market)."""

from p2pgrid.agent.settlement import FEE_LIMIT_MSAT, InvoiceSettler, Settlement, SettleResult

__all__ = ["FEE_LIMIT_MSAT", "InvoiceSettler", "SettleResult", "Settlement"]
