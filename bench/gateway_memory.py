"""Benchmark: memory of a site gateway against one process per device.

One run, one machine: a regtest stack of one btcd and one lnd (every device's
lnd client talks to it: the bench measures the agents' processes, not lnd), a
site of ``max(--sizes)`` devices made as an operator does (``p2pgrid.config.owner``:
utility and owner keys, enrolments, one period's allocation) and one site file.
For each size N, in turn:

1. ``gateway``: one ``p2pgrid agent run --config site.toml --device d0 ... --device
   dN-1`` process;
2. ``processes``: N ``p2pgrid agent run --config site.toml --device di`` processes.

The site's clock starts a day after the run, so every agent is fully built (lnd
client, intents, SQLite replica, libp2p host connected to its site peers,
replica, dashboard) and waits for its first interval: the resident cost of a
device, before trading. Every device bootstraps from device 0 (a fixed port), so
both layouts form the same network of N peers. Once every device printed its
``ready`` line, RSS (``VmRSS`` of ``/proc/PID/status``) is sampled every second
for ``--observe`` seconds (peers connecting, anti-entropy rounds); the table
shows the last sample, summed over the layout's processes, per device, the
ratio processes / gateway, and the CPU the layout used while idle meanwhile
(gossipsub heartbeats, anti-entropy rounds; % of one core, ``/proc/PID/stat``),
and how many times the layout stored (verified and ingested) each entry of the
site log: the rows of its replica files over the distinct entries (N for N
replicas; 1 for a gateway whose devices share their site's store). Each layout
starts from empty data directories.

With ``--light`` every device is light (``lightning = "site"``: no lnd of its
own, paying through the site node of ``[site_lightning]``, here the one lnd):
a gateway then holds one lnd client for all its devices, each process one.

With ``--gateway-only`` the ``processes`` layout is skipped (its columns are nan).

Usage: .venv/bin/python bench/gateway_memory.py [--sizes 1 5 10 20] [--observe 15] [--light]
[--gateway-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from p2pgrid.config.files import SiteFile
from p2pgrid.config.owner import add_device, allocate, init_site, init_utility
from p2pgrid.regtest import Stack, StackConfig, ensure_daemons
from p2pgrid.regtest.stack import default_root
from p2pgrid.regtest.topology import NodeSpec, Topology

LND = "lnd-1"
READY_WAIT_S = 300.0  # 20 agent processes starting at once on 2 busy cores
STOP_WAIT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_file_text(
    stack: Stack, owner: str, utility: str, devices: int, port0: int, site_node: str | None
) -> str:
    """The bench's site file; ``site_node``: the lnd's key, every device light on it."""
    lnd = stack.endpoint(LND)
    lnd_table = (
        f'{{ rest_host = "{lnd.rest_host}", rest_port = {lnd.rest_port}, '
        f'tls_cert = "{lnd.tls_cert}", macaroon = "{lnd.macaroon}" }}'
    )
    start = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    rows = [
        f"""
[[devices]]
name = "d{i}"
index = {i}
device_class = "fridge"
priority = "normal"
meter = {{ kind = "bdew", profile = "g0", annual_kwh = 4000 }}
key_file = "keys/d{i}.key"
data_dir = "data/d{i}"
listen_port = {port0 if i == 0 else 0}
{'lightning = "site"' if site_node else f"lnd = {lnd_table}"}
"""
        for i in range(devices)
    ]
    if site_node:
        rows.append(f'\n[site_lightning]\npubkey = "{site_node}"\nlnd = {lnd_table}\n')
    return f"""
[site]
name = "bench"
owner_pubkey = "{owner}"
budget_msat = 100000000
entries = "bench.entries"
owner_key = "owner/owner.key"

[clock]
start = {start.replace(microsecond=0).isoformat().replace("+00:00", "Z")}
interval_s = 60
intervals_per_period = 4
periods = 1

[tariff]
msat_per_kwh = 250000

[utility]
key = "{utility}"
lnd_pubkey = "{utility}"
{"".join(rows)}"""


def make_site(root: Path, stack: Stack, devices: int, site_node: str | None) -> Path:
    """Keys, enrolments, an allocation and the site file, as the owner's commands make them."""
    utility = init_utility(root / "ukeys")["key"]
    created = init_site(root / "owner", root / "bench.entries", utility)
    path = root / "site.toml"
    text = site_file_text(stack, created.site, utility, devices, free_port(), site_node)
    path.write_text(text)
    for i in range(devices):
        add_device(SiteFile(path), f"d{i}", None)
    allocate(SiteFile(path), 0, 1)
    return path


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            return int(value.split()[0])
    raise RuntimeError(f"no VmRSS for process {pid}")


def bootstrap_from(site: Path, addrs: list[str]) -> None:
    """Every device but d0 (the one fixed port) bootstraps from d0's ``addrs``."""
    text = site.read_text()
    if "bootstrap" not in text:
        rows = f"listen_port = 0\nbootstrap = {json.dumps(addrs)}\n"
        site.write_text(text.replace("listen_port = 0\n", rows))


class Agents:
    """``p2pgrid agent run`` processes, their ready lines, their stop."""

    def __init__(self, site: Path, log_dir: Path) -> None:
        self.site = site
        self.log_dir = log_dir
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, names: list[str]) -> asyncio.subprocess.Process:
        flags = [f for n in names for f in ("--device", n)]
        log = (self.log_dir / f"{names[0]}-{len(names)}-{time.monotonic_ns()}.log").open("wb")
        with log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "p2pgrid", "agent", "run", "-c", str(self.site), *flags,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    @staticmethod
    async def ready(proc: asyncio.subprocess.Process, count: int) -> list[dict[str, Any]]:
        assert proc.stdout is not None
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(READY_WAIT_S):
            while len(seen) < count:
                line = await proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"an agent process ended (exit {await proc.wait()})")
                event = json.loads(line)
                if event.get("event") == "ready":
                    seen.append(event)
        return seen

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                async with asyncio.timeout(STOP_WAIT_S):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.procs = []


