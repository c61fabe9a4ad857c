"""A p2pgrid deployment described as data: the utility, the sites, their devices.

Built once from TOML (:func:`load_scenario`, validated by
:mod:`p2pgrid.scenario_schema`: a bad file is one clear ConfigError, never a
traceback nor a silent default) and passed through constructors;
every process of a run (the utility node, each device agent, the launcher)
reads the same scenario and picks its own part by name. Keys come from seeds
here (demo and tests, :func:`demo_key`): every key is its own hash of the seed
and its role, so no key tells anything about another; a real deployment
generates each key at random (:meth:`p2pgrid.identity.Signer.generate`).

Example::

    [clock]
    intervals_per_period = 16   # metering intervals per billing period
    interval_s = 0.75           # real seconds per interval (900 in real life)
    periods = 2
    model_start_interval = 40   # the run starts at 10:00 of modelled day 0
    [tariff]
    msat_per_kwh = 250000
    [utility]
    seed = "utility"
    readings_wait_s = 60        # optional: wait at a period's end for last readings
    [[sites]]
    name = "store-1"
    seed = "store-1"
    budget_msat = 3000000
    [[sites.devices]]
    name = "s1-fridge"
    index = 0
    device_class = "fridge"
    priority = "critical"
    weight = 1
    meter = { kind = "bdew", profile = "g0", annual_kwh = 4000 }
    [[sites.devices]]
    name = "s1-hvac"
    index = 1
    device_class = "hvac"
    lightning = "site"          # a light device: it pays through the site node
    meter = { kind = "bdew", profile = "g0", annual_kwh = 9000 }
    [sites.site_lightning]
    node = "store-1-node"       # the site node (needed once a device is light)
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from p2pgrid.agent.config import AgentConfig
from p2pgrid.billing import FlatTariff, MonthlyClock, PeriodClock, model_ms
from p2pgrid.errors import ConfigError
from p2pgrid.identity import Signer, SiteIdentity
from p2pgrid.market import KEEP_LEFTOVER, LeftoverPolicy, Priority, SurplusPolicy
from p2pgrid.meter import MeterSource, bdew_profile, solar_profile
from p2pgrid.meter.source import CsvFormat, CsvSource
from p2pgrid.scenario_schema import MeterModel, validate_scenario, warn_deprecated


def demo_key(*labels: str) -> Signer:
    """A demo key: SHA-256 of ``"p2pgrid demo key"`` and the labels, NUL-separated.

    Independent per key (a hash, not a derivation): the owner's key, each
    device's and the utility's hash different labels.
    """
    secret = hashlib.sha256("\0".join(("p2pgrid demo key", *labels)).encode()).digest()
    return Signer.from_secret(secret)


@dataclasses.dataclass(frozen=True)
class MeterSpec:
    kind: str  # "bdew", "solar" or "csv"
    profile: str = "h0"
    annual_kwh: int = 3000
    peak_w: int = 0
    path: str = ""  # a csv meter's file (resolved against the scenario's directory)
    start_day: int = 0
    csv: CsvFormat | None = None  # how to read a csv meter's file

    def source(self) -> MeterSource:
        if self.kind == "bdew":
            return bdew_profile(self.profile, self.annual_kwh, start_day=self.start_day, days=7)
        if self.kind == "solar":
            return solar_profile(self.peak_w, days=1)
        if self.kind == "csv":
            return CsvSource(Path(self.path), self.csv)
        raise ConfigError(f"unknown meter kind {self.kind!r} (bdew, solar, csv)")


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    name: str
    index: int
    device_class: str
    meter: MeterSpec
    priority: Priority = Priority.NORMAL
    weight: int = 1  # share of the site budget
    policy: SurplusPolicy = SurplusPolicy.CARRY_OVER
    #: Leftover allowance near a period's end (docs/market.md 2.9).
    leftover: LeftoverPolicy = KEEP_LEFTOVER
    #: A device whose consumption is also fed by its own meter's production.
    producer: bool = False
    #: A light device: no lnd of its own, it pays and is paid through its site's
    #: node (``lightning = "site"``; docs/architecture.md, "Light devices").
    light: bool = False


@dataclasses.dataclass(frozen=True)
class SiteSpec:
    name: str
    seed: str
    budget_msat: int
    devices: tuple[DeviceSpec, ...]
    #: The lnd node its light devices pay and are paid through (None: it has none).
    site_node: str | None = None

    def node_of(self, device: DeviceSpec) -> str:
        """The lnd node ``device`` pays from: its own (named as the device), or the
        site node for a light device."""
        if device.light:
            assert self.site_node is not None  # the schema refuses a light device without
            return self.site_node
        return device.name

    @property
    def light_devices(self) -> tuple[DeviceSpec, ...]:
        return tuple(d for d in self.devices if d.light)

    @property
    def owner_signer(self) -> Signer:
        """The site owner's key: the site *is* its public key."""
        return demo_key("site owner", self.seed)

    @property
    def identity(self) -> SiteIdentity:
        return SiteIdentity(self.owner_signer.pubkey)

    def device_signer(self, index: int) -> Signer:
        """Device ``index``'s own key (the owner enrols its public key in the log)."""
        return demo_key("device", self.seed, str(index))

    def device(self, name: str) -> DeviceSpec:
        for d in self.devices:
            if d.name == name:
                return d
        raise ConfigError(f"site {self.name} has no device {name!r}")


