"""The ``p2pgrid`` command. ``asyncio.run`` happens here, once."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from p2pgrid.demo import run_demo
from p2pgrid.errors import P2PGridError
from p2pgrid.reporting import command as report_command


def main() -> None:
    parser = argparse.ArgumentParser(prog="p2pgrid", description="p2pgrid device agents")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_cmd = sub.add_parser("demo", help="regtest stack, utility and device agents trading")
    demo_cmd.add_argument("--keep", action="store_true", help="leave the stack running")
    demo_cmd.add_argument("--scenario", type=Path, help="a scenario TOML (default: two sites)")
    demo_cmd.add_argument(
        "--work-dir", type=Path, default=Path("demo-run"), help="logs, databases, report PNGs"
    )
    report_cmd = sub.add_parser("report", help="a site's periods: table, CSV, JSON, PNG")
    report_command.add_arguments(report_cmd)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    console = Console(width=None if sys.stdout.isatty() else 160)  # tables whole in logs
    try:
        if args.command == "report":
            asyncio.run(report_command.run_report(console, report_command.request_from(args)))
        else:
            asyncio.run(
                run_demo(
                    console, scenario_path=args.scenario, work_dir=args.work_dir, keep=args.keep
                )
            )
    except P2PGridError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")  # names may hold "[/x]"
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
