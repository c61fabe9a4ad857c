"""Reports of a site's periods: a table, CSV, JSON and a picture, from a replica."""

from p2pgrid.reporting.command import ReportRequest, run_report
from p2pgrid.reporting.data import CSV_COLUMNS, SitePeriod, site_period, to_csv, to_json
from p2pgrid.reporting.figures import period_figure

__all__ = [
    "CSV_COLUMNS",
    "ReportRequest",
    "SitePeriod",
    "period_figure",
    "run_report",
    "site_period",
    "to_csv",
    "to_json",
]
