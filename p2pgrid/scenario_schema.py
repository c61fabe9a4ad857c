"""The scenario file's schema: strict, typed pydantic models of the TOML tables.

Validated once, when the file is read (:func:`validate_scenario`): every key has
one type (no ``"no"`` read as true, no ``1.5`` truncated to ``1``), unknown keys
are refused (a misspelt key is an error, not a default), and the rules that
span keys are checked here (budgets and periods positive, ``interval_s`` finite,
one device per index and per name, one seed per site, at least one site, a
site node for every site with light devices and light devices for every site
node, one name per process and lnd node). Any
problem is a :class:`~p2pgrid.errors.ConfigError` naming the file, the key and
the problem, one line per problem. :mod:`p2pgrid.scenario` builds its frozen
dataclasses from the validated models.

Deprecated values are read with a WARNING naming the file, the key and what to
write instead (:func:`warn_deprecated`): a device's ``policy = "sell_energy"``
does what ``carry_over`` does (docs/market.md 2.6).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Final, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from p2pgrid.agent.config import AgentConfig
from p2pgrid.billing.tariff import FlatTariff
from p2pgrid.errors import ConfigError
from p2pgrid.identity import MAX_DEVICE_INDEX  # the one limit of the log and the net layer
from p2pgrid.market import LeftoverPolicy, MarketError
from p2pgrid.meter.source import METER_INTERVAL_S, AtEnd, CsvFormat, MeterError, Unit
from p2pgrid.utility.invoicer import LND_AWAY_WAIT_S

NonEmpty = Annotated[str, Field(min_length=1, max_length=256)]
Positive = Annotated[int, Field(gt=0, lt=2**63)]
Count = Annotated[int, Field(gt=0, le=1_000_000)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


Column = (
    Annotated[str, Field(min_length=1, max_length=256)] | Annotated[int, Field(ge=0, le=10_000)]
)
#: Keys that only a csv meter takes (docs/operations.md, "Meters").
CSV_KEYS: Final = (
    "column",
    "produced_column",
    "unit",
    "scale",
    "resolution_s",
    "start",
    "timezone",
    "at_end",
    "header",
    "delimiter",
    "decimal",
)


class MeterModel(_Strict):
    kind: Literal["bdew", "solar", "csv"]
    profile: NonEmpty = "h0"
    annual_kwh: Annotated[int, Field(ge=0, le=10**9)] = 3000
    peak_w: Annotated[int, Field(ge=0, le=10**9)] = 0
    #: A csv meter's file, relative to the scenario file's directory.
    path: str = ""
    start_day: Annotated[int, Field(ge=0, le=366)] = 0
    column: Column = "consumed_wh"
    produced_column: Column | None = None
    unit: Unit = "Wh"
    scale: Annotated[float, Field(gt=0, le=10**9, allow_inf_nan=False)] = 1.0
    resolution_s: Annotated[int, Field(gt=0, le=366 * 86_400)] = METER_INTERVAL_S
    start: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    timezone: NonEmpty = "UTC"
    at_end: AtEnd = "error"
    header: bool = True
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    decimal: Literal[".", ","] = "."

    @field_validator("resolution_s")
    @classmethod
    def _divides_the_interval(cls, value: int) -> int:
        if METER_INTERVAL_S % value and value % METER_INTERVAL_S:
            raise ValueError(f"must divide {METER_INTERVAL_S} or be a multiple of it")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name: UTC, Europe/Berlin)"
            ) from None
        return value

    @field_validator("start")
    @classmethod
    def _iso_time(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO 8601 date and time") from None
        return value

    @model_validator(mode="after")
    def _kind_needs(self) -> Self:
        if self.kind == "solar" and self.peak_w == 0:
            raise ValueError("a solar meter needs peak_w > 0")
        if self.kind != "csv":
            extra = [key for key in CSV_KEYS if key in self.model_fields_set]
            if extra or self.path:
                raise ValueError(f"{', '.join(extra or ['path'])}: only a csv meter takes it")
            return self
        if not self.path:
            raise ValueError("a csv meter needs a path")
        self.csv_format()  # the keys that only make sense together
        return self

    def csv_format(self) -> CsvFormat:
        """The CSV reading options of a csv meter (:class:`ValueError` if they
        do not fit together, e.g. a column name without a header)."""
        try:
            return CsvFormat(**{key: getattr(self, key) for key in CSV_KEYS})
        except MeterError as exc:
            raise ValueError(str(exc)) from None


log = logging.getLogger(__name__)


class DeviceModel(_Strict):
    name: NonEmpty
    index: Annotated[int, Field(ge=0, le=MAX_DEVICE_INDEX)]
    device_class: NonEmpty
    meter: MeterModel
    priority: Literal["critical", "normal", "deferrable"] = "normal"
    weight: Annotated[int, Field(gt=0, le=10**9)] = 1
    #: ``sell_energy`` is deprecated (:func:`warn_deprecated`): the same as ``carry_over``.
    policy: Literal["carry_over", "sell_energy"] = "carry_over"
    #: Leftover allowance near the period's end (docs/market.md 2.7, 2.9):
    #: ``carry_over``, ``sell`` or ``split(f)``.
    leftover: NonEmpty = "carry_over"
    producer: bool = False
    #: "own": the device has its own lnd; "site": a light device, paying and paid
    #: through its site's node (docs/architecture.md, "Light devices").
    lightning: Literal["own", "site"] = "own"

    @field_validator("leftover")
    @classmethod
    def _leftover_policy(cls, value: str) -> str:
        try:
            LeftoverPolicy.parse(value)
        except MarketError as exc:
            raise ValueError(str(exc)) from None
        return value


def warn_deprecated(devices: Sequence[DeviceModel], where: str) -> None:
    """Log a WARNING for each deprecated value of ``devices`` (the table at
    ``where``: the file and its key), naming what to write instead."""
    for i, device in enumerate(devices):
        if device.policy == "sell_energy":
            log.warning(
                '%s[%d] (%s): policy = "sell_energy" is deprecated: it does what '
                '"carry_over" does at the period\'s close (the unspent budget is carried '
                'over; docs/market.md 2.6): write policy = "carry_over" or leave the key '
                'out; to sell leftover budget before the close write leftover = "sell" '
                "(or split(f)); a producer's surplus energy is offered whatever the policy",
                where, i, device.name,
            )  # fmt: skip


def devices_used_twice(devices: list[DeviceModel]) -> str | None:
    """What a site's device table names twice (an index or a name), or None."""
    for what, values in (
        ("device index", [d.index for d in devices]),
        ("device name", [d.name for d in devices]),
    ):
        twice = sorted(str(v) for v, n in Counter(values).items() if n > 1)
        if twice:
            return f"{what} used twice: {', '.join(twice)}"
    return None


