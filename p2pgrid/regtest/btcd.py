"""btcd on regtest: its command line, an asyncio JSON-RPC client (httpx, TLS), and
its stored blocks.

btcd deletes its regtest block database at every start (``removeRegressionDB`` in
btcd.go: "the regression test is special in that it needs a clean database for each
run"), so a btcd restarted on the same data directory begins a new chain at height 0.
To bring the same chain back, read the blocks from its flat files *before* starting
it again (:func:`stored_blocks`) and submit them once it serves
(:meth:`BtcdRpc.submit_block`).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from p2pgrid.errors import ReportableError, RetryableError

BTCD_CALL_TIMEOUT_S = 60.0
"""Deadline of one JSON-RPC call (``generate`` of a few hundred blocks included)."""
RPC_USER = "p2pgrid"
RPC_PASS = "p2pgrid-regtest"
#: The regtest network's magic as btcd's flat block files store it (little-endian).
REGTEST_MAGIC = 0xDAB5BFFA


class BtcdError(ReportableError):
    """btcd answered a call with an error."""


class BtcdUnreachable(RetryableError):
    """btcd did not answer (starting, stopped, or timed out)."""


@dataclass(frozen=True)
class BtcdConfig:
    """Where one btcd lives and listens."""

    data_dir: Path
    rpc_port: int
    p2p_port: int
    mining_address: str

    @property
    def rpc_cert(self) -> Path:
        return self.data_dir / "rpc.cert"

    @property
    def rpc_key(self) -> Path:
        return self.data_dir / "rpc.key"

    def args(self, binary: Path) -> list[str]:
        return [
            str(binary),
            "--regtest",
            f"--configfile={self.data_dir / 'btcd.conf'}",
            f"--datadir={self.data_dir / 'data'}",
            f"--logdir={self.data_dir / 'logs'}",
            f"--rpccert={self.rpc_cert}",
            f"--rpckey={self.rpc_key}",
            f"--rpclisten=127.0.0.1:{self.rpc_port}",
            f"--listen=127.0.0.1:{self.p2p_port}",
            f"--rpcuser={RPC_USER}",
            f"--rpcpass={RPC_PASS}",
            f"--miningaddr={self.mining_address}",
            "--txindex",
            "--nodnsseed",
            "--debuglevel=info",
            # Each lnd holds ~4 websocket notification clients; btcd's default cap
            # of 25 refuses the 7th node of a stack (observed), so raise it.
            f"--rpcmaxwebsockets={MAX_WEBSOCKETS}",
            f"--rpcmaxclients={MAX_WEBSOCKETS}",
        ]


#: Websocket and HTTP RPC clients btcd accepts: room for ~60 lnd nodes.
MAX_WEBSOCKETS = 250


class BtcdRpc:
    """JSON-RPC to btcd over TLS verified with btcd's own ``rpc.cert``."""

    def __init__(self, config: BtcdConfig) -> None:
        self.config = config
        self._ids = itertools.count(1)
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            if not self.config.rpc_cert.exists():
                raise BtcdUnreachable("btcd has not written its rpc.cert yet")
            ctx = ssl.create_default_context(cafile=str(self.config.rpc_cert))
            self._client = httpx.AsyncClient(
                base_url=f"https://127.0.0.1:{self.config.rpc_port}",
                verify=ctx,
                auth=(RPC_USER, RPC_PASS),
                timeout=BTCD_CALL_TIMEOUT_S,
            )
        return self._client

    async def call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)}
        try:
            async with asyncio.timeout(BTCD_CALL_TIMEOUT_S):  # whole call: a stopped btcd accepts
                response = await self._http().post("/", json=body)
        except TimeoutError as exc:
            raise BtcdUnreachable(f"btcd {method}: no answer in {BTCD_CALL_TIMEOUT_S}s") from exc
        except httpx.HTTPError as exc:
            raise BtcdUnreachable(f"btcd {method}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 401:
            raise BtcdError("btcd refused our RPC credentials")
        payload = response.json()
        if payload.get("error"):
            raise BtcdError(f"btcd {method}: {payload['error'].get('message', payload['error'])}")
        return payload["result"]

    async def block_count(self) -> int:
        return int(await self.call("getblockcount"))

    async def generate(self, blocks: int) -> list[str]:
        hashes: list[str] = await self.call("generate", blocks)
        return hashes

    async def block_hash(self, height: int) -> str:
        return str(await self.call("getblockhash", height))

    async def block(self, block_hash: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("getblock", block_hash, 1)
        return result

    async def tx_out(self, txid: str, vout: int) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.call("gettxout", txid, vout, True)
        return result

    async def submit_block(self, raw: bytes) -> str | None:
        """Submit a serialized block: None if accepted, else btcd's reason
        ("duplicate" for one it has)."""
        result = await self.call("submitblock", raw.hex())
        return None if result is None else str(result)

    async def send_raw(self, raw_hex: str) -> str:
        return str(await self.call("sendrawtransaction", raw_hex))

    async def mempool(self) -> Sequence[str]:
        result: list[str] = await self.call("getrawmempool")
        return result

    async def segwit_active(self) -> bool:
        info = await self.call("getblockchaininfo")
        for name in ("segwit",):
            fork = (info.get("softforks") or {}).get(name) or (
                info.get("bip9_softforks") or {}
            ).get(name)
            if fork is None:
                continue
            status = (fork.get("bip9") or fork).get("status") or (
                "active" if fork.get("active") else ""
            )
            return bool(status == "active")
        return False


def stored_blocks(config: BtcdConfig) -> list[bytes]:
    """The serialized blocks in btcd's flat files (``blocks_ffldb/*.fdb``), in the
    order it stored them: height order on a chain without reorgs, as regtest here.

    A record is ``<network u32><length u32><block><crc32c u32>`` (little-endian;
    btcd's ``database/ffldb/blockio.go``). A record cut short by a kill ends the
    list. Read it before btcd starts again: the start deletes the files.
    """
    blocks: list[bytes] = []
    folder = config.data_dir / "data" / "regtest" / "blocks_ffldb"
    for path in sorted(folder.glob("*.fdb")):
        data = path.read_bytes()
        offset = 0
        while offset + 8 <= len(data):
            network, length = struct.unpack_from("<II", data, offset)
            end = offset + 8 + length + 4
            if network != REGTEST_MAGIC or end > len(data):
                return blocks  # a torn tail: what follows was never committed
            blocks.append(data[offset + 8 : offset + 8 + length])
            offset = end
    return blocks
