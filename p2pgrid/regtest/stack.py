"""A regtest stack: one btcd and a set of lnd nodes, funded, with channels.

``Stack.up()`` builds nothing (see ``build.py``); it starts btcd, mines until
segwit is active and coinbase has matured, starts each lnd in turn, funds their
wallets from the faucet with real transactions, opens the topology's channels
and waits until every one is active on both sides. ``Stack.down()`` stops every
daemon that names the stack's directory. A stack left behind by a crash is
found (``/proc``) and cleaned at the next ``up``, never silently reused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from p2pgrid.errors import ConfigError, ReportableError
from p2pgrid.lightning import LndClient, LndEndpoint
from p2pgrid.poll import wait_until
from p2pgrid.regtest import process
from p2pgrid.regtest.btcd import BtcdConfig, BtcdRpc
from p2pgrid.regtest.build import Daemons, default_cache_dir
from p2pgrid.regtest.faucet import COINBASE_MATURITY, Faucet
from p2pgrid.regtest.lnd import LndConfig
from p2pgrid.regtest.topology import DEFAULT_TOPOLOGY, Topology

log = logging.getLogger(__name__)

BTCD_START_TIMEOUT_S = 60.0
LND_START_TIMEOUT_S = 120.0
FUNDING_TIMEOUT_S = 60.0
CHANNEL_ACTIVE_TIMEOUT_S = 120.0
CHANNEL_CONFIRMATIONS = 6
SETTLE_TIMEOUT_S = 30.0
SEGWIT_BATCH_BLOCKS = 150
PORT_SEARCH = range(21000, 40000, 100)
PORTS_PER_NODE = 3


class StackError(ReportableError):
    """The stack cannot be started, or is in a state that forbids the request."""


class StackBusy(StackError):
    """A stack of that name is running already: stop it first (``regtest/down``)."""


def default_root() -> Path:
    return default_cache_dir() / "stacks"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it; an entry that vanished while the
    tree was walked is gone already, not an error (a stack's teardown once failed
    on an lnd ``channel.backup-<time>`` file that disappeared between the listing
    and its unlink)."""
    shutil.rmtree(path, onerror=_gone_is_fine)


def _gone_is_fine(func: Callable[..., object], name: str, exc_info: tuple[Any, ...]) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


@dataclass(frozen=True)
class StackConfig:
    """Which stack, where, on which ports. ``port_base=None`` picks a free block."""

    name: str = "default"
    root: Path = field(default_factory=default_root)
    topology: Topology = DEFAULT_TOPOLOGY
    port_base: int | None = None
    #: The address every lnd's REST API listens on: loopback, or an address that
    #: agents on other hosts (or network namespaces) reach this machine at.
    rest_host: str = "127.0.0.1"

    @property
    def dir(self) -> Path:
        return (self.root / self.name).resolve()

    def ports_needed(self) -> int:
        return 2 + PORTS_PER_NODE * len(self.topology.nodes)


@dataclass(frozen=True)
class StackLayout:
    """Ports and directories of a stack, derived from its dir and port base."""

    dir: Path
    port_base: int
    node_names: tuple[str, ...]
    rest_host: str = "127.0.0.1"

    @property
    def state_file(self) -> Path:
        return self.dir / "stack.json"

    def btcd(self, mining_address: str) -> BtcdConfig:
        return BtcdConfig(self.dir / "btcd", self.port_base, self.port_base + 1, mining_address)

    def lnd(self, name: str) -> LndConfig:
        i = self.node_names.index(name)
        base = self.port_base + 10 + PORTS_PER_NODE * i
        return LndConfig(name, self.dir / "lnd" / name, base, base + 1, base + 2, self.rest_host)

    def ports(self) -> list[int]:
        out = [self.port_base, self.port_base + 1]
        for name in self.node_names:
            cfg = self.lnd(name)
            out += [cfg.p2p_port, cfg.grpc_port, cfg.rest_port]
        return out


