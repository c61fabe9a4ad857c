"""Where one node process lives and whom it reaches: :class:`Runtime`, read from its
deployment file (:mod:`p2pgrid.config.setups`) and checked once.

``lnd``: where its lnd's REST API is and how to authenticate; ``data_dir``: its
own directory (its SQLite log lives there); ``bootstrap``: multiaddrs to dial
(``/ip4/<ip>/tcp/<port>/p2p/<peer id>``, on any host);
``listen_host``: the IPv4 address its libp2p hosts listen on and advertise to
peers (loopback by default; the host's own address when peers run elsewhere,
never ``0.0.0.0``, which no peer can dial); ``listen_port``: its TCP port (0: a free one);
``mdns``: also find peers on the LAN by mDNS;
``utility_pubkey``: the utility's lnd node, whose invoices agents pay;
``dashboard``: where the process serves its dashboard (loopback, a free port
unless given; a token when bound elsewhere).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from p2pgrid.dashboard import DashboardConfig
from p2pgrid.errors import ConfigError
from p2pgrid.lightning.lnd import LndEndpoint


@dataclasses.dataclass(frozen=True)
class Runtime:
    lnd: LndEndpoint
    data_dir: Path
    bootstrap: tuple[str, ...] = ()
    utility_pubkey: str = ""
    listen_port: int = 0
    dashboard: DashboardConfig = dataclasses.field(default_factory=DashboardConfig)
    listen_host: str = "127.0.0.1"
    mdns: bool = False

    def __post_init__(self) -> None:
        try:
            address = ipaddress.IPv4Address(self.listen_host)
        except ValueError as exc:
            raise ConfigError(f"listen_host {self.listen_host!r} is not an IPv4 address") from exc
        if address.is_unspecified:
            raise ConfigError(
                "listen_host 0.0.0.0 would be advertised to peers, who cannot dial it: "
                "give the address they reach this host at"
            )
