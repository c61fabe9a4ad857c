"""From deployment files to the typed setups the node processes are built from.

``p2pgrid agent run`` and ``p2pgrid utility run`` call these, then assemble the
node (:func:`p2pgrid.agent.process.run_gateway`,
:func:`p2pgrid.utility.process.run_utility`). Every key and entry is read and
checked here, before any daemon is contacted: a bad file is exit code 2.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable

from p2pgrid.agent.process import AgentSetup, PeerSite
from p2pgrid.agent.setup import SiteNodeSpec
from p2pgrid.config.files import SiteFile, UtilityFile
from p2pgrid.config.keys import read_entries, read_key
from p2pgrid.errors import ConfigError
from p2pgrid.identity import Role, SiteIdentity
from p2pgrid.jsonlines import commands, emit
from p2pgrid.ledger import Membership
from p2pgrid.ledger.activity import activity
from p2pgrid.market import LeftoverPolicy, Party, Priority, SurplusPolicy
from p2pgrid.provision import membership_of
from p2pgrid.runtime import Runtime
from p2pgrid.scenario import DeviceSpec, meter_spec
from p2pgrid.service import Command
from p2pgrid.utility.process import UtilitySetup, UtilitySite


def agent_setup(site_file: SiteFile, device_name: str) -> AgentSetup:
    """The setup of device ``device_name`` of ``site_file``."""
    model = site_file.model
    row = site_file.device(device_name)
    identity = SiteIdentity.from_hex(model.site.owner_pubkey)
    entries_file = site_file.resolve(model.site.entries)
    entries = read_entries(entries_file, identity)
    signer = read_key(site_file.resolve(row.key_file))
    member = membership_of(identity, entries).roster.devices().get(row.index)
    if member is None or member.pubkey != signer.pubkey:
        raise ConfigError(
            f"{site_file.path.name}: devices[{model.devices.index(row)}].key_file: the key in "
            f"{site_file.resolve(row.key_file)} is not enrolled as device {row.index} in "
            f"{model.site.entries} (run `p2pgrid device add` on the owner's machine, copy both)"
        )
    peer_sites, parties = _other_sites(site_file)
    parties |= {d.name: Party(identity.site_id, d.index) for d in model.devices}
    return AgentSetup(
        site_name=model.site.name,
        identity=identity,
        device=DeviceSpec(
            name=row.name,
            index=row.index,
            device_class=row.device_class,
            meter=meter_spec(row.meter, site_file.path.parent),
            priority=Priority[row.priority.upper()],
            weight=row.weight,
            policy=SurplusPolicy(row.policy),
            leftover=LeftoverPolicy.parse(row.leftover),
            producer=row.producer,
            light=row.lightning == "site",
        ),
        signer=signer,
        timing=model.clock.timing(),
        tariff=site_file.tariff,
        runtime=Runtime(
            lnd=site_file.device_lnd(row),
            data_dir=site_file.resolve(row.data_dir),
            bootstrap=tuple(row.bootstrap),
            utility_pubkey=model.utility.lnd_pubkey,
            listen_host=row.listen_host,
            listen_port=row.listen_port,
            mdns=row.mdns,
            dashboard=site_file.dashboard(
                row.dashboard, f'devices[{model.devices.index(row)}] ("{row.name}").dashboard'
            ),
        ),
        provision=tuple(e.raw for e in entries),
        peer_sites=peer_sites,
        parties=parties,
        config=model.agent,
        entries_file=entries_file,
        site_node=_site_node(site_file) if row.lightning == "site" else None,
    )


def _site_node(site_file: SiteFile) -> SiteNodeSpec:
    """The site node of ``site_file``'s light devices: its key and who is light on it."""
    model = site_file.model
    assert model.site_lightning is not None  # a light row needs it (the model checked)
    light = frozenset(d.index for d in model.devices if d.lightning == "site")
    return SiteNodeSpec(pubkey=model.site_lightning.pubkey, light=light)


def _other_sites(site_file: SiteFile) -> tuple[tuple[PeerSite, ...], dict[str, Party]]:
    """The owner's other sites of ``site_file`` (their entries files' members) and
    their devices by the names their ``device_info`` entries give them."""
    peer_sites: list[PeerSite] = []
    parties: dict[str, Party] = {}
    for number, row in enumerate(site_file.model.other_sites):
        identity = SiteIdentity.from_hex(row.owner_pubkey)
        entries = read_entries(site_file.resolve(row.entries), identity)
        peer_sites.append(PeerSite(row.name, membership_of(identity, entries)))
        named = {name: index for index, name in activity(entries).names.items()}
        parties |= {name: Party(identity.site_id, index) for name, index in named.items()}
        unknown = sorted(set(row.lnd_pubkeys) - set(named))
        if unknown:
            raise ConfigError(
                f"{site_file.path.name}: other_sites[{number}].lnd_pubkeys: no device named "
                f"{', '.join(unknown)} in {row.entries} (devices: {', '.join(sorted(named))})"
            )
    return tuple(peer_sites), parties