class Stack:
    """Operate one named regtest stack; progress lines go to ``console``."""

    def __init__(
        self, config: StackConfig, daemons: Daemons, *, console: Console | None = None
    ) -> None:
        self.config = config
        self.daemons = daemons
        self.console = console or Console(stderr=True)
        self._layout: StackLayout | None = None

    # -- state -----------------------------------------------------------------------------

    @property
    def layout(self) -> StackLayout:
        if self._layout is None:
            state = self.read_state()
            if state is None:
                raise StackError(f"stack {self.config.name!r} is not up (no {self._state_path})")
            self._layout = StackLayout(
                self.config.dir,
                int(state["port_base"]),
                tuple(state["nodes"]),
                str(state.get("rest_host", "127.0.0.1")),
            )
        return self._layout

    @property
    def _state_path(self) -> Path:
        return self.config.dir / "stack.json"

    def read_state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StackError(f"{self._state_path} is corrupt: {exc}") from exc
        return data

    def _write_state(self, **changes: Any) -> None:
        state = {**(self.read_state() or {}), **changes}
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self._state_path)

    def _say(self, message: str) -> None:
        log.info("stack %s: %s", self.config.name, message)
        name = escape(f"[{self.config.name}]")
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {name} {message}")

    def endpoint(self, node: str) -> LndEndpoint:
        return self.layout.lnd(node).endpoint()

    def client(self, node: str) -> LndClient:
        return LndClient(self.endpoint(node))

    def rpc(self) -> BtcdRpc:
        state = self.read_state() or {}
        return BtcdRpc(self.layout.btcd(str(state.get("faucet_address", ""))))

    def lnd_config(self, node: str) -> LndConfig:
        return self.layout.lnd(node)

    # -- up --------------------------------------------------------------------------------

    def _pick_port_base(self) -> int:
        needed = self.config.ports_needed()
        taken: set[int] = set()
        if self.config.root.exists():
            for other in self.config.root.iterdir():
                try:
                    taken.add(int(json.loads((other / "stack.json").read_text())["port_base"]))
                except (OSError, ValueError, KeyError):
                    continue
        candidates = [self.config.port_base] if self.config.port_base else list(PORT_SEARCH)
        for base in candidates:
            if base is None or base in taken:
                continue
            ports = [*range(base, base + 2), *range(base + 10, base + 10 + needed)]
            if all(_port_free(p) for p in ports):
                return base
        if self.config.port_base:
            raise ConfigError(f"ports from {self.config.port_base} are in use (another stack?)")
        raise ConfigError("no free block of ports found for the stack")

    async def clean_leftovers(self) -> None:
        """Stop a crashed stack's daemons and remove its directory; refuse a live one."""
        found = process.find(self.config.dir)
        state = self.read_state()
        if state and state.get("status") == "ready" and found:
            pids = ", ".join(str(p.pid) for p in found)
            raise StackBusy(
                f"stack {self.config.name!r} is running (pids {pids}); "
                f"use it, or stop it with `regtest/down {self.config.name}`"
            )
        if found:
            self._say(f"found {len(found)} daemon(s) left behind by a crash; stopping them")
            await process.terminate([p.pid for p in found], what="left-behind daemons")
        if self.config.dir.exists():
            self._say(f"removing the left-behind directory {escape(str(self.config.dir))}")
            shutil.rmtree(self.config.dir)

    async def up(self) -> None:
        """Start a fresh stack. On failure everything started is stopped again."""
        started = time.monotonic()
        await self.clean_leftovers()
        self.config.dir.mkdir(parents=True)
        base = self._pick_port_base()
        names = tuple(n.name for n in self.config.topology.nodes)
        self._layout = StackLayout(self.config.dir, base, names, self.config.rest_host)
        faucet = Faucet.load_or_create(self.config.dir / "faucet.wif")
        self._write_state(
            name=self.config.name,
            status="starting",
            port_base=base,
            nodes=list(names),
            rest_host=self.config.rest_host,
            faucet_address=faucet.address,
            owner_pid=os.getpid(),
        )
        try:
            await self._bring_up(faucet)
        except BaseException:
            self._say("start failed; stopping what was started")
            await self.down(remove=False)
            raise
        self._write_state(status="ready")
        self._say(f"[green]up[/] in {time.monotonic() - started:.0f}s (ports from {base})")

    async def _bring_up(self, faucet: Faucet) -> None:
        layout = self.layout
        btcd = layout.btcd(faucet.address)
        (btcd.data_dir).mkdir(parents=True)
        (btcd.data_dir / "btcd.conf").touch()
        process.spawn(btcd.args(self.daemons.btcd), btcd.data_dir / "btcd.out")
        rpc = BtcdRpc(btcd)
        try:
            await wait_until(
                self._height_probe(rpc), timeout_s=BTCD_START_TIMEOUT_S, what="btcd RPC"
            )
            self._say(f"btcd serving RPC on 127.0.0.1:{btcd.rpc_port}")
            await self._mature_chain(rpc)
            for node in self.config.topology.nodes:
                await self._start_lnd(layout.lnd(node.name), btcd, rpc)
            await self._fund(rpc, faucet)
            await self._open_channels(rpc)
        finally:
            await rpc.aclose()

    @staticmethod
    def _height_probe(rpc: BtcdRpc) -> Callable[[], Any]:
        async def probe() -> int:
            return await rpc.block_count() + 1  # 0 blocks is still "up"

        return probe

    async def _mature_chain(self, rpc: BtcdRpc) -> None:
        while not await rpc.segwit_active() or await rpc.block_count() < 2 * COINBASE_MATURITY:
            await rpc.generate(SEGWIT_BATCH_BLOCKS)
        self._say(f"chain at height {await rpc.block_count()}: segwit active, coinbase matured")

    async def _start_lnd(self, cfg: LndConfig, btcd: BtcdConfig, rpc: BtcdRpc) -> None:
        cfg.lnd_dir.mkdir(parents=True)
        (cfg.lnd_dir / "lnd.conf").touch()
        process.spawn(cfg.args(self.daemons.lnd, btcd), cfg.lnd_dir / "lnd.out")
        await self._wait_macaroon(cfg)
        height = await rpc.block_count()
        async with LndClient(cfg.endpoint()) as node:

            async def synced() -> bool:
                info = await node.get_info()
                return info.synced_to_chain and info.block_height >= height

            await wait_until(synced, timeout_s=LND_START_TIMEOUT_S, what=f"{cfg.name} to sync")
            info = await node.get_info()
        label = escape(cfg.name)  # node names come from the scenario: data, not markup
        self._say(f"lnd {label} up: {info.pubkey[:16]}... REST {cfg.rest_host}:{cfg.rest_port}")

    async def _wait_macaroon(self, cfg: LndConfig) -> None:
        async def ready() -> bool:
            return cfg.macaroon.exists() and cfg.tls_cert.exists()

        await wait_until(ready, timeout_s=LND_START_TIMEOUT_S, what=f"{cfg.name} wallet")

    async def sync_all(self, rpc: BtcdRpc) -> None:
        """Wait until every lnd has seen btcd's tip."""
        height = await rpc.block_count()
        for node in self.config.topology.nodes:
            async with self.client(node.name) as client:

                async def seen(client: LndClient = client) -> bool:
                    info = await client.get_info()
                    return info.synced_to_chain and info.block_height >= height

                await wait_until(seen, timeout_s=LND_START_TIMEOUT_S, what=f"{node.name} at tip")

    async def _fund(self, rpc: BtcdRpc, faucet: Faucet) -> None:
        outputs: list[tuple[str, int]] = []
        for node in self.config.topology.nodes:
            async with self.client(node.name) as client:
                for _ in range(node.utxos):
                    outputs.append((await client.new_address(), node.fund_sat // node.utxos))
        txid = await faucet.pay(rpc, outputs)
        await rpc.generate(1)
        for node in self.config.topology.nodes:
            expected = node.fund_sat // node.utxos * node.utxos
            async with self.client(node.name) as client:

                async def funded(client: LndClient = client, expected: int = expected) -> bool:
                    return (await client.wallet_balance()).confirmed_sat >= expected

                await wait_until(funded, timeout_s=FUNDING_TIMEOUT_S, what=f"{node.name} funds")
        self._say(f"funded {len(self.config.topology.nodes)} wallets in tx {txid[:16]}...")

    async def _open_channels(self, rpc: BtcdRpc) -> None:
        channels = self.config.topology.channels
        if not channels:
            return
        points: list[str] = []
        for ch in channels:
            async with self.client(ch.peer) as peer:
                peer_key = (await peer.get_info()).pubkey
            async with self.client(ch.opener) as opener:
                await opener.connect_peer(peer_key, self.layout.lnd(ch.peer).p2p_host)
                point = await opener.open_channel(
                    peer_key, ch.capacity_sat, push_sat=ch.push_sat, private=ch.private
                )
            points.append(point)
            pair = escape(f"{ch.opener} -> {ch.peer}")
            self._say(f"opening {pair} {ch.capacity_sat} sat: {point[:16]}...")

        async def in_mempool() -> bool:
            pool = set(await rpc.mempool())
            return all(p.split(":")[0] in pool for p in points)

        await wait_until(in_mempool, timeout_s=FUNDING_TIMEOUT_S, what="funding txs in mempool")
        await rpc.generate(CHANNEL_CONFIRMATIONS)
        await self.sync_all(rpc)
        await self.wait_channels_active(points)
        self._say(f"{len(points)} channel(s) active")

    async def wait_channels_active(self, points: list[str]) -> None:
        """Wait until each channel is active at both ends and routable everywhere.

        ``active`` alone is not enough: a payment made before the node's graph holds
        both policies of a channel on its route fails (INSUFFICIENT_BALANCE or
        NO_ROUTE). Public channels must reach every node's graph by gossip; private
        ones only their two ends.
        """
        names = [n.name for n in self.config.topology.nodes]
        for point, spec in zip(points, self.config.topology.channels, strict=True):
            for name in (spec.opener, spec.peer):
                async with self.client(name) as client:

                    async def active(client: LndClient = client, point: str = point) -> bool:
                        chans = await client.list_channels()
                        return any(c.channel_point == point and c.active for c in chans)

                    await wait_until(
                        active,
                        timeout_s=CHANNEL_ACTIVE_TIMEOUT_S,
                        what=f"{name}: {point[:16]} active",
                    )
            async with self.client(spec.opener) as opener:
                chan_id = next(
                    c.chan_id for c in await opener.list_channels() if c.channel_point == point
                )
            for name in names if not spec.private else [spec.opener, spec.peer]:
                async with self.client(name) as client:

                    async def routable(client: LndClient = client, chan_id: int = chan_id) -> bool:
                        return await client.channel_routable(chan_id)

                    await wait_until(
                        routable,
                        timeout_s=CHANNEL_ACTIVE_TIMEOUT_S,
                        what=f"{name}: channel {chan_id} in its graph",
                    )

    # -- operate ---------------------------------------------------------------------------

    async def wait_settled(self) -> None:
        """Wait until no node has an HTLC in flight (channel balances are final)."""
        for name in self.layout.node_names:
            async with self.client(name) as client:

                async def settled(client: LndClient = client) -> bool:
                    return all(c.pending_htlcs == 0 for c in await client.list_channels())

                await wait_until(settled, timeout_s=SETTLE_TIMEOUT_S, what=f"{name}: HTLCs settled")

    async def mine(self, blocks: int) -> list[str]:
        rpc = self.rpc()
        try:
            hashes = await rpc.generate(blocks)
            await self.sync_all(rpc)
        finally:
            await rpc.aclose()
        return hashes

    def status(self) -> dict[str, Any]:
        state = self.read_state()
        found = process.find(self.config.dir)
        return {
            "name": self.config.name,
            "dir": str(self.config.dir),
            "status": (state or {}).get("status", "absent"),
            "port_base": (state or {}).get("port_base"),
            "nodes": (state or {}).get("nodes", []),
            "pids": [p.pid for p in found],
        }

    async def down(self, *, remove: bool = True) -> None:
        """Stop every daemon of the stack (lnd first, btcd last). Safe to call twice."""
        found = process.find(self.config.dir)
        lnds = [p.pid for p in found if "--lnddir" in p.cmdline]
        others = [p.pid for p in found if p.pid not in lnds]
        if lnds:
            await process.terminate(lnds, what=f"{len(lnds)} lnd")
        if others:
            await process.terminate(others, what="btcd")
        if found:
            self._say(f"stopped {len(found)} daemon(s)")
        if remove and self.config.dir.exists():
            remove_tree(self.config.dir)
        elif self._state_path.exists():
            self._write_state(status="stopped")
