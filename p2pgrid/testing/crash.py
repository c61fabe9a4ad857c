"""Processes that kill themselves (SIGKILL) at a chosen point, for restart tests.

A kill from outside lands where the clock happens to be; these land exactly in
the window a test is about (the launcher then starts the product's program again
on the same files, :meth:`p2pgrid.launcher.Running.restart`):

``python -m p2pgrid.testing.crash --config utility.toml [--control] --after-invoices SITE:PERIOD:N``
    ``p2pgrid utility run`` (the same setup from the same file) whose invoicer of site
    ``SITE`` creates its ``N``-th invoice of ``PERIOD`` on lnd and dies before
    that invoice is in its log (``N - 1`` are: mid-invoicing, with one invoice on
    lnd that no entry records).

``python -m p2pgrid.testing.crash -c site.toml --device D [--control] --mid-payment KIND:PERIOD``
    ``p2pgrid agent run`` (the same setup from the same file) that, on its first payment of
    ``KIND`` (``invoice``, ``share``, ``sale``, ``site_share``) for ``PERIOD``,
    records its intent, hands the payment to lnd, waits until lnd lists it (in
    flight or done) and dies before anything is logged.

``python -m p2pgrid.testing.crash -c site.toml --device D [--control] --before-entry KIND:PERIOD``
    ``p2pgrid agent run`` that dies instead of writing its first entry of ``KIND``
    (an entry kind's name, e.g. ``allowance_sale``) of ``PERIOD`` through its
    paymaster's writer: a seller whose invoice the buyer paid (settled on its lnd)
    dies before its sale is in its log.

The option says which process it is (the launcher runs it in place of the
product's command on the same file, with the same ``--control`` and
``--await-start``: :class:`p2pgrid.launcher.UtilityCommand`,
:class:`~p2pgrid.launcher.AgentCommand`, :func:`~p2pgrid.launcher.run_deployment`).
Nothing here is imported by the product.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from p2pgrid.agent.gateway import PaymasterFactory
from p2pgrid.agent.intents import Purpose, PurposeKind
from p2pgrid.agent.paymaster import Announce, Paid, Paymaster
from p2pgrid.agent.ports import Wallet
from p2pgrid.agent.process import run_device
from p2pgrid.agent.process import setup_logging as agent_logging
from p2pgrid.config import (
    SiteFile,
    UtilityFile,
    agent_setup,
    agent_start,
    node_commands,
    utility_setup,
    utility_start,
)
from p2pgrid.ledger import Body, Entry, EntryKind, Invoice, LogWriter
from p2pgrid.lightning import DecodedInvoice, Payment
from p2pgrid.lightning import Invoice as LnInvoice
from p2pgrid.poll import wait_until
from p2pgrid.service import run_process
from p2pgrid.utility import Invoicer
from p2pgrid.utility.process import run_utility
from p2pgrid.utility.process import setup_logging as utility_logging

log = logging.getLogger(__name__)

#: How long the dying agent waits for lnd to list the payment it handed over.
PAYMENT_LISTED_S = 30.0


def die(why: str) -> NoReturn:
    """SIGKILL this process: no cleanup, no flush but the log line before it."""
    log.warning("TEST: killing this process (SIGKILL): %s", why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: SIGKILL did not kill")  # pragma: no cover


# -- utility: dies mid-invoicing --------------------------------------------------


class _DyingWriter(LogWriter):
    """The invoicer's writer: dies instead of logging the ``n``-th invoice of ``period``."""

    def __init__(self, writer: LogWriter, *, period: int, n: int) -> None:
        super().__init__(writer.store, writer.signer, writer.author)
        self.period = period
        self.n = n
        self.seen = 0

    async def append(self, body: Body, *, period: int, timestamp_ms: int) -> Entry:
        if isinstance(body, Invoice) and period == self.period:
            self.seen += 1
            if self.seen == self.n:
                die(f"invoice {self.n} of period {period} is on lnd, not in the log")
        return await super().append(body, period=period, timestamp_ms=timestamp_ms)


