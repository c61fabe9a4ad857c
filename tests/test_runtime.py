"""The runtime file: where a process listens and whom it dials, for peers on other hosts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from p2pgrid.errors import ConfigError
from p2pgrid.lightning.lnd import LndEndpoint
from p2pgrid.regtest.btcd import BtcdConfig
from p2pgrid.regtest.lnd import LndConfig
from p2pgrid.runtime import Runtime

PEER = "/ip4/10.77.3.11/tcp/40123/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"


def lnd(tmp_path: Path) -> LndEndpoint:
    return LndEndpoint("n", "10.77.3.1", 10009, tmp_path / "tls.cert", tmp_path / "m.macaroon")


def test_listen_host_and_bootstrap_survive_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rt.json"
    runtime = Runtime(
        lnd(tmp_path), tmp_path, bootstrap=(PEER,), listen_host="10.77.3.12", mdns=True
    )
    path.write_text(runtime.to_json())
    assert Runtime.load(path) == runtime
    assert Runtime.load(path).listen_host == "10.77.3.12"
    assert Runtime.load(path).mdns is True


def test_an_old_file_listens_on_loopback(tmp_path: Path) -> None:
    path = tmp_path / "rt.json"
    path.write_text(Runtime(lnd(tmp_path), tmp_path).to_json())
    raw = json.loads(path.read_text())
    del raw["listen_host"], raw["mdns"]
    path.write_text(json.dumps(raw))
    assert Runtime.load(path).listen_host == "127.0.0.1"
    assert Runtime.load(path).mdns is False


def test_mdns_is_a_json_boolean(tmp_path: Path) -> None:
    path = tmp_path / "rt.json"
    raw = json.loads(Runtime(lnd(tmp_path), tmp_path).to_json())
    path.write_text(json.dumps({**raw, "mdns": "false"}))
    with pytest.raises(ConfigError, match="mdns must be true or false"):
        Runtime.load(path)


@pytest.mark.parametrize(
    ("host", "why"),
    [("0.0.0.0", "cannot dial"), ("node-a.lan", "not an IPv4"), ("::1", "not an IPv4")],
)
def test_a_listen_host_peers_cannot_dial_is_refused(tmp_path: Path, host: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        Runtime(lnd(tmp_path), tmp_path, listen_host=host)
    path = tmp_path / "rt.json"
    raw = json.loads(Runtime(lnd(tmp_path), tmp_path).to_json())
    path.write_text(json.dumps({**raw, "listen_host": host}))
    with pytest.raises(ConfigError, match=f"bad runtime file {re.escape(str(path))}: .*{why}"):
        Runtime.load(path)


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
