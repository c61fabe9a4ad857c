"""An agent's tuning, as one typed, frozen config passed through constructors.

:class:`AgentConfig` gathers what used to be module constants of the agent's
modules: how long it waits for peers, for lnd and for the utility's invoice,
what routing fee it accepts, how it prices and auctions its surplus. The
defaults are the values the project runs with; a process builds one config and
hands its parts to :class:`~p2pgrid.agent.device.DeviceAgent`, which hands
them to its desks (:class:`~p2pgrid.agent.sharing.ShareDesk`,
:class:`~p2pgrid.agent.energy.EnergyDesk`) and its
:class:`~p2pgrid.agent.settlement.InvoiceSettler`. Invalid values (a negative
timeout, a share of the tariff above 100 %) are refused when the config is
built, never at the moment they are used: :meth:`AgentConfig.from_data` (a
TOML table, say) raises one :class:`~p2pgrid.errors.ConfigError` naming every
bad key.

Rules of the protocol (the smallest payment, protocol names) are not tuning and
stay constants of their modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from p2pgrid.errors import ConfigError

Seconds = Annotated[float, Field(gt=0, le=86_400)]
Msat = Annotated[int, Field(ge=0, le=10**12)]
SiteName = Annotated[str, Field(min_length=1, max_length=128)]


class _Frozen(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ShareConfig(_Frozen):
    """Budget sharing between devices (:mod:`p2pgrid.agent.sharing`)."""

    #: How long a requester waits for each peer's offer.
    offer_timeout_s: Seconds = 5.0
    #: How long a requester waits for the giver to pay its invoice.
    pay_timeout_s: Seconds = 60.0
    #: Routing fee a giver accepts (a device -> device payment takes two hops).
    fee_limit_msat: Msat = 20_000
    #: A forecast resting on fewer readings than this claims no headroom and asks
    #: nothing early: the device does not know its use yet (one modelled hour).
    min_forecast_samples: Annotated[int, Field(ge=1, le=100_000)] = 4
    #: A device whose forecast for the rest of the period exceeds its balance asks
    #: for the shortfall early, at most once every this many intervals.
    early_ask_intervals: Annotated[int, Field(ge=1, le=100_000)] = 4
    #: Leftover allowance (docs/market.md, section 2.9) is sold, and bought, in
    #: the last this many intervals of a period (2.7 step 1).
    leftover_window: Annotated[int, Field(ge=1, le=100_000)] = 4
    #: A seller's price for its leftover allowance, in percent of face value.
    leftover_price_pct: Annotated[int, Field(ge=1, le=100)] = 80
    #: The most a buyer pays for allowance, in percent of face value (0: never buys).
    allowance_max_price_pct: Annotated[int, Field(ge=0, le=100)] = 90
    #: An allowance invoice is payable this long.
    allowance_expiry_s: Annotated[int, Field(gt=0, le=86_400)] = 600


class EnergyConfig(_Frozen):
    """Energy sales between neighbours (:mod:`p2pgrid.agent.energy`)."""

    #: A pooled auction round closes this long after its interval begins: buyers
    #: then clear it from the orders in their replica (docs/market.md, section 6).
    round_s: Seconds = 0.3
    #: A producer asks this share of the tariff: cheaper than the grid for its neighbours.
    ask_pct: Annotated[int, Field(gt=0, le=100)] = 80
    #: How long a buyer waits for a seller's invoice, and a seller for the orders
    #: of a buyer's book that its replica lacks.
    bid_timeout_s: Seconds = 5.0
    #: Routing fee a buyer accepts on a sale's payment.
    fee_limit_msat: Msat = 20_000
    #: A sale invoice is payable this long (the buyer pays within seconds).
    sale_expiry_s: Annotated[int, Field(gt=0, le=86_400)] = 600
    #: Pay on delivery: a seller's invoice is a hold invoice that it settles only
    #: when the buyer's ``delivered`` entry of the round shows the whole trade, and
    #: cancels otherwise (docs/market.md, section 6.2). Site-wide: every device of
    #: a site must agree (the invoice's description says which way it is paid).
    pay_on_delivery: bool = False
    #: How long a seller waits for the buyer's payment and ``delivered`` entry
    #: before it cancels a hold invoice.
    delivery_wait_s: Seconds = 30.0
    #: The share of a trade a buyer's meter reports received, in percent: 100 for
    #: a real meter; a test switch below 100 makes a buyer that is short of it.
    delivered_pct: Annotated[int, Field(ge=0, le=100)] = 100
    #: Share of an interval's need a deferrable device bids as flexible load:
    #: below the tariff, deferred when the round clears above its price
    #: (:mod:`p2pgrid.market.curves`); normal and critical devices bid it all firm.
    deferrable_flex_pct: Annotated[int, Field(ge=0, le=100)] = 50
    #: The flexible steps' prices, from this share of the tariff...
    flex_top_pct: Annotated[int, Field(gt=0, lt=100)] = 90
    #: ...down to this one, in this many steps.
    flex_floor_pct: Annotated[int, Field(gt=0, lt=100)] = 50
    flex_steps: Annotated[int, Field(ge=1, le=31)] = 3
    #: Neighbouring sites (by name, as ``[[other_sites]]`` or the scenario name
    #: them) whose producers this device buys energy from, and whose devices it
    #: sells to, after its own site's round (docs/market.md, section 6.3); the
    #: utility bills the buyer a grid fee on that energy (section 7). This
    #: site's own name is ignored (a scenario-wide list names every site).
    #: (A TOML list is read as this tuple.)
    trade_sites: Annotated[tuple[SiteName, ...], Field(strict=False, max_length=64)] = ()
    #: Purchases from neighbouring sites start this long after the site's round
    #: closed, so that the round's own trades are invoiced first.
    across_after_s: Seconds = 0.5

    @model_validator(mode="after")
    def _flex_prices_fall(self) -> EnergyConfig:
        if self.flex_floor_pct > self.flex_top_pct:
            raise ValueError("flex_floor_pct must not exceed flex_top_pct")
        return self


class SettleConfig(_Frozen):
    """Settling the utility's invoices (:mod:`p2pgrid.agent.settlement`, the agent's run)."""

    #: Routing fee the agent accepts on an invoice payment (the utility is a direct peer).
    fee_limit_msat: Msat = 10_000
    #: How long an agent waits for the utility's invoice of a closed period before
    #: it says so (WARNING); a deployed agent (no period count) then waits on, a run
    #: of a given number of periods reports ``no_invoice`` and ends.
    invoice_wait_s: Seconds = 120.0
    #: Attempts to pay an invoice that lnd could not pay...
    pay_attempts: Annotated[int, Field(gt=0, le=100)] = 3
    #: ...and the base delay between them (times the attempt number).
    pay_retry_s: Seconds = 2.0
    #: How long settling a period's invoice waits for an lnd that does not answer.
    node_away_wait_s: Seconds = 90.0


class AgentConfig(_Frozen):
    """Everything an agent is tuned by; the defaults are the project's values."""

    share: ShareConfig = ShareConfig()
    energy: EnergyConfig = EnergyConfig()
    settle: SettleConfig = SettleConfig()
    #: Anti-entropy every few seconds: a compressed period lasts seconds.
    anti_entropy_s: Seconds = 2.0
    #: How long the device's first entry after a start waits for a peer of its site
    #: to say what it holds of the device's chain (which the agent then takes back:
    #: its log file may be older than its last entry). None answered: the device
    #: writes on from its log (a WARNING)...
    own_chain_wait_s: Seconds = 10.0
    #: ...unless its log holds no entry of its own and this is true: it then waits
    #: on for a peer (a WARNING each ``own_chain_wait_s``); set it to start a device
    #: on an empty or restored data directory while its peers may be down.
    empty_chain_waits: bool = False
    #: How long a read of the device's lnd (the first one at start, then any)
    #: retries an lnd that does not answer before it gives up: at start, the agent
    #: then exits as unavailable (code 3). Writes that move money are tried once.
    lnd_away_wait_s: Seconds = 60.0

    @classmethod
    def from_data(cls, data: Mapping[str, Any], *, source: str = "agent config") -> AgentConfig:
        """The config of ``data`` (missing keys keep their defaults), or a
        :class:`ConfigError` with one line per problem."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            lines = [
                f"{source}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False)
            ]
            raise ConfigError("\n".join(lines)) from None
