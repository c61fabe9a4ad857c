"""A restarted utility listens where it listened before: ports.json in its data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pgrid.errors import ConfigError
from p2pgrid.utility.process import PORTS_FILE, listen_ports, save_listen_ports, tcp_port


def test_ports_survive_a_restart(tmp_path: Path) -> None:
    assert listen_ports(tmp_path) == {}  # first start: any free port
    save_listen_ports(tmp_path, {"store-1": 40123, "store-2": 40124})
    assert listen_ports(tmp_path) == {"store-1": 40123, "store-2": 40124}


def test_the_port_is_read_from_the_multiaddr() -> None:
    assert tcp_port(["/ip4/127.0.0.1/tcp/40123/p2p/12D3KooWabc"]) == 40123
    with pytest.raises(ConfigError, match="no TCP address"):
        tcp_port(["/ip4/127.0.0.1/udp/1/quic"])


@pytest.mark.parametrize("text", ["[1, 2]", "{", '{"store-1": "x"}'])
def test_a_bad_ports_file_is_named(tmp_path: Path, text: str) -> None:
    (tmp_path / PORTS_FILE).write_text(text)
    with pytest.raises(ConfigError, match=PORTS_FILE):
        listen_ports(tmp_path)
