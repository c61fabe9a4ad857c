"""The regtest faucet: a key of the stack's own that btcd mines to.

btcd has no wallet and no ``generatetoaddress``: it mines to ``--miningaddr``,
fixed at start. The faucet is that address; it spends matured coinbase outputs
(found with ``gettxout``, so no state is kept) to the lnd wallets in one
transaction signed with bitcoinlib.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bitcoinlib.keys import Key
from bitcoinlib.transactions import Transaction

from p2pgrid.errors import ReportableError
from p2pgrid.regtest.btcd import BtcdRpc
from p2pgrid.secretfile import read_secret, write_secret

log = logging.getLogger(__name__)

NETWORK = "regtest"
COINBASE_MATURITY = 100
FEE_RATE_SAT_VB = 10
SATS_PER_BTC = 100_000_000


class FaucetError(ReportableError):
    """The faucet cannot pay (not enough matured coinbase, or btcd refused the tx)."""


@dataclass(frozen=True)
class Faucet:
    wif: str

    @classmethod
    def load_or_create(cls, path: Path) -> Faucet:
        if path.exists():
            return cls(wif=read_secret(path).decode().strip())
        faucet = cls(wif=Key(network=NETWORK).wif())
        write_secret(path, faucet.wif.encode() + b"\n")
        return faucet

    @property
    def _key(self) -> Key:
        return Key(self.wif, network=NETWORK)

    @property
    def address(self) -> str:
        return str(self._key.address(encoding="bech32", script_type="p2wpkh"))

    async def _spendable(self, rpc: BtcdRpc, need_sat: int) -> list[tuple[str, int]]:
        tip = await rpc.block_count()
        found: list[tuple[str, int]] = []
        total = 0
        for height in range(1, tip - COINBASE_MATURITY + 1):
            block = await rpc.block(await rpc.block_hash(height))
            txid = block["tx"][0]
            out = await rpc.tx_out(txid, 0)
            if out is None:  # spent already
                continue
            value = round(float(out["value"]) * SATS_PER_BTC)
            found.append((txid, value))
            total += value
            if total >= need_sat:
                return found
        raise FaucetError(
            f"faucet has {total} sat matured at height {tip}, needs {need_sat}: mine more blocks"
        )

    async def pay(self, rpc: BtcdRpc, outputs: list[tuple[str, int]]) -> str:
        """Pay ``(address, sat)`` outputs in one transaction; returns its txid."""
        want = sum(sat for _, sat in outputs)
        estimate = 11 + 31 * (len(outputs) + 1)
        inputs = await self._spendable(rpc, want + FEE_RATE_SAT_VB * (estimate + 68 * 20))
        fee = FEE_RATE_SAT_VB * (estimate + 68 * len(inputs))
        key = self._key
        tx = Transaction(network=NETWORK, witness_type="segwit")
        for txid, value in inputs:
            tx.add_input(
                prev_txid=txid, output_n=0, keys=key.public(), value=value, witness_type="segwit"
            )
        for address, sat in outputs:
            tx.add_output(sat, address)
        change = sum(v for _, v in inputs) - want - fee
        if change > 1000:
            tx.add_output(change, self.address)
        tx.sign(keys=[key])
        if not tx.verify():
            raise FaucetError("faucet transaction did not verify after signing")
        txid = await rpc.send_raw(tx.raw_hex())
        log.info("faucet paid %d sat to %d outputs in %s", want, len(outputs), txid)
        return txid