#: Seconds the utility waits at a period's end for every device's last reading.
ReadingsWait = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]


class SiteLightningModel(_Strict):
    """A site's own lnd node, through which its light devices pay and are paid."""

    #: The node's name: the stack's lnd node, and the process of the gateway that
    #: runs the site's light devices.
    node: NonEmpty


class SiteModel(_Strict):
    name: NonEmpty
    seed: NonEmpty
    budget_msat: Positive
    devices: Annotated[list[DeviceModel], Field(min_length=1)]
    #: The site node of its light devices (``lightning = "site"``), if it has any.
    site_lightning: SiteLightningModel | None = None

    @model_validator(mode="after")
    def _unique_devices(self) -> Self:
        twice = devices_used_twice(list(self.devices))
        if twice:
            raise ValueError(f"site {self.name!r}: {twice}")
        return self

    @model_validator(mode="after")
    def _light_devices_have_a_node(self) -> Self:
        light = self.light_devices
        if light and self.site_lightning is None:
            raise ValueError(
                f"site {self.name!r}: {', '.join(light)} "
                f'{"is" if len(light) == 1 else "are"} light (lightning = "site") '
                'but the site has no site node: give it site_lightning = { node = "<name>" }'
            )
        if self.site_lightning is not None and not light:
            raise ValueError(
                f"site {self.name!r}: site_lightning names node {self.site_lightning.node!r} "
                'but no device of the site is light (lightning = "site"): '
                "make some light or drop site_lightning"
            )
        return self

    @property
    def light_devices(self) -> list[str]:
        """The names of its light devices, in the file's order."""
        return [d.name for d in self.devices if d.lightning == "site"]

    def node_of(self, device: DeviceModel) -> str:
        """The lnd node ``device`` pays from: its own (named as the device), or
        the site node for a light device."""
        if device.lightning == "site" and self.site_lightning is not None:
            return self.site_lightning.node
        return device.name

    def processes(self) -> dict[str, tuple[str, ...]]:
        """Its processes and the devices each runs, in the file's order of their
        first device: a device on its own lnd runs alone (the process is named as
        the device); the light devices run together in one gateway named as their
        site node (they share its one client of the node), by device index: its
        first is the device its host speaks as and listens for
        (:func:`p2pgrid.agent.gateway.hub_device`, the lowest index), where the
        gateway is placed."""
        out: dict[str, list[DeviceModel]] = {}
        for d in self.devices:
            out.setdefault(self.node_of(d), []).append(d)
        return {
            name: tuple(d.name for d in sorted(devices, key=lambda d: d.index))
            for name, devices in out.items()
        }


