"""A light device killed (SIGKILL) between its internal transfer and its log entry,
on the session's real lnd (dev-a as the site node) with real SQLite files.

Two devices of one site are light on dev-a (:mod:`p2pgrid.agent.sitewallet`).
Device 1 asks for a share and makes its invoice on the site node; device 0 pays
it in a child process (this module run as a program) whose paymaster is
:class:`p2pgrid.testing.crash.DyingPaymaster`: it records the intent, makes the
internal transfer (the invoice cancelled on the node, its preimage taken) and
SIGKILLs itself once its wallet lists the transfer, before the ``share`` entry.
Then, on the same files and node, a new wallet and paymaster start as a
restarted agent does: the open intent resolves as never sent (lnd has no
payment of that hash), nothing is logged, the invoice stays CANCELED so it can
never be paid (a second try is refused), no sat moved on dev-a, and the node
reconciles with the log to the msat (:func:`p2pgrid.reconcile.reconcile`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p2pgrid.agent.intents import IntentBook, IntentState, Purpose, PurposeKind
from p2pgrid.agent.payguard import share_memo
from p2pgrid.agent.paymaster import Paymaster, PayRefused
from p2pgrid.agent.sitewallet import SiteNode
from p2pgrid.ledger import Author, LogStore, LogWriter, Share
from p2pgrid.lightning import InvoiceState, LndClient, LndEndpoint
from p2pgrid.market import Party
from p2pgrid.reconcile import reconcile, site_members, snapshot
from p2pgrid.regtest import Stack
from p2pgrid.testing.crash import DyingPaymaster
from tests.ledger.ledger_factory import Site

SEED = b"light transfer kill site"
PERIOD = 1
SHARE_MSAT = 20_000
FEE_LIMIT_MSAT = 10_000
#: How long the dying child may take to start, pay and die.
CHILD_WAIT_S = 120.0


@dataclass
class Payer:
    """Device 0's files and its wallet on the site node, as its agent opens them."""

    site_id: str
    store: LogStore
    intents: IntentBook
    site_node: SiteNode
    writer: LogWriter

    @classmethod
    async def open(cls, tmp: Path, node: LndClient, pubkey: str) -> Payer:
        site = Site.make(SEED)
        store = await site.open(tmp / "dev0.db", "dev0")
        intents = await IntentBook.open(tmp / "dev0.intents.db", name="dev0")
        site_id = site.identity.site_id
        light = {Party(site_id, 0), Party(site_id, 1)}
        writer = LogWriter(store, site.device(0), Author.device(0))
        return cls(site_id, store, intents, SiteNode(node, pubkey, light, name="site"), writer)

    def party(self, index: int) -> Party:
        return Party(self.site_id, index)

    async def close(self) -> None:
        await self.intents.close()
        await self.store.close()


def purpose() -> Purpose:
    return Purpose(PurposeKind.SHARE, SHARE_MSAT, device=1)


async def _pay_and_die(args: dict[str, str]) -> None:
    """The child: device 0 pays ``args['bolt11']`` and dies in the middle."""
    endpoint = LndEndpoint(
        args["name"],
        args["rest_host"],
        int(args["rest_port"]),
        Path(args["tls_cert"]),
        Path(args["macaroon"]),
    )
    async with LndClient(endpoint) as node:
        payer = await Payer.open(Path(args["tmp"]), node, args["pubkey"])
        paymaster = DyingPaymaster(
            at=(PurposeKind.SHARE, PERIOD),
            node=payer.site_node.wallet(payer.party(0)),
            writer=payer.writer,
            intents=payer.intents,
            name="dev0",
        )
        await paymaster.pay(
            args["bolt11"],
            args["payment_hash"],
            period=PERIOD,
            purpose=purpose(),
            fee_limit_msat=FEE_LIMIT_MSAT,
        )
    raise AssertionError("the paymaster did not die")


@pytest.fixture
async def site_node(stack: Stack) -> AsyncIterator[tuple[LndClient, str]]:
    async with stack.client("dev-a") as node:
        yield node, (await node.get_info()).pubkey


async def test_a_light_device_killed_between_its_transfer_and_its_entry_moves_nothing(
    stack: Stack, site_node: tuple[LndClient, str], tmp_path: Path
) -> None:
    node, pubkey = site_node
    before = await snapshot("dev-a", node)
    payer = await Payer.open(tmp_path, node, pubkey)
    try:
        payee = payer.site_node.wallet(payer.party(1))
        memo = share_memo(secrets.token_bytes(32), payer.party(1), payer.party(0), SHARE_MSAT)
        invoice = await payee.add_invoice(SHARE_MSAT, memo, expiry_s=600)
    finally:
        await payer.close()  # the child opens the files as the payer's agent
    endpoint = stack.endpoint("dev-a")
    args = {
        "tmp": str(tmp_path),
        "name": endpoint.name,
        "rest_host": endpoint.rest_host,
        "rest_port": str(endpoint.rest_port),
        "tls_cert": str(endpoint.tls_cert),
        "macaroon": str(endpoint.macaroon),
        "pubkey": pubkey,
        "bolt11": invoice.payment_request,
        "payment_hash": invoice.payment_hash,
    }
    log = tmp_path / "dev0.log"
    with log.open("wb") as out:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, json.dumps(args), stdout=out, stderr=out
        )
        async with asyncio.timeout(CHILD_WAIT_S):
            code = await child.wait()
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
    assert "is with lnd, not in the log" in log.read_text()
    # What the kill left: the invoice cancelled (the transfer made), the intent open.
    assert (await node.lookup_invoice(invoice.payment_hash)).state is InvoiceState.CANCELED

    restarted = await Payer.open(tmp_path, node, pubkey)
    try:
        [open_intent] = await restarted.intents.open_intents()
        assert open_intent.payment_hash == invoice.payment_hash
        wallet = restarted.site_node.wallet(restarted.party(0))
        paymaster = Paymaster(
            node=wallet, writer=restarted.writer, intents=restarted.intents, name="dev0"
        )
        [resolved] = await paymaster.recover()
        assert resolved.state is IntentState.FAILED, resolved
        with pytest.raises(PayRefused):  # the cancelled invoice cannot be paid again
            await paymaster.pay(
                invoice.payment_request,
                invoice.payment_hash,
                period=PERIOD,
                purpose=purpose(),
                fee_limit_msat=FEE_LIMIT_MSAT,
            )
        entries = await restarted.store.entries()
        assert [e for e in entries if isinstance(e.body, Share)] == []
        after = await snapshot("dev-a", node)
        assert invoice.payment_hash not in {p.payment_hash for p in after.payments}
        assert after.local_msat == before.local_msat  # no sat moved
        site_hash = restarted.store.membership.site_hash
        checked = reconcile(
            before={"dev-a": before},
            after={"dev-a": after},
            logs={site_hash: entries},
            members=site_members(site_hash, {0: "dev-a", 1: "dev-a"}, utility="utility"),
            routers=[],
        )
        assert checked.ok, str(checked)
    finally:
        await restarted.close()


if __name__ == "__main__":
    asyncio.run(_pay_and_die(json.loads(sys.argv[1])))
