"""A site split between a gateway of two light devices and a single agent, on the
real regtest stack.

The site file names three devices: two light ones (``lightning = "site"``) that
pay and are paid through the site node (``[site_lightning]``: the stack's
dev-a), and one on its own lnd (dev-c). ``p2pgrid agent run --device s1-fridge
--device s1-hvac`` runs the light two in one process (a gateway: one libp2p host,
one client of the site node); ``p2pgrid agent run --device s1-oven`` runs the
third alone; the
utility runs from its file. The owner's weights give the fridge nearly all the
budget, so the others run short and ask it to share: to the hvac, on the same
node, that is an internal transfer; to the oven it goes over Lightning. They
complete one compressed period together (four 1.5 s intervals). Asserted
afterwards, on the files and on lnd: every device logged each interval's reading
exactly once; every replica (the gateway's one, ``store-1.gateway.db`` in the
fridge's data directory, shared by its two devices; the agent's; the
utility's) holds the same entries under one digest; the utility invoiced each
device once and each invoice was paid once, for its amount (checked in lnd); a share
between the light devices moved no sat in lnd (no payment of its hash, its
invoice cancelled); lnd and the log agree to the msat (:mod:`p2pgrid.reconcile`),
and ``p2pgrid log verify --against-lnd`` of a light device checks the site node
against both light devices' entries and finds it clean.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pgrid.identity import SiteIdentity
from p2pgrid.ledger import Author, LogStore, MeterReading, Share
from p2pgrid.ledger.proof import parse_proof
from p2pgrid.lightning import InvoiceState
from p2pgrid.poll import wait_until
from p2pgrid.reconcile import reconcile, site_members, snapshot
from p2pgrid.regtest import Stack
from tests.cli.deployment import cli, deploy
from tests.regtest.nodes import EVENT_WAIT_S, Node, agree, inline

#: The site: (name, index, meter), and the lnd of the stack each device pays from.
DEVICES = (
    ("s1-fridge", 0, '{ kind = "bdew", profile = "g0", annual_kwh = 4000 }'),
    ("s1-hvac", 1, '{ kind = "bdew", profile = "g0", annual_kwh = 9000 }'),
    ("s1-oven", 2, '{ kind = "bdew", profile = "h0", annual_kwh = 3000 }'),
)
#: The lnd each device pays from: the two light ones, the site node's.
LND = {"s1-fridge": "dev-a", "s1-hvac": "dev-a", "s1-oven": "dev-c"}
SITE_NODE = "dev-a"
GATEWAY = ("s1-fridge", "s1-hvac")  # light: lightning = "site"
ALONE = "s1-oven"
INTERVALS = 4
#: The owner's split of the budget: the fridge has plenty to share.
WEIGHTS = {"s1-fridge": 100, "s1-hvac": 1, "s1-oven": 1}


def light_rows(site_node_table: str, site_node_pubkey: str) -> Callable[[str], str]:
    """The site file's change: the gateway's devices light on the site node, weights."""

    def edit(text: str) -> str:
        for name in GATEWAY:
            text = re.sub(
                rf'(name = "{name}"\n(?:.*\n)*?)lnd = \{{[^}}]*\}}\n',
                r'\1lightning = "site"\n',
                text,
            )
        for name, weight in WEIGHTS.items():
            text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nweight = {weight}\n')
        return text + (
            f'\n[site_lightning]\npubkey = "{site_node_pubkey}"\nlnd = {site_node_table}\n'
        )

    return edit


async def test_a_gateway_and_a_single_agent_share_a_site(stack: Stack, tmp_path: Path) -> None:
    nodes = ["utility", *sorted(set(LND.values()))]
    before, pubkeys = {}, {}
    for node in nodes:
        async with stack.client(node) as client:
            before[node] = await snapshot(node, client)
            pubkeys[node] = (await client.get_info()).pubkey
    # 30 s for the processes to start (under load a 20 s lead missed intervals).
    start = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    d = deploy(
        tmp_path,
        start=start.replace(microsecond=0),
        interval_s=1.5,
        intervals_per_period=INTERVALS,
        periods=1,
        devices=DEVICES,
        lnd={ALONE: inline(stack.endpoint(LND[ALONE]))},
        utility_lnd=pubkeys["utility"],
        utility_lnd_table=inline(stack.endpoint("utility")),
        site_edit=light_rows(inline(stack.endpoint(SITE_NODE)), pubkeys[SITE_NODE]),
    )
    replicas = [tmp_path / "data" / "utility" / "utility-store-1.db"]
    # The gateway's devices: one file, in the data directory of the lowest index.
    replicas += [tmp_path / "data" / GATEWAY[0] / "store-1.gateway.db"]
    replicas += [tmp_path / "data" / ALONE / f"{ALONE}.db"]
    running: list[Node] = []
    try:
        utility = await Node.start(
            ["utility", "run", "-c", str(d.utility_file)], tmp_path / "u.log"
        )
        running.append(utility)
        addrs = (await utility.expect("ready"))["addrs"]["store-1"]
        text = d.site_file.read_text()
        for name, _, _ in DEVICES:
            # The light devices are paid at the site node ([site_lightning]); the
            # lone agent's row names its own lnd node.
            known = "" if name in GATEWAY else f'lnd_pubkey = "{pubkeys[LND[name]]}"\n'
            text = text.replace(
                f'data_dir = "data/{name}"\n',
                f'data_dir = "data/{name}"\nbootstrap = {json.dumps(addrs)}\n{known}',
            )
        d.site_file.write_text(text)
        site = ["agent", "run", "-c", str(d.site_file)]
        gateway = await Node.start(
            [*site, *(f for n in GATEWAY for f in ("--device", n))], tmp_path / "gateway.log"
        )
        running.append(gateway)
        alone = await Node.start([*site, "--device", ALONE], tmp_path / "alone.log")
        running.append(alone)
        ready = {n: await gateway.expect("ready", n) for n in GATEWAY}
        ready[ALONE] = await alone.expect("ready", ALONE)
        # The gateway's two devices speak through one libp2p host, the lone agent its own.
        assert ready["s1-fridge"]["peer_id"] == ready["s1-hvac"]["peer_id"]
        assert ready[ALONE]["peer_id"] != ready["s1-fridge"]["peer_id"]
        reports = {n: (await gateway.expect("done", n))["report"] for n in GATEWAY}
        reports[ALONE] = (await alone.expect("done", ALONE))["report"]
        invoices = (await utility.expect("done"))["invoices"]
        await wait_until(agree(replicas), timeout_s=EVENT_WAIT_S, what="the replicas to agree")
        for node in running:
            assert await node.terminate() == 0, node.log.read_text()[-3000:]
        assert [(await gateway.expect("stopped", n))["name"] for n in GATEWAY] == list(GATEWAY)
    finally:
        for node in running:
            if node.proc.returncode is None:
                node.proc.kill()
                await node.proc.wait()

    assert {n: r["period_states"] for n, r in reports.items()} == {
        n: {"0": "settled"} for n, _, _ in DEVICES
    }
    identity = SiteIdentity.from_hex(d.site)
    digests, logs = set(), {}
    for replica in replicas:
        store = await LogStore.open(replica, identity, name=f"check-{replica.stem}")
        try:
            digests.add(store.digest())
            logs[replica] = await store.entries()
        finally:
            await store.close()
    assert len(digests) == 1, "the replicas disagree"
    # The gateway's devices kept no replica of their own: each entry stored once there.
    assert not [p for n in GATEWAY for p in (tmp_path / "data" / n).glob(f"{n}.db*")]
    entries = logs[replicas[0]]
    readings = Counter(
        (e.author, e.body.interval_start_ms) for e in entries if isinstance(e.body, MeterReading)
    )
    assert set(readings.values()) == {1}, "a reading logged twice"
    assert Counter(author for author, _ in readings) == {
        Author.device(i): INTERVALS for _, i, _ in DEVICES
    }
    assert sorted(i["device"] for i in invoices) == [0, 1, 2]
    after = {}
    for node in nodes:
        async with stack.client(node) as client:
            after[node] = await snapshot(node, client)
    for invoice in invoices:
        [paid] = [i for i in after["utility"].invoices if i.payment_hash == invoice["payment_hash"]]
        assert paid.state is InvoiceState.SETTLED
        assert paid.amt_paid_msat == invoice["amount_msat"] > 0
    money = reconcile(
        before=before,
        after=after,
        logs={identity.site_hash: entries},
        members=site_members(
            identity.site_hash, {i: LND[n] for n, i, _ in DEVICES}, utility="utility"
        ),
        routers=["utility"],
    )
    assert money.ok, str(money)
    assert money.payments >= len(DEVICES)  # the three invoices at least, each paid once
    light = {Author.device(i) for n, i, _ in DEVICES if n in GATEWAY}
    internal = [
        e.body
        for e in entries
        if isinstance(e.body, Share)
        and e.author in light
        and Author.device(e.body.to_device) in light
    ]
    assert internal, "no share between the light devices"
    site_node = after[SITE_NODE]
    for share in internal:
        proof = parse_proof(share.memo)
        assert proof is not None
        assert proof.fee_msat == 0
        assert proof.payment_hash.hex() not in {p.payment_hash for p in site_node.payments}
        [invoice] = [i for i in site_node.invoices if i.payment_hash == proof.payment_hash.hex()]
        assert invoice.state is InvoiceState.CANCELED
    verify = ("log", "verify", str(replicas[1]), "-c", str(d.site_file))
    # The command runs its own event loop: in a thread, off this test's.
    checked = await asyncio.to_thread(cli, *verify, "--against-lnd", GATEWAY[1])
    assert checked.exit_code == 0, checked.output
    assert "lnd agrees" in checked.output, checked.output


pytestmark = pytest.mark.timeout(600)
