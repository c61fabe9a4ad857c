"""A scenario as deployment files: what ``p2pgrid agent run`` and ``utility run`` start from.

:func:`write_deployment` turns a scenario (:mod:`p2pgrid.scenario_schema`) and
the lnd node of each of its processes into the files an operator would make
(docs/deploy.md), made by the operator's own steps (:mod:`p2pgrid.config.owner`):
``utility init`` (the utility's key and invoice secret), ``site init`` per site
(the owner's key and entries file), ``device add`` per device (its own key,
its ``enrol`` and ``device_info``) and ``site allocate`` for every period of
the scenario. Every key is fresh and random, never the scenario's seeds: the
seeds only name the sites there.

In ``dir`` it writes ``utility.toml``, one ``<site>.toml`` and ``<site>.entries``
per site, the keys under ``keys/`` (``keys/<utility>/``, ``keys/<site>/owner.key``
and ``keys/<site>/<device>.key``), and names each process's data directory
``<dir>/<name>`` (the utility's replica of a site: ``<utility>-<site>.db``).
The files name:

- fixed ports: one ``listen_port`` per device process and the utility's per
  site, free on this host when written (:func:`free_port`). A gateway listens
  on one address, its hub device's (the lowest index of its devices,
  :func:`p2pgrid.agent.gateway.hub_device`): that row names the port; the rows of its
  other devices name none (``listen_port`` 0, the schema's default: a port of
  their own, free when started, would they ever run alone; the same port
  written twice would read as two listeners on it, and collide if one were
  moved out of the gateway on that host), and the same ``listen_host``;
- bootstrap addresses, known before anything starts since a host's peer id
  follows from its member key and site (:func:`p2pgrid.net.peer_id_of`): a process
  dials its site's utility host and the (up to) four device processes listed
  before it, of any of the owner's sites, each named once (a gateway by its
  hub device's peer id, the one its host has); every device of a gateway
  carries its process's list;
- each site's ``other_sites`` (the scenario's sites are one owner's) with
  their devices' lnd nodes, and each device's own ``lnd_pubkey``;
- a site with a site node (the scenario's ``site_lightning``): its
  ``[site_lightning]`` (the node's endpoint and key) and its light devices'
  rows with ``lightning = "site"`` and no lnd of their own; the other sites
  pay a light device at the site node's key;
- a compressed clock: the scenario's intervals, periods and modelled start
  (``model_start_interval``), interval 0 at ``start``.

Where each device and the utility listen is ``listen_hosts`` (by name; loopback
by default; a gateway's devices where its hub device is), for processes placed
in network namespaces. The processes
(:attr:`Deployment.processes`): the utility, each device on its own lnd alone,
and per site node one gateway of its light devices (``agent run --device A
--device B``), named as the node: its devices share its one client of the node.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from p2pgrid.config.files import SiteFile, UtilityFile
from p2pgrid.config.keys import read_key
from p2pgrid.config.owner import (
    INVOICE_SECRET,
    OWNER_KEY,
    UTILITY_KEY,
    add_device,
    allocate,
    init_site,
    init_utility,
)
from p2pgrid.errors import ConfigError
from p2pgrid.identity import SiteIdentity
from p2pgrid.lightning.lnd import LndEndpoint
from p2pgrid.net import peer_id_of
from p2pgrid.scenario_schema import ScenarioModel, validate_scenario

#: The file the utility runs from, in the deployment's directory.
UTILITY_FILE = "utility.toml"


@dataclasses.dataclass(frozen=True)
class LndNode:
    """A process's lnd: where its REST API is, and its node's public key."""

    endpoint: LndEndpoint
    pubkey: str


@dataclasses.dataclass(frozen=True)
class Deployment:
    """The files of a scenario's processes, and how to start each one."""

    dir: Path
    scenario: Path  # the scenario file it was written from
    utility: str  # the utility's process name
    utility_file: Path
    site_files: dict[str, Path]  # site name -> its site file
    device_sites: dict[str, str]  # device name -> its site's name, in the scenario's order
    #: Each device process's name and the devices it runs (a gateway: several), in the
    #: scenario's order (:meth:`p2pgrid.scenario_schema.SiteModel.processes`).
    processes: dict[str, tuple[str, ...]]
    identities: dict[str, SiteIdentity]  # site name -> the owner's public key
    start: dt.datetime  # interval 0
    run_s: float  # from interval 0 to the end of the last period

    def argv(self, name: str) -> list[str]:
        """The ``p2pgrid`` arguments that run process ``name`` (the utility, a device
        or a gateway of light devices)."""
        if name == self.utility:
            return ["utility", "run", "--config", str(self.utility_file)]
        devices = self.processes[name]
        site = self.device_sites[devices[0]]
        chosen = [arg for d in devices for arg in ("--device", d)]
        return ["agent", "run", "--config", str(self.site_files[site]), *chosen]

    @property
    def names(self) -> tuple[str, ...]:
        """Every process: the utility first, then the devices' (:attr:`processes`)."""
        return (self.utility, *self.processes)

    def process_of(self, device: str) -> str:
        """The process that runs ``device`` (its own, or its site node's gateway)."""
        return next(name for name, devices in self.processes.items() if device in devices)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing on ``host`` listens on now (the kernel's pick; it is
    free when written, not reserved)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def load_scenario_model(path: Path) -> ScenarioModel:
    """The validated scenario file (its tables as written, for copying them)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc}") from exc
    return validate_scenario(data, source=str(path))


def write_deployment(
    scenario_path: Path,
    dir: Path,
    lnd: Mapping[str, LndNode],
    *,
    start: dt.datetime,
    listen_hosts: Mapping[str, str] | None = None,
    port: Callable[[str], int] = free_port,
) -> Deployment:
    """Write the deployment of the scenario at ``scenario_path`` into ``dir`` (see
    the module's contract); ``lnd`` gives every lnd node by name (the utility's, each
    device's on its own lnd, each site node), ``port`` picks a free TCP port on a host.
    Refuses a ``dir`` that holds a deployment already."""
    model = load_scenario_model(scenario_path)
    hosts = dict(listen_hosts or {})
    names = [model.utility.name, *(d.name for s in model.sites for d in s.devices)]
    processes = {name: ds for s in model.sites for name, ds in s.processes().items()}
    node = {d.name: s.node_of(d) for s in model.sites for d in s.devices}
    missing = [n for n in (model.utility.name, *processes) if n not in lnd]
    if missing:
        raise ConfigError(f"no lnd node for {', '.join(missing)}")
    written = [dir / UTILITY_FILE, dir / "keys"]
    written += [dir / f"{s.name}{suffix}" for s in model.sites for suffix in (".toml", ".entries")]
    if any(path.exists() for path in written):
        raise ConfigError(f"{dir} holds a deployment already: it is written once")
    dir.mkdir(parents=True, exist_ok=True)
    keys = dir / "keys"
    uname = model.utility.name
    utility = init_utility(keys / uname)
    owners = {
        s.name: init_site(keys / s.name, dir / f"{s.name}.entries", utility["key"])
        for s in model.sites
    }
    identities = {name: SiteIdentity.from_hex(c.site) for name, c in owners.items()}
    at = hosts.get(uname, "127.0.0.1")
    utility_host = {s.name: (at, port(at)) for s in model.sites}
    # A process listens on one address, where its hub device (its lowest index,
    # the first of ``processes``) is placed: the devices of a gateway speak through
    # its one host, as that device (p2pgrid.agent.gateway.open_hub).
    first_of = {d: ds[0] for ds in processes.values() for d in ds}
    device_host = {n: hosts.get(first_of[n], "127.0.0.1") for n in names[1:]}
    process_port = {ds[0]: port(device_host[ds[0]]) for ds in processes.values()}
    clock = _clock(model, start)
    tariff = model.tariff.model_dump(mode="json", exclude_defaults=True)
    tariff["msat_per_kwh"] = model.tariff.msat_per_kwh
    agent = model.agent.model_dump(mode="json", exclude_defaults=True)  # the scenario's tuning

    def site_doc(site_number: int, bootstrap: Mapping[str, list[str]]) -> dict[str, Any]:
        site = model.sites[site_number]
        devices = []
        for d in site.devices:
            row = d.model_dump(mode="json", exclude_defaults=True)
            if row.get("policy") == "sell_energy":  # deprecated: the default's meaning
                del row["policy"]
            row["meter"] = _meter(d.meter.model_dump(mode="json", exclude_defaults=True),
                                  scenario_path.parent)  # fmt: skip
            row |= {
                "key_file": f"keys/{site.name}/{d.name}.key",
                "data_dir": d.name,
                "listen_host": device_host[d.name],
                "listen_port": process_port.get(d.name),  # None: not written
                "bootstrap": bootstrap.get(d.name, []),
            }
            if d.lightning == "own":  # a light device is paid at [site_lightning]'s key
                row |= {"lnd": _lnd(lnd[d.name].endpoint), "lnd_pubkey": lnd[d.name].pubkey}
            devices.append(row)
        lightning = {}  # the site node of its light devices, if it has one
        if site.site_lightning is not None:
            site_lnd = lnd[site.site_lightning.node]
            lightning["site_lightning"] = {
                "pubkey": site_lnd.pubkey,
                "lnd": _lnd(site_lnd.endpoint),
            }
        return {
            "site": {
                "name": site.name,
                "owner_pubkey": owners[site.name].site,
                "budget_msat": site.budget_msat,
                "entries": f"{site.name}.entries",
                "owner_key": f"keys/{site.name}/{OWNER_KEY}",
            },
            "clock": clock,
            "tariff": tariff,
            "utility": {"key": utility["key"], "lnd_pubkey": lnd[uname].pubkey},
            **({"agent": agent} if agent else {}),
            "devices": devices,
            "other_sites": [
                {
                    "name": other.name,
                    "owner_pubkey": owners[other.name].site,
                    "entries": f"{other.name}.entries",
                    "lnd_pubkeys": {d.name: lnd[node[d.name]].pubkey for d in other.devices},
                }
                for other in model.sites
                if other is not site
            ],
            **lightning,
        }

    site_files = {s.name: dir / f"{s.name}.toml" for s in model.sites}
    for number, site in enumerate(model.sites):  # the owner's steps: enrol, allocate
        write_toml(site_files[site.name], site_doc(number, {}))
        site_file = SiteFile(site_files[site.name])
        for d in site.devices:
            add_device(site_file, d.name, None)
        allocate(site_file, 0, model.clock.periods)
    utility_key = read_key(keys / uname / UTILITY_KEY)
    bootstrap: dict[str, list[str]] = {}
    listed: list[str] = []  # the processes' addresses, in the scenario's order
    for site in model.sites:
        host, tcp = utility_host[site.name]
        peer = peer_id_of(utility_key, identities[site.name])
        at_utility = f"/ip4/{host}/tcp/{tcp}/p2p/{peer}"
        for d in site.devices:
            if first_of[d.name] != d.name:  # a gateway's device: its process's list, below
                continue
            bootstrap[d.name] = [at_utility, *listed[-4:]]
            key = read_key(site_files[site.name].parent / f"keys/{site.name}/{d.name}.key")
            listed.append(
                f"/ip4/{device_host[d.name]}/tcp/{process_port[d.name]}/p2p/"
                + peer_id_of(key, identities[site.name])
            )
    bootstrap |= {d: bootstrap[first] for d, first in first_of.items() if d != first}
    for number, site in enumerate(model.sites):
        write_toml(site_files[site.name], site_doc(number, bootstrap))
    utility_file = dir / UTILITY_FILE
    write_toml(
        utility_file,
        {
            "utility": {
                "name": uname,
                "key_file": f"keys/{uname}/{UTILITY_KEY}",
                "invoice_secret_file": f"keys/{uname}/{INVOICE_SECRET}",
                "data_dir": uname,
                "listen_host": hosts.get(uname, "127.0.0.1"),
                "lnd": _lnd(lnd[uname].endpoint),
                "readings_wait_s": model.utility.readings_wait_s,
                "lnd_away_wait_s": model.utility.lnd_away_wait_s,
            },
            "clock": clock,
            "tariff": tariff,
            "sites": [
                {
                    "name": s.name,
                    "owner_pubkey": owners[s.name].site,
                    "entries": f"{s.name}.entries",
                    "budget_msat": s.budget_msat,
                    "listen_port": utility_host[s.name][1],
                }
                for s in model.sites
            ],
        },
    )
    for path in site_files.values():  # what the processes will read, checked once here
        SiteFile(path)
    UtilityFile(utility_file)
    return Deployment(
        dir=dir,
        scenario=scenario_path,
        utility=uname,
        utility_file=utility_file,
        site_files=site_files,
        device_sites={d.name: s.name for s in model.sites for d in s.devices},
        processes=processes,
        identities=identities,
        start=start,
        run_s=model.clock.periods * model.clock.intervals_per_period * model.clock.interval_s,
    )


def _clock(model: ScenarioModel, start: dt.datetime) -> dict[str, Any]:
    if start.tzinfo is None:
        raise ConfigError(f"start {start} needs a time zone")
    return {
        "start": start.astimezone(dt.UTC),
        "interval_s": model.clock.interval_s,
        "intervals_per_period": model.clock.intervals_per_period,
        "periods": model.clock.periods,
        "model_start_interval": model.clock.model_start_interval,
    }


def _meter(meter: dict[str, Any], base: Path) -> dict[str, Any]:
    """A meter table as the scenario wrote it; a csv path made absolute (the
    scenario's is relative to the scenario file)."""
    if meter.get("path"):
        meter["path"] = str((base / meter["path"]).resolve())
    return meter


def _lnd(endpoint: LndEndpoint) -> dict[str, Any]:
    return {
        "rest_host": endpoint.rest_host,
        "rest_port": endpoint.rest_port,
        "tls_cert": str(endpoint.tls_cert),
        "macaroon": str(endpoint.macaroon),
    }


# -- TOML out --------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # the whole key (fullmatch: "$" admits a final "\n")


def write_toml(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` as TOML: top-level tables (``[t]``) and arrays of tables
    (``[[t]]``), tables inside them inline (whole, or not at all: a temp file)."""
    lines: list[str] = []
    for name, value in doc.items():
        if isinstance(value, Mapping):
            lines += [f"[{_key(name)}]", *_pairs(value), ""]
        elif isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            for row in value:
                lines += [f"[[{_key(name)}]]", *_pairs(row), ""]
        else:
            raise ConfigError(f"{path}: top-level {name!r} must be a table or tables")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)


def _pairs(table: Mapping[str, Any]) -> list[str]:
    return [f"{_key(k)} = {_value(v)}" for k, v in table.items() if v is not None]


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    """A TOML basic string: JSON's, but for DEL, which TOML wants escaped, and
    characters past U+FFFF, which JSON's ASCII escapes as surrogate pairs."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {value!r} as TOML")
