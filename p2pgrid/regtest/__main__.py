"""Operator commands for regtest stacks: ``python -m p2pgrid.regtest up|down|status|mine N``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from p2pgrid.errors import P2PGridError
from p2pgrid.regtest.build import ensure_daemons
from p2pgrid.regtest.stack import Stack, StackConfig, default_root


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regtest", description=__doc__)
    parser.add_argument("--root", type=Path, default=default_root(), help="where stacks live")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the daemons if needed and start a fresh stack")
    up.add_argument("name", nargs="?", default="default")
    up.add_argument("--port-base", type=int, default=None)
    up.add_argument(
        "--rest-host",
        default="127.0.0.1",
        help="address every lnd's REST API listens on (agents on other hosts pay through it)",
    )
    for name, text in (("down", "stop a stack's daemons"), ("status", "show a stack")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("name", nargs="?", default="default")
    mine = sub.add_parser("mine", help="mine N blocks and wait until every lnd sees them")
    mine.add_argument("blocks", type=int)
    mine.add_argument("name", nargs="?", default="default")
    sub.add_parser("build", help="only build btcd and lnd into the cache")
    return parser


async def run_command(args: argparse.Namespace, console: Console) -> int:
    """Run one parsed command (also behind `p2pgrid regtest`)."""
    daemons = await ensure_daemons(console=console)
    if args.command == "build":
        console.print(f"daemons in {daemons.bin_dir}")
        return 0
    config = StackConfig(
        name=args.name,
        root=args.root,
        port_base=getattr(args, "port_base", None),
        rest_host=getattr(args, "rest_host", "127.0.0.1"),
    )
    stack = Stack(config, daemons, console=console)
    if args.command == "up":
        await stack.up()
        print(json.dumps(stack.status(), indent=2))
    elif args.command == "down":
        await stack.down()
    elif args.command == "status":
        print(json.dumps(stack.status(), indent=2))
    elif args.command == "mine":
        hashes = await stack.mine(args.blocks)
        print(f"mined {len(hashes)} block(s); tip {hashes[-1] if hashes else '-'}")
    return 0


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(stderr=True)
    try:
        sys.exit(asyncio.run(run_command(_parser().parse_args(), console)))
    except P2PGridError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(1)


if __name__ == "__main__":
    main()
