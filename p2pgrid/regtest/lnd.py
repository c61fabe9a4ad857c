"""lnd on regtest: its data directory, ports and command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from p2pgrid.lightning import LndEndpoint
from p2pgrid.regtest.btcd import RPC_PASS, RPC_USER, BtcdConfig


@dataclass(frozen=True)
class LndConfig:
    name: str
    lnd_dir: Path
    p2p_port: int
    grpc_port: int
    rest_port: int
    #: Where the REST API listens (and clients dial it): loopback unless processes
    #: on other hosts or network namespaces pay through this lnd.
    rest_host: str = "127.0.0.1"

    @property
    def macaroon(self) -> Path:
        return self.lnd_dir / "data" / "chain" / "bitcoin" / "regtest" / "admin.macaroon"

    @property
    def tls_cert(self) -> Path:
        return self.lnd_dir / "tls.cert"

    @property
    def p2p_host(self) -> str:
        return f"127.0.0.1:{self.p2p_port}"

    def endpoint(self) -> LndEndpoint:
        return LndEndpoint(
            name=self.name,
            rest_host=self.rest_host,
            rest_port=self.rest_port,
            tls_cert=self.tls_cert,
            macaroon=self.macaroon,
        )

    def args(self, binary: Path, btcd: BtcdConfig) -> list[str]:
        return [
            str(binary),
            f"--lnddir={self.lnd_dir}",
            f"--configfile={self.lnd_dir / 'lnd.conf'}",
            f"--alias={self.name}",
            "--bitcoin.regtest",
            "--bitcoin.node=btcd",
            f"--btcd.rpchost=127.0.0.1:{btcd.rpc_port}",
            f"--btcd.rpcuser={RPC_USER}",
            f"--btcd.rpcpass={RPC_PASS}",
            f"--btcd.rpccert={btcd.rpc_cert}",
            "--bitcoin.defaultchanconfs=1",
            "--noseedbackup",
            "--nobootstrap",
            "--accept-keysend",
            "--maxpendingchannels=10",
            "--trickledelay=50",
            f"--listen={self.p2p_host}",
            f"--rpclisten=127.0.0.1:{self.grpc_port}",
            f"--restlisten={self.rest_host}:{self.rest_port}",
            "--debuglevel=info",
            # Its TLS certificate names the REST address, which clients verify
            # (it always names 127.0.0.1).
            *([f"--tlsextraip={self.rest_host}"] if self.rest_host != "127.0.0.1" else []),
        ]
