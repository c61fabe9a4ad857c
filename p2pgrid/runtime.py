"""What a launcher hands each process of a run besides the scenario (JSON file).

``lnd``: where its lnd's REST API is and how to authenticate; ``data_dir``: its
own directory (its SQLite log lives there); ``bootstrap``: multiaddrs to dial
(``/ip4/<ip>/tcp/<port>/p2p/<peer id>``, on any host);
``listen_host``: the IPv4 address its libp2p hosts listen on and advertise to
peers (loopback by default; the host's own address when peers run elsewhere,
never ``0.0.0.0``, which no peer can dial); ``listen_port``: its TCP port (0: a free one);
``mdns``: also find peers on the LAN by mDNS;
``provision``: the site owner's signed entries (hex), per site name;
``utility_pubkey``: the utility's lnd node, whose invoices agents pay;
``dashboard``: where the process serves its dashboard (loopback, a free port
unless given; a token when bound elsewhere).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
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
    provision: dict[str, list[str]] = dataclasses.field(default_factory=dict)
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

    def to_json(self) -> str:
        lnd = dataclasses.asdict(self.lnd)
        lnd["tls_cert"], lnd["macaroon"] = str(self.lnd.tls_cert), str(self.lnd.macaroon)
        return json.dumps(
            {
                "lnd": lnd,
                "data_dir": str(self.data_dir),
                "bootstrap": list(self.bootstrap),
                "utility_pubkey": self.utility_pubkey,
                "provision": self.provision,
                "listen_host": self.listen_host,
                "listen_port": self.listen_port,
                "mdns": self.mdns,
                "dashboard": dataclasses.asdict(self.dashboard),
            }
        )

    @classmethod
    def load(cls, path: Path) -> Runtime:
        try:
            raw = json.loads(path.read_text())
            lnd = raw["lnd"]
            return cls(
                lnd=LndEndpoint(
                    name=lnd["name"],
                    rest_host=lnd["rest_host"],
                    rest_port=int(lnd["rest_port"]),
                    tls_cert=Path(lnd["tls_cert"]),
                    macaroon=Path(lnd["macaroon"]),
                ),
                data_dir=Path(raw["data_dir"]),
                bootstrap=tuple(raw.get("bootstrap", ())),
                utility_pubkey=str(raw.get("utility_pubkey", "")),
                provision={k: list(v) for k, v in raw.get("provision", {}).items()},
                listen_host=str(raw.get("listen_host", "127.0.0.1")),
                listen_port=int(raw.get("listen_port", 0)),
                mdns=_flag(raw.get("mdns", False), "mdns"),
                dashboard=DashboardConfig(**raw.get("dashboard", {})),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"bad runtime file {path}: {exc!r}") from exc
        except ConfigError as exc:  # a field's own check
            raise ConfigError(f"bad runtime file {path}: {exc}") from exc


def _flag(value: object, key: str) -> bool:
    """A JSON boolean (``bool("false")`` would be true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{key} must be true or false, not {value!r}")
    return value
