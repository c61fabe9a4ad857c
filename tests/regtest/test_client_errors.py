"""The lnd client's typed errors, against the real daemons."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest

from p2pgrid.backoff import Backoff
from p2pgrid.lightning import (
    AuthError,
    InvoiceError,
    LndClient,
    NodeState,
    NodeUnreachable,
    NodeWatch,
)
from p2pgrid.regtest import Stack, process
from p2pgrid.testing.ports import free_port


async def test_wrong_macaroon_is_an_auth_error(stack: Stack) -> None:
    other = stack.endpoint("dev-a")
    endpoint = dataclasses.replace(stack.endpoint("utility"), macaroon=other.macaroon)
    async with LndClient(endpoint) as client:
        with pytest.raises(AuthError):
            await client.get_info()


async def test_tls_is_verified_against_the_nodes_own_cert(stack: Stack) -> None:
    other = stack.endpoint("dev-a")
    endpoint = dataclasses.replace(stack.endpoint("utility"), tls_cert=other.tls_cert)
    async with LndClient(endpoint) as client:
        with pytest.raises(AuthError, match="TLS"):
            await client.get_info()


async def test_node_that_does_not_answer_is_unreachable(stack: Stack) -> None:
    endpoint = dataclasses.replace(stack.endpoint("utility"), rest_port=free_port())
    async with LndClient(endpoint) as client:
        with pytest.raises(NodeUnreachable):
            await client.get_info()


async def test_missing_macaroon_file_is_an_auth_error(stack: Stack, tmp_path: object) -> None:
    endpoint = dataclasses.replace(stack.endpoint("utility"), macaroon=stack.config.dir / "nope")
    with pytest.raises(AuthError, match="macaroon"):
        async with LndClient(endpoint):
            pass


async def test_malformed_invoice_is_an_invoice_error(stack: Stack) -> None:
    async with stack.client("dev-a") as client:
        with pytest.raises(InvoiceError):
            await client.pay_invoice("lnbcrt1notaninvoice", fee_limit_msat=1000)


#: Strings a peer once sent as a bolt11: a path walk to another endpoint, control
#: characters (httpx.InvalidURL), a query, mixed case, and a length lnd never decodes.
HOSTILE_BOLT11 = [
    "../getinfo",
    "..%2fgetinfo",
    "lnbcrt1\r\nGET /v1/getinfo",
    "\x00lnbcrt1",
    "lnbcrt1" + "q" * 110 + "?x=1",
    "lnbcrt1" + "q" * 110 + "/../../getinfo",
    "LNbcrt1" + "q" * 110,
    "lnbcrt1" + "q" * 8000,
    "",
]


@pytest.mark.parametrize("bolt11", HOSTILE_BOLT11)
async def test_hostile_bolt11_is_an_invoice_error_and_reaches_no_endpoint(
    stack: Stack, bolt11: str
) -> None:
    async with stack.client("dev-a") as client:
        with pytest.raises(InvoiceError):
            await client.decode_invoice(bolt11)
        with pytest.raises(InvoiceError):
            await client.pay_invoice(bolt11, fee_limit_msat=1000)


async def test_well_formed_bolt11_with_a_bad_checksum_is_refused_by_lnd(stack: Stack) -> None:
    async with stack.client("dev-a") as client:
        invoice = await client.add_invoice(1000, "checksum")
        good = invoice.payment_request
        assert (await client.decode_invoice(good.upper())).amount_msat == 1000
        flipped = good[:-1] + ("q" if good[-1] != "q" else "p")
        with pytest.raises(InvoiceError, match="cannot decode"):
            await client.decode_invoice(flipped)
        with pytest.raises(InvoiceError):
            await client.lookup_invoice("../getinfo")


async def test_a_paused_lnd_is_unreachable_within_the_deadline_and_back_after(
    stack: Stack,
) -> None:
    # SIGSTOP: the kernel still accepts TCP connections, lnd never answers; only a
    # deadline on the whole call ends it.
    (pid,) = [
        p.pid
        for p in process.find(stack.config.dir)
        if f"{stack.lnd_config('dev-b').lnd_dir}" in p.cmdline
    ]
    watch = NodeWatch("dev-b", backoff=Backoff(initial_s=0.05, max_s=0.2))
    async with LndClient(stack.endpoint("dev-b"), call_timeout_s=1.0) as client:
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(NodeUnreachable, match=r"no answer in 1\.0s"):
                await client.get_info()
            with pytest.raises(NodeUnreachable):
                await watch.call(client.get_info, what="get_info", deadline_s=1.5)
            assert watch.state is NodeState.AWAY
        finally:
            os.kill(pid, signal.SIGCONT)
        info = await watch.call(client.get_info, what="get_info", deadline_s=30)
    assert info.pubkey
    assert watch.state is NodeState.UP
    assert watch.outages == 1