@dataclasses.dataclass(frozen=True)
class UtilitySpec:
    name: str
    seed: str
    #: How long it waits at a period's end for a device's last reading before
    #: granting the next budget; then a run of fixed periods invoices what is
    #: logged, a run until stopped keeps waiting (:class:`p2pgrid.utility.UtilityNode`).
    readings_wait_s: float = 60.0

    def signer(self, site: SiteSpec) -> Signer:
        """The utility's key for ``site``: the site's owner enrols it in the site's
        log (role utility); it signs the utility's entries and its host there."""
        return demo_key("utility", self.seed, site.name)

    @property
    def invoice_secret(self) -> bytes:
        return hashlib.sha256(b"p2pgrid invoice secret/" + self.seed.encode()).digest()


@dataclasses.dataclass(frozen=True)
class Timing:
    """A run's clock: intervals of ``interval_s`` real seconds (900 in real life,
    less when compressed), ``intervals_per_period`` of them per billing period,
    ``periods`` periods; the run's interval 0 is modelled metering interval
    ``model_start_interval`` (what a meter replays and the log records)."""

    intervals_per_period: int
    interval_s: float
    periods: int | None  # None: until stopped
    model_start_interval: int = 0
    #: Calendar months of this time zone (real life), else fixed-length periods.
    monthly_timezone: str | None = None

    def model_interval(self, interval: int) -> int:
        return self.model_start_interval + interval

    def model_ms(self, interval: int) -> int:
        """Modelled wall time (UTC) of the start of the run's interval ``interval``."""
        return model_ms(self.model_interval(interval))

    def clock(self, start: float) -> PeriodClock:
        if self.monthly_timezone is not None:
            return MonthlyClock(interval_s=self.interval_s, start=start,
                                timezone=self.monthly_timezone)  # fmt: skip
        return PeriodClock(self.intervals_per_period, self.interval_s, start)


