"""A site deployed and run the way an operator does it, on the real regtest stack.

Keys, enrolments and allocations come from ``p2pgrid utility init``, ``site
init``, ``device add`` and ``site allocate``; then ``p2pgrid utility run`` and
two ``p2pgrid agent run`` processes start from the files alone (a compressed
clock: one period of four 1.5 s intervals), each on its own lnd of the stack.
While they run, the owner allocates the next period with ``p2pgrid site
allocate`` into the site's entries file (the agents' copy; the utility's is
another file, left as it was) and one agent gets a SIGHUP: the allocations
reach the utility's replica by replication, nobody restarted. Once each agent
reports its period settled and every replica holds the same entries, SIGTERM
stops every process cleanly (exit 0). Asserted against lnd and the replicas: every
invoice the utility issued is settled in its lnd for the full amount, and
``p2pgrid log verify`` finds every replica clean with one digest and, with
``--against-lnd`` / ``--against-utility-lnd``, each node's lnd in agreement with
its replica (and a device's payments looked for on another's lnd: exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import shutil
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from p2pgrid.config import read_entries
from p2pgrid.identity import SiteIdentity
from p2pgrid.lightning import InvoiceState
from p2pgrid.poll import wait_until
from p2pgrid.regtest import Stack
from p2pgrid.service import EXIT_FAILED
from tests.cli.deployment import DEVICES, deploy, ok_json
from tests.regtest.nodes import EVENT_WAIT_S, Node, agree, inline

#: Which lnd of the session stack each device of the test site runs on.
LND = {"s1-fridge": "dev-a", "s1-hvac": "dev-b"}


def _holds(replica: Path, ids: set[bytes]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        with contextlib.closing(sqlite3.connect(f"file:{replica}?mode=ro", uri=True)) as db:
            return ids <= {bytes(i) for (i,) in db.execute("SELECT id FROM entries")}

    return probe


async def test_a_site_runs_from_its_files(stack: Stack, tmp_path: Path) -> None:
    async with stack.client("utility") as utility_lnd:
        utility_pubkey = (await utility_lnd.get_info()).pubkey
    pubkeys = {}
    for device, node in LND.items():
        async with stack.client(node) as client:
            pubkeys[device] = (await client.get_info()).pubkey
    start = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=20)
    d = deploy(
        tmp_path,
        start=start.replace(microsecond=0),
        interval_s=1.5,
        intervals_per_period=4,
        periods=1,
        lnd={name: inline(stack.endpoint(node)) for name, node in LND.items()},
        utility_lnd=utility_pubkey,
        utility_lnd_table=inline(stack.endpoint("utility")),
    )
    # The utility's own copy of the entries file: what the owner adds to the
    # agents' copy below reaches it only through the running nodes.
    utility_entries = tmp_path / "utility-store-1.entries"
    shutil.copy(d.entries, utility_entries)
    d.utility_file.write_text(
        d.utility_file.read_text().replace(
            'entries = "store-1.entries"', f'entries = "{utility_entries.name}"'
        )
    )
    replicas = [tmp_path / "data" / "utility" / "utility-store-1.db"]
    replicas += [tmp_path / "data" / name / f"{name}.db" for name, _, _ in DEVICES]
    nodes: list[Node] = []
    try:
        utility = await Node.start(
            ["utility", "run", "-c", str(d.utility_file)], tmp_path / "u.log"
        )
        nodes.append(utility)
        addrs = (await utility.expect("ready"))["addrs"]["store-1"]
        text = d.site_file.read_text()
        for name, _, _ in DEVICES:
            text = text.replace(
                f'data_dir = "data/{name}"\n',
                f'data_dir = "data/{name}"\nbootstrap = {json.dumps(addrs)}\n'
                f'lnd_pubkey = "{pubkeys[name]}"\n',
            )
        d.site_file.write_text(text)
        agents = {}
        for name, _, _ in DEVICES:
            args = ["agent", "run", "-c", str(d.site_file), "--device", name]
            agents[name] = await Node.start(args, tmp_path / f"{name}.log")
            nodes.append(agents[name])
        for agent in agents.values():
            await agent.expect("ready")
        # New owner entries while the site runs: the next period's allocations.
        utility_before = utility_entries.read_bytes()
        allocated = ok_json("site", "allocate", "-c", str(d.site_file), "--first", "1")
        assert allocated["periods"] == [1]
        new_ids = {e.id for e in read_entries(d.entries, SiteIdentity.from_hex(d.site))}
        agents["s1-fridge"].proc.send_signal(signal.SIGHUP)  # read it now; do not stop
        await wait_until(
            _holds(replicas[0], new_ids), timeout_s=EVENT_WAIT_S, what="the utility's replica"
        )
        assert utility_entries.read_bytes() == utility_before
        reports = {name: (await agent.expect("done"))["report"] for name, agent in agents.items()}
        invoices = (await utility.expect("done"))["invoices"]
        # The last payments' entries travel on by replication: stop once every
        # replica holds the same entries (the processes' files, polled).
        await wait_until(agree(replicas), timeout_s=EVENT_WAIT_S, what="the replicas to agree")
        for node in nodes:
            assert await node.terminate() == 0, node.log.read_text()[-3000:]
    finally:
        for node in nodes:
            if node.proc.returncode is None:
                node.proc.kill()
                await node.proc.wait()
    assert {name: r["period_states"] for name, r in reports.items()} == {
        name: {"0": "settled"} for name, _, _ in DEVICES
    }
    assert sorted(i["device"] for i in invoices) == [0, 1]
    async with stack.client("utility") as utility_lnd:
        for invoice in invoices:
            paid = await utility_lnd.lookup_invoice(invoice["payment_hash"])
            assert paid.state is InvoiceState.SETTLED
            assert paid.amt_paid_msat == invoice["amount_msat"] > 0
    # Each replica, and each node's lnd against the replica of that node.
    nodes_lnd = [["--against-utility-lnd", str(d.utility_file)]]
    nodes_lnd += [["--against-lnd", name] for name, _, _ in DEVICES]
    digests = set()
    for replica, against in zip(replicas, nodes_lnd, strict=True):
        code, out = await _verify(replica, "--config", str(d.site_file), *against)
        assert code == 0, out
        assert out["lnd"]["ok"] is True, out["lnd"]
        assert out["lnd"]["payments"] >= 1  # its invoice paid (devices) or settled (utility)
        digests.add(out["digest"])
    assert len(digests) == 1, "the replicas disagree"
    # The fridge's payments looked for on the hvac's lnd: a mismatch, exit 1.
    wrong = d.site_file.with_name("wrong-lnd.toml")
    wrong.write_text(
        d.site_file.read_text().replace(
            inline(stack.endpoint(LND["s1-fridge"])), inline(stack.endpoint(LND["s1-hvac"]))
        )
    )
    code, out = await _verify(replicas[1], "--config", str(wrong), "--against-lnd", "s1-fridge")
    assert code == EXIT_FAILED, out
    assert out["ok"] is False
    assert out["rejected"] == {}  # the replica itself is clean
    assert any("0 succeeded lnd payment(s)" in p for p in out["lnd"]["problems"]), out["lnd"]
    # The same for a person: the verdict, then one problem a line.
    shown = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pgrid", "log", "verify", str(replicas[1]),
        "--config", str(wrong), "--against-lnd", "s1-fridge",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    text = (await shown.communicate())[0].decode()
    assert shown.returncode == EXIT_FAILED
    assert "clean; LND MISMATCH" in text
    assert "DISAGREES" in text, text
    assert "succeeded lnd payment" in text, text


async def _verify(replica: Path, *args: str) -> tuple[int | None, dict[str, Any]]:
    """``p2pgrid log verify REPLICA ARGS --json`` as a process: its exit code and JSON."""
    verify = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pgrid", "log", "verify", str(replica), *args, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await verify.communicate()
    assert out, err.decode()
    data: dict[str, Any] = json.loads(out)
    return verify.returncode, data


pytestmark = pytest.mark.timeout(600)
