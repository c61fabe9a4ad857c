"""The scenario file's schema: strict, typed pydantic models of the TOML tables.

Validated once, when the file is read (:func:`validate_scenario`): every key has
one type (no ``"no"`` read as true, no ``1.5`` truncated to ``1``), unknown keys
are refused (a misspelt key is an error, not a default), and the rules that
span keys are checked here (budgets and periods positive, ``interval_s`` finite,
one device per index and per name, one seed per site, at least one site). Any
problem is a :class:`~p2pgrid.errors.ConfigError` naming the file, the key and
the problem, one line per problem. :mod:`p2pgrid.scenario` builds its frozen
dataclasses from the validated models.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from p2pgrid.errors import ConfigError
from p2pgrid.identity import MAX_DEVICE_INDEX  # the one limit of the log and the net layer

NonEmpty = Annotated[str, Field(min_length=1, max_length=256)]
Positive = Annotated[int, Field(gt=0, lt=2**63)]
Count = Annotated[int, Field(gt=0, le=1_000_000)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class MeterModel(_Strict):
    kind: Literal["bdew", "solar", "csv"]
    profile: NonEmpty = "h0"
    annual_kwh: Annotated[int, Field(ge=0, le=10**9)] = 3000
    peak_w: Annotated[int, Field(ge=0, le=10**9)] = 0
    path: str = ""
    start_day: Annotated[int, Field(ge=0, le=366)] = 0

    @model_validator(mode="after")
    def _kind_needs(self) -> Self:
        if self.kind == "solar" and self.peak_w == 0:
            raise ValueError("a solar meter needs peak_w > 0")
        if self.kind == "csv" and not self.path:
            raise ValueError("a csv meter needs a path")
        return self


class DeviceModel(_Strict):
    name: NonEmpty
    index: Annotated[int, Field(ge=0, le=MAX_DEVICE_INDEX)]
    device_class: NonEmpty
    meter: MeterModel
    priority: Literal["critical", "normal", "deferrable"] = "normal"
    weight: Annotated[int, Field(gt=0, le=10**9)] = 1
    policy: Literal["carry_over", "sell_energy", "sell"] = "carry_over"
    producer: bool = False


class SiteModel(_Strict):
    name: NonEmpty
    seed: NonEmpty
    budget_msat: Positive
    devices: Annotated[list[DeviceModel], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_devices(self) -> Self:
        for what, values in (
            ("device index", [d.index for d in self.devices]),
            ("device name", [d.name for d in self.devices]),
        ):
            twice = sorted(str(v) for v, n in Counter(values).items() if n > 1)
            if twice:
                raise ValueError(f"site {self.name!r}: {what} used twice: {', '.join(twice)}")
        return self


class UtilityModel(_Strict):
    name: NonEmpty = "utility"
    seed: NonEmpty


class ClockModel(_Strict):
    intervals_per_period: Count
    interval_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]
    periods: Count
    model_start_interval: Annotated[int, Field(ge=0, le=10**9)] = 0


class TariffModel(_Strict):
    msat_per_kwh: Positive


class ScenarioModel(_Strict):
    clock: ClockModel
    tariff: TariffModel
    utility: UtilityModel
    sites: Annotated[list[SiteModel], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_across_sites(self) -> Self:
        names = [self.utility.name, *(d.name for s in self.sites for d in s.devices)]
        for what, values in (
            ("site name", [s.name for s in self.sites]),
            ("site seed", [s.seed for s in self.sites]),
            ("process name (utility and devices; each runs its own lnd)", names),
        ):
            twice = sorted(v for v, n in Counter(values).items() if n > 1)
            if twice:
                raise ValueError(f"{what} used twice: {', '.join(map(repr, twice))}")
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
        raise ConfigError("\n".join(lines)) from None
