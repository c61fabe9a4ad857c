"""A node's live, read-only dashboard: a web page over its own replicas."""

from p2pgrid.dashboard.server import Dashboard, DashboardConfig
from p2pgrid.dashboard.snapshot import SiteFeed, node_snapshot, site_snapshot

__all__ = ["Dashboard", "DashboardConfig", "SiteFeed", "node_snapshot", "site_snapshot"]