class DyingInvoicer(Invoicer):
    """An :class:`Invoicer` that dies before logging the ``n``-th invoice of ``period``
    when it invoices site ``site_id`` (other sites' invoicers are honest)."""

    def __init__(self, *, at: tuple[str, int, int], **invoicer: Any) -> None:
        super().__init__(**invoicer)
        site_id, period, n = at
        if self.site.site_id == site_id:
            self.writer = _DyingWriter(self.writer, period=period, n=n)


# -- agent: dies before an entry ---------------------------------------------------


class _DyingBeforeEntry(LogWriter):
    """A device's writer (its lock shared: one chain) that dies instead of
    writing its first entry of ``kind`` of ``period``."""

    def __init__(self, writer: LogWriter, *, kind: EntryKind, period: int) -> None:
        super().__init__(writer.store, writer.signer, writer.author)
        self._lock = writer._lock
        self.kind = kind
        self.period = period

    async def append(self, body: Body, *, period: int, timestamp_ms: int) -> Entry:
        if self.kind == body.KIND and period == self.period:
            die(f"{self.kind.name.lower()} of period {period} is not in the log")
        return await super().append(body, period=period, timestamp_ms=timestamp_ms)


def dying_before_entry(
    *, at: tuple[EntryKind, int], writer: LogWriter, **paymaster: Any
) -> Paymaster:
    """A :class:`Paymaster` whose writer (the one the allowance desk logs its sales
    with) dies before the first entry of kind ``at[0]`` of period ``at[1]``."""
    kind, period = at
    return Paymaster(writer=_DyingBeforeEntry(writer, kind=kind, period=period), **paymaster)


# -- agent: dies mid-payment ------------------------------------------------------


class _DyingWallet:
    """``node`` that, for the armed payment hash, hands the payment to lnd, waits
    until lnd lists it and dies."""

    def __init__(self, node: Wallet) -> None:
        self.node = node
        self.armed = ""  # the payment hash to die on

    async def pay_invoice(
        self, payment_request: str, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment:
        if not self.armed:
            return await self.node.pay_invoice(
                payment_request, fee_limit_msat=fee_limit_msat, timeout_s=timeout_s
            )
        armed = self.armed

        async def listed() -> bool:
            return any(p.payment_hash == armed for p in await self.node.list_payments())

        async with asyncio.TaskGroup() as paying:
            paying.create_task(
                self.node.pay_invoice(
                    payment_request, fee_limit_msat=fee_limit_msat, timeout_s=timeout_s
                )
            )
            await wait_until(listed, timeout_s=PAYMENT_LISTED_S, what="lnd to list the payment")
            die(f"payment {armed[:16]} is with lnd, not in the log")

    async def add_invoice(
        self,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        private: bool = False,
        preimage: bytes | None = None,
    ) -> LnInvoice:
        return await self.node.add_invoice(
            amount_msat, memo, expiry_s=expiry_s, private=private, preimage=preimage
        )

    async def decode_invoice(self, payment_request: str) -> DecodedInvoice:
        return await self.node.decode_invoice(payment_request)

    async def lookup_invoice(self, payment_hash: str) -> LnInvoice:
        return await self.node.lookup_invoice(payment_hash)

    async def cancel_invoice(self, payment_hash: str) -> None:
        await self.node.cancel_invoice(payment_hash)

    async def add_hold_invoice(
        self,
        payment_hash: str,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        cltv_expiry: int = 80,
        private: bool = False,
    ) -> LnInvoice:
        return await self.node.add_hold_invoice(
            payment_hash,
            amount_msat,
            memo,
            expiry_s=expiry_s,
            cltv_expiry=cltv_expiry,
            private=private,
        )

    async def settle_invoice(self, preimage: bytes) -> None:
        await self.node.settle_invoice(preimage)

    async def track_payment(self, payment_hash: str) -> Payment:
        return await self.node.track_payment(payment_hash)

    async def list_payments(self) -> list[Payment]:
        return await self.node.list_payments()


class DyingPaymaster(Paymaster):
    """A :class:`Paymaster` that dies in the middle of its first payment of ``kind``
    for ``period`` (intent recorded, payment with lnd, nothing logged)."""

    def __init__(self, *, at: tuple[PurposeKind, int], node: Wallet, **paymaster: Any) -> None:
        self._wallet = _DyingWallet(node)
        super().__init__(node=self._wallet, **paymaster)
        self.at = at

    async def pay(
        self,
        bolt11: str,
        payment_hash: str,
        *,
        period: int,
        purpose: Purpose,
        fee_limit_msat: int,
        announce: Announce | None = None,
    ) -> Paid:
        if (purpose.kind, period) == self.at:
            self._wallet.armed = payment_hash
        return await super().pay(bolt11, payment_hash, period=period, purpose=purpose,
                                 fee_limit_msat=fee_limit_msat, announce=announce)  # fmt: skip


# -- command line -----------------------------------------------------------------


def _triple(text: str) -> tuple[str, int, int]:
    try:
        site, period, n = text.rsplit(":", 2)
        return site, int(period), int(n)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"want SITE:PERIOD:N, got {text!r}") from exc