@dataclasses.dataclass(frozen=True)
class Scenario:
    intervals_per_period: int
    interval_s: float
    periods: int
    tariff: FlatTariff
    utility: UtilitySpec
    sites: tuple[SiteSpec, ...]
    #: Modelled metering interval of the run's interval 0 (40 = 10:00 on day 0).
    model_start_interval: int = 0
    #: Every agent's tuning (the scenario's ``[agent]`` table).
    agent: AgentConfig = dataclasses.field(default_factory=AgentConfig)

    def model_interval(self, interval: int) -> int:
        return self.model_start_interval + interval

    def model_ms(self, interval: int) -> int:
        """Modelled wall time (UTC) of the start of the run's interval ``interval``."""
        return model_ms(self.model_interval(interval))

    def clock(self, start: float) -> PeriodClock:
        return self.timing.clock(start)

    @property
    def timing(self) -> Timing:
        return Timing(
            self.intervals_per_period, self.interval_s, self.periods, self.model_start_interval
        )

    def site_number(self, site: SiteSpec) -> int:
        return self.sites.index(site)

    def site_of(self, device_name: str) -> tuple[SiteSpec, DeviceSpec]:
        for site in self.sites:
            for device in site.devices:
                if device.name == device_name:
                    return site, device
        raise ConfigError(f"no device named {device_name!r} in the scenario")

    @property
    def lnd_nodes(self) -> tuple[str, ...]:
        """Every lnd node of the run, one per process: the utility's, each device's
        on its own lnd, each site node (the gateway of its site's light devices)."""
        return (
            self.utility.name,
            *(d.name for s in self.sites for d in s.devices if not d.light),
            *(s.site_node for s in self.sites if s.site_node is not None),
        )

    @property
    def own_lnd_devices(self) -> tuple[str, ...]:
        """The devices on an lnd of their own, by name (each node is named as its device)."""
        return tuple(d.name for s in self.sites for d in s.devices if not d.light)

    @property
    def site_nodes(self) -> dict[str, int]:
        """Each site node's name and how many light devices pay through it."""
        return {s.site_node: len(s.light_devices) for s in self.sites if s.site_node is not None}

    def node_of(self, device_name: str) -> str:
        """The lnd node device ``device_name`` pays from (:meth:`SiteSpec.node_of`)."""
        site, device = self.site_of(device_name)
        return site.node_of(device)


def meter_spec(model: MeterModel, base_dir: Path | None) -> MeterSpec:
    """A meter's spec; a relative csv path is taken from ``base_dir`` (the
    scenario file's directory; the working directory if there is none)."""
    if model.kind != "csv":
        return MeterSpec(
            model.kind, model.profile, model.annual_kwh, model.peak_w, "", model.start_day
        )
    path = Path(model.path)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return MeterSpec("csv", path=str(path), csv=model.csv_format())


def parse_scenario(
    data: Mapping[str, Any], *, source: str = "scenario", base_dir: Path | None = None
) -> Scenario:
    """The scenario of a parsed TOML document; :class:`ConfigError` naming
    ``source``, the key and the problem if it does not follow the schema
    (:mod:`p2pgrid.scenario_schema`). Relative meter paths are taken from
    ``base_dir`` (:func:`load_scenario`: the file's directory)."""
    model = validate_scenario(data, source=source)
    for i, site in enumerate(model.sites):
        warn_deprecated(site.devices, f"{source}: sites[{i}].devices")
    sites = tuple(
        SiteSpec(
            name=s.name,
            seed=s.seed,
            budget_msat=s.budget_msat,
            devices=tuple(
                DeviceSpec(
                    name=d.name,
                    index=d.index,
                    device_class=d.device_class,
                    meter=meter_spec(d.meter, base_dir),
                    priority=Priority[d.priority.upper()],
                    weight=d.weight,
                    policy=SurplusPolicy(d.policy),
                    leftover=LeftoverPolicy.parse(d.leftover),
                    producer=d.producer,
                    light=d.lightning == "site",
                )
                for d in s.devices
            ),
            site_node=s.site_lightning.node if s.site_lightning is not None else None,
        )
        for s in model.sites
    )
    clock, utility = model.clock, model.utility
    return Scenario(
        intervals_per_period=clock.intervals_per_period,
        interval_s=clock.interval_s,
        periods=clock.periods,
        model_start_interval=clock.model_start_interval,
        tariff=model.tariff.flat,
        utility=UtilitySpec(utility.name, utility.seed, utility.readings_wait_s),
        sites=sites,
        agent=model.agent,
    )


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; :class:`ConfigError` on any problem."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc}") from exc
    return parse_scenario(data, source=str(path), base_dir=path.parent)