def other_site_logs(site_file: SiteFile) -> dict[bytes, Membership]:
    """The log membership of each ``[[other_sites]]`` row of ``site_file``, by
    site hash (to check the entries that carry another site's signed evidence)."""
    return {p.membership.site_hash: p.membership for p in _other_sites(site_file)[0]}


def agent_start(site_file: SiteFile) -> Command:
    """The ``start`` an agent of this site runs on: interval 0 at the file's
    ``clock.start``, the peers' lnd nodes where the file names them (this site's
    devices, and the owner's other sites' ``lnd_pubkeys``)."""
    model = site_file.model
    return {
        "cmd": "start",
        "at": model.clock.start.timestamp(),
        "nodes": {d.name: key for d in model.devices if (key := site_file.lnd_pubkey(d))}
        | {name: key for other in model.other_sites for name, key in other.lnd_pubkeys.items()},
    }


def utility_start(utility_file: UtilityFile) -> Command:
    """The ``start`` the utility runs on: interval 0 at the file's ``clock.start``."""
    return {"cmd": "start", "at": utility_file.model.clock.start.timestamp()}


def utility_setup(utility_file: UtilityFile) -> UtilitySetup:
    """The utility of ``utility_file``: one key for every site it serves."""
    model = utility_file.model
    signer = read_key(utility_file.resolve(model.utility.key_file))
    secret_path = utility_file.resolve(model.utility.invoice_secret_file)
    secret = read_key(secret_path).secret  # 32 random bytes, same file format as a key
    sites = []
    for number, row in enumerate(model.sites):
        identity = SiteIdentity.from_hex(row.owner_pubkey)
        entries_file = utility_file.resolve(row.entries)
        entries = read_entries(entries_file, identity)
        roster = membership_of(identity, entries).roster
        utility = roster.member(Role.UTILITY, 0)
        if utility is None or utility.pubkey != signer.pubkey:
            raise ConfigError(
                f"{utility_file.path.name}: sites[{number}].entries: {row.entries} does not "
                f"enrol this utility's key (the owner's `p2pgrid site init --utility-key`)"
            )
        devices = tuple(sorted(i for i, m in roster.devices().items() if not m.revoked))
        sites.append(
            UtilitySite(
                name=row.name,
                identity=identity,
                signer=signer,
                budget_msat=row.budget_msat,
                devices=devices,
                provision=tuple(e.raw for e in entries),
                listen_port=row.listen_port,
                entries_file=entries_file,
            )
        )
    return UtilitySetup(
        name=model.utility.name,
        sites=tuple(sites),
        timing=model.clock.timing(),
        tariff=utility_file.tariff,
        invoice_secret=secret,
        readings_wait_s=model.utility.readings_wait_s,
        lnd_away_wait_s=model.utility.lnd_away_wait_s,
        runtime=Runtime(
            lnd=utility_file.lnd(model.utility.name, model.utility.lnd),
            data_dir=utility_file.resolve(model.utility.data_dir),
            bootstrap=tuple(model.utility.bootstrap),
            listen_host=model.utility.listen_host,
            mdns=model.utility.mdns,
            dashboard=utility_file.dashboard(model.utility.dashboard, "utility.dashboard"),
        ),
    )


def start_once(start: Command) -> AsyncIterator[Command]:
    """The commands of a node run from files: ``start``, then none until it is
    stopped (SIGTERM or SIGINT: :class:`p2pgrid.service.Service`)."""

    async def source() -> AsyncIterator[Command]:
        yield start
        await asyncio.Event().wait()  # the service cancels this read when it stops

    return source()


def start_then_stdin(
    start: Command,
    more: Callable[[], AsyncIterator[Command]] = commands,
    *,
    await_start: bool = False,
) -> AsyncIterator[Command]:
    """``start``, then the commands a parent process writes on stdin (``more``: the
    line protocol of :mod:`p2pgrid.jsonlines`: ``digest``, ``status``, ``stop``;
    end of input stops the node): ``--control`` of ``agent run`` and ``utility
    run``. The clock is the file's: a ``start`` there is refused (an ``error`` event).

    With ``await_start`` (``--await-start``) interval 0 is the parent's instead: the
    first ``start`` on stdin gives its ``at`` (epoch seconds; everything else of
    ``start`` stays the file's) and is refused if it gives none; a later one is refused."""

    async def source() -> AsyncIterator[Command]:
        started = not await_start
        if started:
            yield start
        async for command in more():
            if command["cmd"] != "start":
                yield command
            elif started:
                emit("error", message="start comes from the file's [clock], not from stdin")
            elif not _is_time(command.get("at")):
                emit("error", message=f"start wants `at`, epoch seconds: {command.get('at')!r}")
            else:
                started = True
                yield {**start, "at": float(command["at"])}

    return source()


def _is_time(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > 0


def node_commands(
    start: Command, control: bool, await_start: bool = False
) -> AsyncIterator[Command]:
    """The commands of a node run from files: :func:`start_then_stdin` with
    ``--control`` (and ``--await-start``: ``await_start``), else :func:`start_once`."""
    if await_start and not control:
        raise ConfigError("--await-start reads interval 0 on stdin: it needs --control")
    return start_then_stdin(start, await_start=await_start) if control else start_once(start)
