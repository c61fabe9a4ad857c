"""Device agents: their typed config and the settlement of the utility's invoices."""

from p2pgrid.agent.config import AgentConfig, EnergyConfig, SettleConfig, ShareConfig
from p2pgrid.agent.settlement import InvoiceSettler, Settlement, SettleResult

__all__ = [
    "AgentConfig",
    "EnergyConfig",
    "InvoiceSettler",
    "SettleConfig",
    "SettleResult",
    "Settlement",
    "ShareConfig",
]