def cpu_s(pid: int) -> float:
    """CPU time (user + system) ``pid`` used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def observe(pids: list[int], seconds: float) -> tuple[float, float, float]:
    """The summed RSS of ``pids`` (MB) at the end of ``seconds``, the highest seen,
    and their CPU meanwhile (% of one core)."""
    last, peak = 0, 0
    start, cpu0 = time.monotonic(), sum(cpu_s(pid) for pid in pids)
    while True:
        last = sum(rss_kb(pid) for pid in pids)
        peak = max(peak, last)
        if time.monotonic() >= start + seconds:
            break
        await asyncio.sleep(1.0)  # a sampling period, not a synchronisation
    cpu = 100 * (sum(cpu_s(pid) for pid in pids) - cpu0) / (time.monotonic() - start)
    return last / 1024, peak / 1024, cpu


def stored_copies(data: Path) -> float:
    """How many times the layout stored each entry of the site log: the rows of
    every replica file under ``data`` (each one a verified ingest) over the
    distinct entries among them."""
    ids: set[bytes] = set()
    rows = 0
    for path in data.rglob("*.db"):
        if path.name.endswith(".intents.db"):
            continue
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            found = [bytes(r[0]) for r in db.execute("SELECT id FROM entries")]
        rows += len(found)
        ids.update(found)
    return rows / max(1, len(ids))


async def measure(
    site: Path, log_dir: Path, size: int, observe_s: float, *, gateway_only: bool = False
) -> dict[str, float]:
    names = [f"d{i}" for i in range(size)]
    agents = Agents(site, log_dir)
    data = site.parent / "data"
    shutil.rmtree(data, ignore_errors=True)  # each layout from empty replicas
    try:
        gateway = await agents.start(names)
        ready = await agents.ready(gateway, size)
        bootstrap_from(site, next(e["addrs"] for e in ready if e["name"] == "d0"))
        g_last, g_peak, g_cpu = await observe([gateway.pid], observe_s)
    finally:
        await agents.stop()
    g_copies = stored_copies(data)
    shutil.rmtree(data, ignore_errors=True)
    if gateway_only:
        nan = float("nan")
        return {
            "devices": size,
            "gateway_mb": g_last,
            "gateway_peak_mb": g_peak,
            "processes_mb": nan,
            "processes_peak_mb": nan,
            "gateway_cpu_pct": g_cpu,
            "processes_cpu_pct": nan,
            "gateway_copies": g_copies,
            "processes_copies": nan,
        }
    try:
        procs = [await agents.start([n]) for n in names]
        for proc in procs:
            await agents.ready(proc, 1)
        p_last, p_peak, p_cpu = await observe([p.pid for p in procs], observe_s)
    finally:
        await agents.stop()
    p_copies = stored_copies(data)
    return {
        "devices": size,
        "gateway_mb": g_last,
        "gateway_peak_mb": g_peak,
        "processes_mb": p_last,
        "processes_peak_mb": p_peak,
        "gateway_cpu_pct": g_cpu,
        "processes_cpu_pct": p_cpu,
        "gateway_copies": g_copies,
        "processes_copies": p_copies,
    }


async def main(args: argparse.Namespace) -> None:
    daemons = await ensure_daemons()
    topology = Topology(nodes=(NodeSpec(LND, fund_sat=1_000_000, utxos=1),))
    config = StackConfig(
        name=f"bench-gateway-{os.getpid()}", root=default_root() / "bench", topology=topology
    )
    stack = Stack(config, daemons)
    await stack.up()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="p2pgrid-gateway-bench-") as tmp:
            root = Path(tmp)
            site_node = None
            if args.light:
                async with stack.client(LND) as client:
                    site_node = (await client.get_info()).pubkey
            site = make_site(root, stack, max(args.sizes), site_node)
            for size in args.sizes:
                row = await measure(site, root, size, args.observe, gateway_only=args.gateway_only)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        await stack.down()
    kind = "light devices (one site lnd)" if args.light else "devices with their own lnd client"
    print(
        f"{kind}; load average {os.getloadavg()[0]:.1f}; RSS (MB) after {args.observe:.0f} s idle;"
    )
    print("CPU: % of one core over that time, all the layout's processes together")
    print(
        f"{'devices':>7} {'gateway':>9} {'per dev':>8} {'processes':>10} {'per dev':>8} "
        f"{'ratio':>6} {'CPU gw':>7} {'CPU procs':>9} {'copies gw':>9} {'copies procs':>12}"
    )
    for r in rows:
        n = r["devices"]
        print(
            f"{n:>7} {r['gateway_mb']:>9.0f} {r['gateway_mb'] / n:>8.1f} "
            f"{r['processes_mb']:>10.0f} {r['processes_mb'] / n:>8.1f} "
            f"{r['processes_mb'] / r['gateway_mb']:>6.2f} "
            f"{r['gateway_cpu_pct']:>7.1f} {r['processes_cpu_pct']:>9.1f} "
            f"{r['gateway_copies']:>9.1f} {r['processes_copies']:>12.1f}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--observe", type=float, default=15.0)
    parser.add_argument("--light", action="store_true", help="every device light on the site lnd")
    parser.add_argument(
        "--gateway-only", action="store_true", help="measure the gateway, not one process each"
    )
    return parser.parse_args()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parse_args()))
