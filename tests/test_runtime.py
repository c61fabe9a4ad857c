"""Where a process listens and whom it dials, for peers on other hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pgrid.errors import ConfigError
from p2pgrid.lightning.lnd import LndEndpoint
from p2pgrid.regtest.btcd import BtcdConfig
from p2pgrid.regtest.lnd import LndConfig
from p2pgrid.runtime import Runtime


def lnd(tmp_path: Path) -> LndEndpoint:
    return LndEndpoint("n", "10.77.3.1", 10009, tmp_path / "tls.cert", tmp_path / "m.macaroon")


@pytest.mark.parametrize(
    ("host", "why"),
    [("0.0.0.0", "cannot dial"), ("node-a.lan", "not an IPv4"), ("::1", "not an IPv4")],
)
def test_a_listen_host_peers_cannot_dial_is_refused(tmp_path: Path, host: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        Runtime(lnd(tmp_path), tmp_path, listen_host=host)


def test_lnd_rest_listens_where_clients_dial_it(tmp_path: Path) -> None:
    """A stack whose REST API other hosts reach: lnd listens there, its TLS
    certificate names that address, and clients are given it."""
    cfg = LndConfig("n", tmp_path, 1, 2, 3, rest_host="10.77.3.1")
    btcd = BtcdConfig(tmp_path / "btcd", 4, 5, "mining-address")
    args = cfg.args(tmp_path / "lnd", btcd)
    assert "--restlisten=10.77.3.1:3" in args
    assert "--tlsextraip=10.77.3.1" in args
    assert cfg.endpoint().rest_host == "10.77.3.1"
    loopback = LndConfig("n", tmp_path, 1, 2, 3).args(tmp_path / "lnd", btcd)
    assert "--restlisten=127.0.0.1:3" in loopback
    assert not [a for a in loopback if a.startswith("--tlsextraip")]