def _pair(text: str) -> tuple[PurposeKind, int]:
    try:
        kind, period = text.rsplit(":", 1)
        return PurposeKind(kind), int(period)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"want KIND:PERIOD, got {text!r}") from exc


def _entry_at(text: str) -> tuple[EntryKind, int]:
    try:
        kind, period = text.rsplit(":", 1)
        return EntryKind[kind.upper()], int(period)
    except (ValueError, KeyError) as exc:
        raise argparse.ArgumentTypeError(f"want ENTRY_KIND:PERIOD, got {text!r}") from exc


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    program = "python -m p2pgrid.testing.crash"
    parser = argparse.ArgumentParser(prog=program)
    parser.add_argument("--config", "-c", type=Path, required=True, help="a site/utility file")
    parser.add_argument("--device", help="the device of the site file (the agent)")
    parser.add_argument("--control", action="store_true", help="as `... run --control`")
    parser.add_argument("--await-start", action="store_true", help="as `... run --await-start`")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--after-invoices", type=_triple)
    which.add_argument("--mid-payment", type=_pair)
    which.add_argument("--before-entry", type=_entry_at)
    parsed = parser.parse_args(args)
    if parsed.after_invoices is not None:
        utility_logging()
        commands = (parsed.control, parsed.await_start)
        run_process(_dying_utility(parsed.config, commands, parsed.after_invoices))
    elif parsed.device is None:
        parser.error("--mid-payment and --before-entry need --device")
    else:
        agent_logging()
        commands = (parsed.control, parsed.await_start)
        if parsed.mid_payment is not None:
            pay: PaymasterFactory = functools.partial(DyingPaymaster, at=parsed.mid_payment)
        else:
            pay = functools.partial(dying_before_entry, at=parsed.before_entry)
        run_process(_dying_agent(parsed.config, parsed.device, commands, pay))


async def _dying_utility(
    config: Path, commands: tuple[bool, bool], at: tuple[str, int, int]
) -> None:
    """``p2pgrid utility run --config CONFIG`` whose invoicer dies ``at`` (SITE:PERIOD:N)."""
    utility_file = UtilityFile(config)
    setup = utility_setup(utility_file)
    site_ids = {s.name: s.identity.site_id for s in setup.sites}
    site, period, n = at
    make = functools.partial(DyingInvoicer, at=(site_ids[site], period, n))
    start = utility_start(utility_file)
    await run_utility(setup, make_invoicer=make, source=lambda: node_commands(start, *commands))


async def _dying_agent(
    config: Path, device: str, commands: tuple[bool, bool], pay: PaymasterFactory
) -> None:
    """``p2pgrid agent run --config CONFIG --device DEVICE`` whose paymaster dies."""
    site_file = SiteFile(config)
    setup, start = agent_setup(site_file, device), agent_start(site_file)
    await run_device(setup, lambda: node_commands(start, *commands), make_paymaster=pay)


if __name__ == "__main__":
    main()
