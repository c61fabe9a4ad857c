"""Deployment files: a site file and a utility file, validated once.

Both are TOML, read by :func:`load_site_file` and :func:`load_utility_file`
into strict pydantic models (unknown keys refused, one type per key, every
problem one line ``<file>: <key>: <problem>``, a :class:`ConfigError`). Secrets
are never in them: key files, lnd's macaroon and TLS certificate are named by
path (relative paths are relative to the file's own directory).

The **site file** is the owner's description of one site, copied to every host
of the site: the site (its owner's public key, budget, the owner's entries
file), the clock, the tariff, the utility's keys, and one ``[[devices]]`` row per
device with what its host needs to run it (key file, data directory, listen
port, bootstrap peers, lnd), and an ``[[other_sites]]`` row per other site of
the same owner (its identity, a copy of its entries file, its devices' lnd
nodes) whose devices may share with this site's. ``p2pgrid agent run --config site.toml --device
NAME`` runs one row. The **utility file** is the utility's: its key and invoice
secret files, data directory, lnd, and one ``[[sites]]`` row per site it serves.
Each process (a device row, the utility) may say where it serves its dashboard
(``[devices.dashboard]``, ``[utility.dashboard]``: ``host``, ``port``,
``token_file``); by default loopback on a free port.

The clock is real time by default: 15-minute intervals, billing periods that
are the calendar months of ``timezone`` (default UTC; period 0 is the month of
``start``), and no end: nodes run period after period until stopped. Giving
``intervals_per_period`` makes periods that many intervals long instead,
counted from ``start``; a shorter ``interval_s`` compresses the clock (tests,
trials); ``periods`` ends the run after that many periods;
``model_start_interval`` (trials) replays the meters from a chosen modelled
interval instead of the one ``start`` falls in.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import tomllib
import zoneinfo
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Self, TypeVar

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

from p2pgrid.agent.config import AgentConfig
from p2pgrid.billing import MODEL_EPOCH_MS, REAL_INTERVAL_S, FlatTariff
from p2pgrid.billing.period import LONGEST_MONTH_INTERVALS, METER_INTERVAL_S
from p2pgrid.dashboard import DashboardConfig
from p2pgrid.errors import ConfigError
from p2pgrid.identity import is_pubkey
from p2pgrid.lightning.lnd import LndEndpoint
from p2pgrid.scenario import Timing
from p2pgrid.scenario_schema import (
    Count,
    DeviceModel,
    NonEmpty,
    Positive,
    ReadingsWait,
    TariffModel,
    _Strict,
    describe_errors,
    devices_used_twice,
    warn_deprecated,
)
from p2pgrid.secretfile import read_secret
from p2pgrid.utility.invoicer import LND_AWAY_WAIT_S


def _pubkey_hex(value: Any) -> Any:
    if isinstance(value, str):
        try:
            ok = is_pubkey(bytes.fromhex(value))
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("not a public key (66 hex characters, 02 or 03 first)")
    return value


PubkeyHex = Annotated[str, BeforeValidator(_pubkey_hex)]


def _listen_host(value: Any) -> Any:
    if isinstance(value, str):
        try:
            address = ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError("not an IPv4 address") from None
        if address.is_unspecified:
            raise ValueError("0.0.0.0 cannot be dialled: give the address peers reach this host at")
    return value


#: The address a node's libp2p hosts listen on and advertise (see :mod:`p2pgrid.runtime`).
ListenHost = Annotated[str, BeforeValidator(_listen_host)]
Port = Annotated[int, Field(ge=0, le=65535)]
Multiaddr = Annotated[str, Field(pattern=r"^/(ip4|ip6|dns4|dns6)/.+/tcp/\d+/p2p/\w+$")]


def _bind_host(value: Any) -> Any:
    if isinstance(value, str) and value != "localhost":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("not an IP address (or localhost)") from None
    return value


class DashboardModel(_Strict):
    """Where a process serves its read-only dashboard (:mod:`p2pgrid.dashboard`):
    loopback on a free port by default. A host beyond loopback needs
    ``token_file``: a secret file (owner-only, like a key file) holding the token
    every request must carry, of at least 16 characters."""

    host: Annotated[str, BeforeValidator(_bind_host)] = "127.0.0.1"
    port: Port = 0
    token_file: str = ""

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> Self:
        loopback = self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        if not loopback and not self.token_file:
            raise ValueError(f"host {self.host} is beyond loopback: it needs a token_file")
        return self


class LndModel(_Strict):
    """Where the node's lnd REST API is; macaroon and certificate by path."""

    rest_host: NonEmpty = "127.0.0.1"
    rest_port: Annotated[int, Field(gt=0, le=65535)] = 8080
    tls_cert: NonEmpty
    macaroon: NonEmpty


