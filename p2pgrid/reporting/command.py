"""``p2pgrid report``: a site's periods from a replica, for people and programs.

For each chosen period of the site it prints the device table (names, not
indexes) and writes ``<out>/<site>-p<N>.csv``, ``.json`` and ``.png`` (see
:mod:`p2pgrid.reporting.data` and :mod:`p2pgrid.reporting.figures`). The log
is read from one replica's SQLite file: by default the utility's copy in a
run's work directory, whose site files (``<site>.toml``, written by every
deployment) name the sites' keys; a work dir without the site's file is refused.
The command's logic lives here, apart from the argument parser, so it moves
with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
from pathlib import Path

from rich.console import Console

from p2pgrid.config.files import SiteFile
from p2pgrid.errors import ConfigError
from p2pgrid.identity import SiteIdentity
from p2pgrid.ledger import LogStore, Membership
from p2pgrid.report import report_table
from p2pgrid.reporting.data import site_period, to_csv, to_json
from p2pgrid.reporting.figures import period_figure
from p2pgrid.scenario import load_scenario


@dataclasses.dataclass(frozen=True)
class ReportRequest:
    scenario: Path
    site: str
    periods: tuple[int, ...] | None  # None: every period of the log
    db: Path | None  # None: the utility's replica under work_dir
    work_dir: Path
    out_dir: Path | None  # None: <work_dir>/report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="the site's name in the scenario")
    parser.add_argument("--period", type=int, action="append", help="a period (repeatable)")
    parser.add_argument("--scenario", type=Path, help="the scenario TOML (default: the demo's)")
    parser.add_argument("--work-dir", type=Path, default=Path("demo-run"), help="a run's dir")
    parser.add_argument("--db", type=Path, help="a replica's SQLite file (default: utility's)")
    parser.add_argument("--out", type=Path, help="where CSV, JSON and PNG go")


def request_from(args: argparse.Namespace) -> ReportRequest:
    # The demo's (p2pgrid.demo.DEFAULT_SCENARIO).
    default = importlib.resources.files("p2pgrid.scenarios") / "two_sites_light.toml"
    return ReportRequest(
        scenario=args.scenario or Path(str(default)),
        site=args.site,
        periods=tuple(args.period) if args.period else None,
        db=args.db,
        work_dir=args.work_dir,
        out_dir=args.out,
    )


def site_identities(request: ReportRequest) -> tuple[str, dict[str, SiteIdentity]]:
    """The utility's name and each site's identity (its own first, then the owner's
    other sites), from the site file ``<work_dir>/<site>.toml`` of the run's
    deployment: a run's keys are its own, so the scenario's seeds do not name them."""
    site_file = request.work_dir / f"{request.site}.toml"
    if not site_file.is_file():
        there = sorted(p.name for p in request.work_dir.glob("*.toml"))
        raise ConfigError(
            f"no site {request.site!r} in {request.work_dir}: no site file {site_file.name} "
            f"(TOML files there: {', '.join(there) or 'none'}); give the run's --work-dir"
        )
    model = SiteFile(site_file).model
    sites = {model.site.name: SiteIdentity.from_hex(model.site.owner_pubkey)}
    sites |= {o.name: SiteIdentity.from_hex(o.owner_pubkey) for o in model.other_sites}
    return load_scenario(request.scenario).utility.name, sites


async def run_report(console: Console, request: ReportRequest) -> list[Path]:
    """Print and write the report; returns the files written."""
    utility, identities = site_identities(request)
    site_name, identity = next(iter(identities.items()))
    db = request.db or request.work_dir / utility / f"{utility}-{site_name}.db"
    if not db.is_file():
        raise ConfigError(f"no replica at {db}: run the demo first, or give --db")
    async with await LogStore.open(db, identity, name=f"report/{site_name}") as store:
        entries = await store.entries()
        membership = store.membership
    # The owner's other sites as the utility's replicas of them enrol their members
    # (to verify shares between sites); a site without a replica here is left out.
    peer_sites: dict[bytes, Membership] = {}
    others = {name: other for name, other in identities.items() if name != site_name}
    for name, other in others.items():
        path = request.work_dir / utility / f"{utility}-{name}.db"
        if path.is_file():
            async with await LogStore.open(path, other, name="report/peer") as peer:
                peer_sites[other.site_hash] = peer.membership
    logged = sorted({e.period for e in entries})
    periods = request.periods or tuple(logged)
    missing = sorted(set(periods) - set(logged))
    if missing:
        raise ConfigError(f"no entries in period(s) {missing} of {db} (periods logged: {logged})")
    out = request.out_dir or request.work_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    tariff = load_scenario(request.scenario).tariff  # the grid fee lines of the bills
    for period in periods:
        data = site_period(
            entries,
            period,
            site=site_name,
            site_hash=membership.site_hash,
            peer_sites=peer_sites,
            peer_names={other.site_hash: name for name, other in others.items()},
            tariff=tariff,
        )
        console.print(report_table(data.report))
        for f in data.findings:
            console.print(f"  [red]{f.name}[/]: {f.reason}")
        stem = out / f"{site_name}-p{period}"
        stem.with_suffix(".csv").write_text(to_csv(data))
        stem.with_suffix(".json").write_text(to_json(data))
        written += [stem.with_suffix(".csv"), stem.with_suffix(".json")]
        written.append(period_figure(data, stem.with_suffix(".png")))
    console.print(f"written: {', '.join(str(p) for p in written)}")
    return written