class UtilityModel(_Strict):
    name: NonEmpty = "utility"
    seed: NonEmpty
    readings_wait_s: ReadingsWait = 60.0
    #: How long an invoicing call retries an lnd that does not answer (the
    #: utility file's ``[utility] lnd_away_wait_s``).
    lnd_away_wait_s: ReadingsWait = LND_AWAY_WAIT_S


class ClockModel(_Strict):
    intervals_per_period: Count
    interval_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]
    periods: Count
    model_start_interval: Annotated[int, Field(ge=0, le=10**9)] = 0


class TariffModel(_Strict):
    msat_per_kwh: Positive
    #: The utility's fee on energy bought from another site (docs/market.md, section 7).
    grid_fee_msat_per_kwh: Annotated[int, Field(ge=0, le=10**12)] = 0

    @property
    def flat(self) -> FlatTariff:
        return FlatTariff(self.msat_per_kwh, self.grid_fee_msat_per_kwh)


class ScenarioModel(_Strict):
    clock: ClockModel
    tariff: TariffModel
    #: The agents' tuning (``[agent]``, ``[agent.energy]``...); every key has a default.
    agent: AgentConfig = AgentConfig()
    utility: UtilityModel
    sites: Annotated[list[SiteModel], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_across_sites(self) -> Self:
        names = [self.utility.name, *(d.name for s in self.sites for d in s.devices)]
        names += [s.site_lightning.node for s in self.sites if s.site_lightning is not None]
        for what, values in (
            ("site name", [s.name for s in self.sites]),
            ("site seed", [s.seed for s in self.sites]),
            ("name (the utility, devices and site nodes name processes and lnd nodes)", names),
        ):
            twice = sorted(v for v, n in Counter(values).items() if n > 1)
            if twice:
                raise ValueError(f"{what} used twice: {', '.join(map(repr, twice))}")
        return self

    @model_validator(mode="after")
    def _trade_sites_are_sites(self) -> Self:
        unknown = sorted(set(self.agent.energy.trade_sites) - {s.name for s in self.sites})
        if unknown:
            raise ValueError(
                f"agent.energy.trade_sites: no site named {', '.join(map(repr, unknown))} "
                f"(sites: {', '.join(repr(s.name) for s in self.sites)})"
            )
        return self


def _key(loc: tuple[int | str, ...], data: Any) -> str:
    """``sites[0] ("store-1").devices[2] ("s1-ev").weight``: the key, with names."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f' ("{node["name"][:60]}")'
        else:
            out += f".{part}" if out else part
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def validate_scenario(data: Mapping[str, Any], *, source: str) -> ScenarioModel:
    """The validated scenario; :class:`ConfigError` naming ``source``, each bad
    key and its problem (every problem found, one per line)."""
    try:
        return ScenarioModel.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, data, source=source)) from None


def describe_errors(exc: ValidationError, data: Any, *, source: str) -> str:
    """One line per problem: ``<source>: <key>: <problem>`` (also used for the
    deployment files of :mod:`p2pgrid.config`)."""
    lines = []
    for error in exc.errors(include_url=False):
        problem = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            problem = "unknown key (misspelt?)"
        elif error["type"] == "missing":
            problem = "missing"
        elif not isinstance(error["input"], (dict, list)) and error["type"] != "value_error":
            problem += f", got {error['input']!r:.60}"
        lines.append(f"{source}: {_key(tuple(error['loc']), data)}: {problem}")
    return "\n".join(lines)