class ClockFileModel(_Strict):
    start: dt.datetime  # interval 0 begins here (a TOML date-time with its offset)
    interval_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = REAL_INTERVAL_S
    intervals_per_period: Count | None = None  # None: calendar months of `timezone`
    timezone: NonEmpty = "UTC"  # an IANA name, e.g. Europe/Berlin
    periods: Count | None = None  # None: until stopped
    #: The modelled metering interval of interval 0 (a trial replaying a chosen
    #: time of day); None: the interval ``start`` falls in.
    model_start_interval: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _known_zone(self) -> Self:
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.timezone!r}") from exc
        return self

    @model_validator(mode="after")
    def _aware(self) -> Self:
        if self.start.tzinfo is None:
            raise ValueError("start needs a UTC offset (e.g. 2027-01-01T00:00:00Z)")
        return self

    def timing(self) -> Timing:
        start_ms = int(self.start.timestamp() * 1000)
        model_start = max(0, (start_ms - MODEL_EPOCH_MS) // (METER_INTERVAL_S * 1000))
        if self.model_start_interval is not None:
            model_start = self.model_start_interval
        if self.intervals_per_period is None:
            return Timing(LONGEST_MONTH_INTERVALS, self.interval_s, self.periods, model_start,
                          monthly_timezone=self.timezone)  # fmt: skip
        return Timing(self.intervals_per_period, self.interval_s, self.periods, model_start)


class SiteSection(_Strict):
    name: NonEmpty
    owner_pubkey: PubkeyHex  # what `p2pgrid site init` printed
    budget_msat: Positive
    entries: NonEmpty  # the owner's signed entries file
    owner_key: str = ""  # only on the owner's machine: `device add/revoke`, `site allocate`


class UtilityRef(_Strict):
    key: PubkeyHex  # the utility's key for the site (`p2pgrid utility init` printed it)
    lnd_pubkey: PubkeyHex  # the utility's lnd node: devices pay its invoices


class OtherSiteModel(_Strict):
    """Another site of the same owner: its devices and this site's may share
    budget and surplus (the owner's topic); its entries file tells its members."""

    name: NonEmpty
    owner_pubkey: PubkeyHex
    entries: NonEmpty  # a copy of that site's entries file
    #: Its devices' lnd nodes by name (as its ``device_info`` entries name them):
    #: where this site's devices pay them for shares and sales.
    lnd_pubkeys: dict[NonEmpty, PubkeyHex] = Field(default_factory=dict)


class SiteLightningModel(_Strict):
    """The site's own lnd, through which its light devices pay and are paid."""

    lnd: LndModel
    pubkey: PubkeyHex  # its node's public key: every light device's ``lnd_pubkey``


class SiteDeviceModel(DeviceModel):
    key_file: NonEmpty
    data_dir: NonEmpty
    listen_host: ListenHost = "127.0.0.1"
    listen_port: Port = 0
    bootstrap: list[Multiaddr] = Field(default_factory=list)
    mdns: bool = False
    #: ``lightning`` (the scenario's key, :class:`DeviceModel`): "own", the device has
    #: its lnd (``lnd``); "site", a light device, paying and paid through the site
    #: node (``[site_lightning]``), with no ``lnd`` of its own.
    lnd: LndModel | None = None
    lnd_pubkey: PubkeyHex | None = None  # where the site's peers pay this device
    dashboard: DashboardModel = DashboardModel()  # where this device's dashboard listens

    @model_validator(mode="after")
    def _one_lnd(self) -> Self:
        if self.lightning == "own" and self.lnd is None:
            raise ValueError('a device names its lnd ([devices.lnd]) or says lightning = "site"')
        if self.lightning == "site" and self.lnd is not None:
            raise ValueError('a light device (lightning = "site") names no lnd of its own')
        return self


class SiteFileModel(_Strict):
    site: SiteSection
    clock: ClockFileModel
    tariff: TariffModel
    utility: UtilityRef
    devices: Annotated[list[SiteDeviceModel], Field(min_length=1)]
    agent: AgentConfig = AgentConfig()  # the agents' tuning; every key has a default
    other_sites: list[OtherSiteModel] = Field(default_factory=list)  # the owner's other sites
    site_lightning: SiteLightningModel | None = None  # the site node of its light devices

    @model_validator(mode="after")
    def _light_on_the_site_node(self) -> Self:
        for number, device in enumerate(self.devices):
            if device.lightning != "site":
                continue
            if self.site_lightning is None:
                raise ValueError(
                    f'devices[{number}] ({device.name}) is light (lightning = "site"): '
                    "the file needs a [site_lightning] section"
                )
            if device.lnd_pubkey not in (None, self.site_lightning.pubkey):
                raise ValueError(
                    f"devices[{number}].lnd_pubkey: a light device is paid on the site node "
                    f"({self.site_lightning.pubkey[:16]}...), not {device.lnd_pubkey[:16]}..."
                )
        return self

    @model_validator(mode="after")
    def _unique(self) -> Self:
        twice = devices_used_twice(list(self.devices))
        if twice:
            raise ValueError(twice)
        names = Counter([self.site.name, *(s.name for s in self.other_sites)])
        keys = Counter([self.site.owner_pubkey, *(s.owner_pubkey for s in self.other_sites)])
        again = sorted(n for n, c in names.items() if c > 1) + sorted(
            k for k, c in keys.items() if c > 1
        )
        if again:
            raise ValueError(f"other_sites: a site named twice: {', '.join(again)}")
        return self

    @model_validator(mode="after")
    def _trade_sites_are_other_sites(self) -> Self:
        known = {self.site.name, *(s.name for s in self.other_sites)}
        unknown = sorted(set(self.agent.energy.trade_sites) - known)
        if unknown:
            raise ValueError(
                f"agent.energy.trade_sites: no [[other_sites]] row named {', '.join(unknown)} "
                f"(other sites: {', '.join(sorted(known - {self.site.name})) or 'none'})"
            )
        return self


class UtilitySection(_Strict):
    name: NonEmpty = "utility"
    key_file: NonEmpty
    invoice_secret_file: NonEmpty
    data_dir: NonEmpty
    listen_host: ListenHost = "127.0.0.1"
    bootstrap: list[Multiaddr] = Field(default_factory=list)
    mdns: bool = False
    lnd: LndModel
    readings_wait_s: ReadingsWait = 60.0
    #: How long the first call at start and an invoicing or status call retry an absent lnd.
    lnd_away_wait_s: ReadingsWait = LND_AWAY_WAIT_S
    dashboard: DashboardModel = DashboardModel()  # where the utility's dashboard listens


class UtilitySiteModel(_Strict):
    name: NonEmpty
    owner_pubkey: PubkeyHex
    entries: NonEmpty
    budget_msat: Positive
    listen_port: Port = 0


class UtilityFileModel(_Strict):
    utility: UtilitySection
    clock: ClockFileModel
    tariff: TariffModel
    sites: Annotated[list[UtilitySiteModel], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique(self) -> Self:
        twice = sorted(n for n, c in Counter(s.name for s in self.sites).items() if c > 1)
        if twice:
            raise ValueError(f"site name used twice: {', '.join(twice)}")
        return self


M = TypeVar("M", bound=BaseModel)


def _load(path: Path, model: type[M]) -> M:
    try:
        data: Mapping[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, data, source=path.name)) from None


class _ConfigFile:
    """A file's path: relative paths inside it start from its directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def resolve(self, name: str) -> Path:
        return (self.path.parent / Path(name).expanduser()).resolve()

    def dashboard(self, model: DashboardModel, key: str) -> DashboardConfig:
        """The dashboard config of ``model`` (the table at ``key``), its token read
        from its secret file."""
        token = ""
        if model.token_file:
            path = self.resolve(model.token_file)
            try:
                token = read_secret(path).decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ConfigError(
                    f"{self.path.name}: {key}.token_file: {path} is not text"
                ) from None
            except ConfigError as exc:  # unreadable, or others may read it
                raise type(exc)(f"{self.path.name}: {key}.token_file: {exc}") from None
        try:
            return DashboardConfig(model.host, model.port, token)
        except ConfigError as exc:
            raise ConfigError(f"{self.path.name}: {key}: {exc}") from None

    def lnd(self, name: str, lnd: LndModel) -> LndEndpoint:
        return LndEndpoint(
            name=name,
            rest_host=lnd.rest_host,
            rest_port=lnd.rest_port,
            tls_cert=self.resolve(lnd.tls_cert),
            macaroon=self.resolve(lnd.macaroon),
        )


class SiteFile(_ConfigFile):
    """A validated site file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.model = _load(path, SiteFileModel)
        warn_deprecated(self.model.devices, f"{path}: devices")

    def device_lnd(self, row: SiteDeviceModel) -> LndEndpoint:
        """Where ``row``'s lnd is: its own, or the site node for a light device."""
        if row.lnd is not None:
            return self.lnd(row.name, row.lnd)
        assert self.model.site_lightning is not None  # the model checked it
        return self.lnd(f"{self.model.site.name}-site", self.model.site_lightning.lnd)

    def lnd_pubkey(self, row: SiteDeviceModel) -> str | None:
        """Where the site's peers pay ``row``: the site node for a light device."""
        if row.lightning == "site" and self.model.site_lightning is not None:
            return self.model.site_lightning.pubkey
        return row.lnd_pubkey

    def device(self, name: str) -> SiteDeviceModel:
        for device in self.model.devices:
            if device.name == name:
                return device
        names = ", ".join(d.name for d in self.model.devices)
        raise ConfigError(f"{self.path.name}: devices: no device {name!r} (devices: {names})")

    @property
    def tariff(self) -> FlatTariff:
        return self.model.tariff.flat


class UtilityFile(_ConfigFile):
    """A validated utility file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.model = _load(path, UtilityFileModel)

    @property
    def tariff(self) -> FlatTariff:
        return self.model.tariff.flat
