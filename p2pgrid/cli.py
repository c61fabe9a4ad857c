"""The ``p2pgrid`` command. ``asyncio.run`` happens here, once."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from rich.console import Console
from rich.table import Table

from p2pgrid.errors import P2PGridError
from p2pgrid.regtest import DEFAULT_TOPOLOGY, Stack, StackConfig, ensure_daemons

DEMO_FEE_LIMIT_MSAT = 50_000
DEMO_BILL_MSAT = 12_500_000  # 12,500 sat: one device's bill for a period


async def _balances(stack: Stack) -> dict[str, int]:
    out = {}
    for node in stack.config.topology.nodes:
        async with stack.client(node.name) as client:
            out[node.name] = (await client.channel_balance()).local_msat
    return out


async def demo(console: Console, keep: bool) -> None:
    """Bring up a regtest stack and settle real payments over Lightning."""
    daemons = await ensure_daemons(console=console)
    stack = Stack(StackConfig(name="demo", topology=DEFAULT_TOPOLOGY), daemons, console=console)
    await stack.up()
    try:
        before = await _balances(stack)
        async with stack.client("utility") as utility:
            for device in ("dev-a", "dev-b", "dev-c"):
                invoice = await utility.add_invoice(DEMO_BILL_MSAT, f"{device} period 1")
                async with stack.client(device) as client:
                    paid = await client.pay_invoice(
                        invoice.payment_request, fee_limit_msat=DEMO_FEE_LIMIT_MSAT
                    )
                console.print(
                    f"{device} paid the utility's invoice {paid.payment_hash[:12]}...: "
                    f"{paid.value_msat // 1000} sat"
                )
        async with stack.client("dev-b") as dev_b, stack.client("dev-a") as dev_a:
            share = await dev_b.add_invoice(3_000_000, "budget share dev-a -> dev-b")
            paid = await dev_a.pay_invoice(
                share.payment_request, fee_limit_msat=DEMO_FEE_LIMIT_MSAT
            )
            console.print(
                f"dev-a shared {paid.value_msat // 1000} sat with dev-b through the utility "
                f"(routing fee {paid.fee_msat} msat)"
            )
        await stack.wait_settled()
        after = await _balances(stack)
        table = Table(title="Channel balances (msat)")
        for column in ("node", "before", "after", "change"):
            table.add_column(column, justify="right" if column != "node" else "left")
        for name, value in after.items():
            table.add_row(name, f"{before[name]:,}", f"{value:,}", f"{value - before[name]:+,}")
        console.print(table)
    finally:
        if keep:
            console.print("stack [bold]demo[/] left running: stop it with `regtest/down demo`")
        else:
            await stack.down()


def main() -> None:
    parser = argparse.ArgumentParser(prog="p2pgrid", description="p2pgrid device agents")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_cmd = sub.add_parser("demo", help="regtest stack + real Lightning payments")
    demo_cmd.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    console = Console()
    try:
        asyncio.run(demo(console, args.keep))
    except P2PGridError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
