"""The ``p2pgrid`` command (typer). ``asyncio.run`` happens here, once per command.

Commands: ``site init|allocate``, ``device add|revoke``, ``utility init|run``,
``agent run``, ``log verify``, ``report``, ``regtest up|down|status|mine|build``
and ``demo``. Every command ends with one of the exit codes of
:mod:`p2pgrid.service`, and an error is one line ``error: <what>`` on stderr,
never a traceback:

====  =====================================================================
code  meaning
====  =====================================================================
0     done (or a node stopped cleanly: SIGTERM, SIGINT)
1     failed; for ``log verify``: the replica has a defect, or disagrees with
      the lnd of ``--against-lnd`` / ``--against-utility-lnd``
2     bad configuration or usage: the line names the file and key, or the flag
3     a daemon or peer it needs is unreachable: start again once it is up
====  =====================================================================

``--json`` prints one JSON document on stdout for a script to read, where a
command has something to print. ``agent run`` and ``utility run`` print their
events as JSON lines (``ready``, ``done``, ``stopped``) and log to stderr; with
``--control`` they also read commands on stdin (``digest``, ``status``, ``stop``:
the line protocol of :mod:`p2pgrid.jsonlines`), as the demo's runs do; with
``--await-start`` too, interval 0 is the ``at`` of the first ``start`` there, not the
file's ``clock.start`` (a launcher's runs that start once every process is ready).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from p2pgrid.errors import ConfigError, P2PGridError
from p2pgrid.service import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, Command, exit_code, run_process

if TYPE_CHECKING:  # imported where used: `p2pgrid --help` loads no lnd client
    from p2pgrid.ledger import Author
    from p2pgrid.lightning import LndEndpoint

T = TypeVar("T")

app = typer.Typer(
    name="p2pgrid",
    help="p2pgrid: device agents that pay for electricity in satoshis, peer to peer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # a bug's traceback plainly, never with locals (keys)
    add_completion=False,
    rich_markup_mode=None,  # plain click usage errors: whole lines, not clipped boxes
    epilog="Exit codes: 0 done or stopped cleanly; 1 failed (log verify: a defect, or lnd "
    "disagrees); "
    "2 bad configuration or usage (the file and key, or the flag, are named); "
    "3 a daemon or peer it needs is unreachable. Deploying: docs/deploy.md.",
)
site_app = typer.Typer(
    rich_markup_mode=None, help="The site owner's keys and signed entries.", no_args_is_help=True
)
device_app = typer.Typer(
    rich_markup_mode=None, help="Enrol and revoke a site's devices.", no_args_is_help=True
)
agent_app = typer.Typer(rich_markup_mode=None, help="Run a device agent.", no_args_is_help=True)
utility_app = typer.Typer(
    rich_markup_mode=None, help="The utility's keys, and running it.", no_args_is_help=True
)
log_app = typer.Typer(
    rich_markup_mode=None, help="Check a replica of a site's log.", no_args_is_help=True
)
regtest_app = typer.Typer(
    rich_markup_mode=None, help="Local regtest stacks (btcd + lnd).", no_args_is_help=True
)
for sub, name in (
    (site_app, "site"),
    (device_app, "device"),
    (agent_app, "agent"),
    (utility_app, "utility"),
    (log_app, "log"),
    (regtest_app, "regtest"),
):
    app.add_typer(sub, name=name)

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="the site file (TOML)", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document for scripts")]


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160)  # tables whole in logs


def _fail(exc: BaseException) -> NoReturn:
    outcome = exit_code(exc)
    if outcome is None:
        raise exc
    code, line = outcome
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[red]error:[/] {escape(line[len('error: ') :])}"
    )
    raise typer.Exit(code)


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine; a p2pgrid error is one line and its exit code."""
    try:
        return asyncio.run(work)
    except (P2PGridError, BaseExceptionGroup) as exc:
        _fail(exc)


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except P2PGridError as exc:
        _fail(exc)


def _print(data: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    table = Table(title=title, show_header=False)
    for key, value in data.items():
        table.add_row(key, escape(str(value)))
    _console().print(table)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("libp2p").setLevel(logging.WARNING)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log INFO to stderr")] = False,
) -> None:
    _logging(verbose)


# -- the site owner ------------------------------------------------------------


@site_app.command("init")
def site_init(
    key_dir: Annotated[Path, typer.Option(help="where the owner's key goes (made 0700)")],
    utility_key: Annotated[str, typer.Option(help="the utility's key (`utility init` printed)")],
    entries: Annotated[Path, typer.Option(help="the owner's entries file to create")],
    as_json: JsonOpt = False,
) -> None:
    """Make the site: the owner's key (owner.key, 0600) and its entries file, which
    enrols the utility. Prints the site's public identity (site.owner_pubkey) to share.
    Refuses to overwrite an existing key or entries file."""
    from p2pgrid.config.owner import init_site

    created = _call(init_site, key_dir, entries, utility_key)
    _print(dataclasses.asdict(created), as_json, "site created: share `site`, keep owner_key")


@site_app.command("allocate")
def site_allocate(
    config: ConfigOpt,
    count: Annotated[int, typer.Option(help="how many periods")] = 1,
    first: Annotated[int, typer.Option(help="the first period")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Split site.budget_msat by weight between the enrolled devices, for periods
    FIRST..FIRST+COUNT-1 (signed allocations, appended to the entries file)."""
    from p2pgrid.config.files import SiteFile
    from p2pgrid.config.owner import allocate

    result = _call(lambda: allocate(SiteFile(config), first, count))
    _print(result, as_json, "allocated")


@device_app.command("add")
def device_add(
    config: ConfigOpt,
    name: Annotated[str, typer.Argument(help="the device's name in the site file")],
    key_out: Annotated[
        Path | None, typer.Option(help="where its key goes (default: the row's key_file)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a device's key and enrol it (signed `enrol` and `device_info`, appended
    to the entries file). Copy the key file to the device's host, and the entries
    file to every host of the site. Refuses an index already enrolled."""
    from p2pgrid.config.files import SiteFile
    from p2pgrid.config.owner import add_device

    result = _call(lambda: add_device(SiteFile(config), name, key_out))
    _print(result, as_json, "device enrolled")


@device_app.command("revoke")
def device_revoke(
    config: ConfigOpt,
    name: Annotated[str, typer.Argument(help="the device's name in the site file")],
    last_seq: Annotated[int, typer.Option(help="its last entry you trust (0: none)")],
    reason: Annotated[str, typer.Option(help="recorded in the log")] = "revoked by the owner",
    as_json: JsonOpt = False,
) -> None:
    """Revoke a device: its entries after --last-seq are refused and dropped on every
    replica that gets the revocation (signed `revoke`, appended to the entries file)."""
    from p2pgrid.config.files import SiteFile
    from p2pgrid.config.owner import revoke_device

    result = _call(lambda: revoke_device(SiteFile(config), name, last_seq, reason))
    _print(result, as_json, "device revoked")


# -- running nodes ---------------------------------------------------------------


ControlOpt = Annotated[
    bool,
    typer.Option(
        "--control",
        help="also read JSON-line commands on stdin (digest, status, stop; end of input "
        "stops): for a program that runs this one, as `p2pgrid demo` does",
    ),
]
AwaitStartOpt = Annotated[
    bool,
    typer.Option(
        "--await-start",
        help="with --control: interval 0 is the `at` of the first `start` command on "
        "stdin, not the file's clock.start (for a program that starts the clock once all "
        "its processes are ready)",
    ),
]


def _await_start_needs_control(control: bool, await_start: bool) -> None:
    if await_start and not control:
        raise ConfigError("--await-start reads interval 0 on stdin: it needs --control")


@agent_app.command("run")
def agent_run(
    config: ConfigOpt,
    device: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME", help="a row of the site file this host runs (repeat: a gateway)"
        ),
    ] = None,
    all_devices: Annotated[
        bool, typer.Option("--all", help="run every device of the site file (a gateway)")
    ] = False,
    control: ControlOpt = False,
    await_start: AwaitStartOpt = False,
) -> None:
    """Run device agents from the site file until SIGTERM or SIGINT (exit 0): one
    device (--device N), several in one process (--device A --device B), or all
    (--all). Exit 2: a bad file or key; 3: an lnd is unreachable; 1: a device failed."""
    from p2pgrid.agent.process import run_gateway
    from p2pgrid.config import SiteFile, agent_setup, agent_start, node_commands

    def build() -> tuple[Any, Any]:
        _await_start_needs_control(control, await_start)
        site = SiteFile(config)
        if all_devices == bool(device):
            raise ConfigError("name the devices to run: --device NAME (repeatable) or --all")
        names = [d.name for d in site.model.devices] if all_devices else list(device or ())
        return [agent_setup(site, name) for name in names], agent_start(site)

    setups, start = _call(build)
    run_process(run_gateway(setups, lambda: node_commands(start, control, await_start)))


@utility_app.command("init")
def utility_init(
    key_dir: Annotated[Path, typer.Option(help="where the keys go (made 0700)")],
    as_json: JsonOpt = False,
) -> None:
    """Make the utility's key (utility.key) and invoice secret (invoice.secret), 0600.
    Prints the key to give each site's owner (`site init --utility-key`)."""
    from p2pgrid.config.owner import init_utility

    _print(_call(init_utility, key_dir), as_json, "utility keys: share `key`")


@utility_app.command("run")
def utility_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="the utility file (TOML)")],
    control: ControlOpt = False,
    await_start: AwaitStartOpt = False,
) -> None:
    """Run the utility from its file until SIGTERM or SIGINT (exit 0): budgets and
    invoices every period of every site. Exit 2: a bad file or key; 3: lnd unreachable."""
    from p2pgrid.config import UtilityFile, node_commands, utility_setup, utility_start
    from p2pgrid.utility.process import run_utility

    def build() -> tuple[Any, Command]:
        _await_start_needs_control(control, await_start)
        utility = UtilityFile(config)
        return utility_setup(utility), utility_start(utility)

    setup, start = _call(build)
    run_process(run_utility(setup, source=lambda: node_commands(start, control, await_start)))


# -- checking ------------------------------------------------------------------


@log_app.command("verify")
def log_verify(
    db: Annotated[Path, typer.Argument(help="a replica's SQLite file")],
    site: Annotated[str | None, typer.Option(help="the site's owner public key (hex)")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="a site file naming the site")
    ] = None,
    against_lnd: Annotated[
        str | None,
        typer.Option(
            metavar="DEVICE",
            help="also check the replica against this device's lnd (its row of --config; "
            "a light device's: the site node, against every light device's entries)",
        ),
    ] = None,
    against_utility_lnd: Annotated[
        Path | None,
        typer.Option(
            metavar="UTILITY_TOML", help="also check the replica against the utility's lnd"
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay every entry of a replica into a fresh log: signatures, membership,
    chains, equivocations; recompute every pooled auction round and check every
    sale (and, paid on delivery, every delivery) against it; with --config,
    check every trade with another site (``site_sale``) against that site's
    signed evidence; print the digest. With --against-lnd or
    --against-utility-lnd, also check that node's lnd: its author's payment
    entries paid once on it (hash, amount, fee), the log's payments to it
    settled, no payment or settled invoice of a hash the log knows without its
    entry, nothing in flight. A light device's node is the site node: checked
    against the union of every light device's entries, an internal transfer
    between two of them touching no lnd (its invoice cancelled). Exit 0 if
    clean, 1 on any defect or mismatch, 2 on bad flags or files, 3 if the lnd
    does not answer."""
    from p2pgrid.agent.rounds import check_pooled_sales
    from p2pgrid.config.files import SiteFile
    from p2pgrid.identity import IdentityError, SiteIdentity
    from p2pgrid.ledger import MalformedError, decode_entry
    from p2pgrid.ledger.verify import read_replica, verify_replica

    if (site is None) == (config is None):
        _fail_usage("give the site: --site PUBKEY or --config site.toml")
    if against_lnd is not None and against_utility_lnd is not None:
        _fail_usage("give one node: --against-lnd DEVICE or --against-utility-lnd UTILITY_TOML")
    if against_lnd is not None and config is None:
        _fail_usage("--against-lnd names a device of the site file: give --config site.toml")

    def identity() -> SiteIdentity:
        if site is not None:
            try:
                return SiteIdentity.from_hex(site)
            except IdentityError as exc:
                raise ConfigError(f"--site: {exc}") from None
        assert config is not None
        return SiteIdentity.from_hex(SiteFile(config).model.site.owner_pubkey)

    who = _call(identity)
    node = _call(_lnd_node, config, against_lnd, against_utility_lnd)
    replica = _call(read_replica, db)
    with tempfile.TemporaryDirectory(prefix="p2pgrid-verify-") as tmp:
        verdict = _run(verify_replica(replica, who, Path(tmp)))
    entries = []
    for raw in replica.raws:
        try:
            entries.append(decode_entry(raw, who.site_hash))
        except MalformedError:
            continue  # counted by the replay above
    pooled = check_pooled_sales(entries, who.site_id) if verdict.same_site else []
    # Trades with other sites carry their signed evidence: checked against the
    # site file's [[other_sites]] (without --config there is nothing to check it by).
    across: list[str] = []
    if verdict.same_site and config is not None:
        from p2pgrid.agent.transit import check_site_sales
        from p2pgrid.config.setups import other_site_logs

        peers = _call(other_site_logs, SiteFile(config))
        across = check_site_sales(entries, who.site_hash, peers)
    ok = verdict.ok and not pooled and not across
    data: dict[str, Any] = {
        **dataclasses.asdict(verdict),
        "pooled_sales": pooled,
        "site_sales": across,
    }
    title = "clean" if ok else "DEFECTS"
    if node is not None:
        from p2pgrid.reconcile import reconcile_replica_with_lnd

        endpoint, authors = node
        checked = _run(reconcile_replica_with_lnd(replica, who, endpoint, authors))
        data["lnd"] = {
            "node": endpoint.name,
            "author": ", ".join(str(a) for a in authors),
            "ok": checked.ok,
            "payments": checked.payments,
            "moved_msat": checked.moved_msat,
            "problems": list(checked.problems),
        }
        ok = ok and checked.ok
        title += "; lnd agrees" if checked.ok else "; LND MISMATCH"
    data["ok"] = ok
    shown = dict(data)
    if node is not None and not as_json:  # one problem a line, not a dict
        lnd = data["lnd"]
        shown["lnd"] = "\n".join(
            [
                f"{lnd['node']} ({lnd['author']}): {lnd['payments']} payments, "
                f"{lnd['moved_msat']} msat: " + ("agrees" if lnd["ok"] else "DISAGREES"),
                *(f"- {p}" for p in lnd["problems"]),
            ]
        )
    _print(shown, as_json, title)
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


def _lnd_node(
    config: Path | None, device: str | None, utility_file: Path | None
) -> tuple[LndEndpoint, tuple[Author, ...]] | None:
    """The lnd endpoint and log authors of the node ``log verify`` checks, if any:
    a device's own lnd, the utility's, or (a light device named) the site node,
    whose authors are every light device of the site."""
    from p2pgrid.config.files import SiteFile, UtilityFile
    from p2pgrid.ledger import Author

    if device is not None:
        assert config is not None
        site_file = SiteFile(config)
        row = site_file.device(device)
        if row.lightning == "site":
            light = [d for d in site_file.model.devices if d.lightning == "site"]
            return site_file.device_lnd(row), tuple(Author.device(d.index) for d in light)
        return site_file.device_lnd(row), (Author.device(row.index),)
    if utility_file is not None:
        loaded = UtilityFile(utility_file)
        utility = loaded.model.utility
        return loaded.lnd(utility.name, utility.lnd), (Author.utility(),)
    return None


def _fail_usage(message: str) -> NoReturn:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(EXIT_CONFIG)


@app.command("report")
def report(
    site: Annotated[str, typer.Option(help="the site's name in the scenario")],
    period: Annotated[list[int] | None, typer.Option(help="a period (repeatable)")] = None,
    scenario: Annotated[Path | None, typer.Option(help="the scenario TOML (default: demo's)")] = (
        None
    ),
    work_dir: Annotated[Path, typer.Option(help="a run's directory")] = Path("demo-run"),
    db: Annotated[Path | None, typer.Option(help="a replica's SQLite file")] = None,
    out: Annotated[Path | None, typer.Option(help="where CSV, JSON and PNG go")] = None,
) -> None:
    """A site's periods from a replica: a table, and CSV, JSON and PNG files."""
    from p2pgrid.reporting import command as report_command

    args = argparse.Namespace(
        scenario=scenario, site=site, period=period, db=db, work_dir=work_dir, out=out
    )
    _run(report_command.run_report(_console(), report_command.request_from(args)))


@app.command("demo")
def demo(
    keep: Annotated[bool, typer.Option(help="leave the stack running")] = False,
    scenario: Annotated[Path | None, typer.Option(help="a scenario TOML (default: two sites)")] = (
        None
    ),
    work_dir: Annotated[
        Path,
        typer.Option(
            help="deployment files, keys, logs, databases, report PNGs (a demo's: emptied)"
        ),
    ] = Path("demo-run"),
) -> None:
    """A regtest stack; the scenario written as deployment files (fresh keys) and run by
    `p2pgrid utility run` and `agent run` processes trading for real; then the reports."""
    from p2pgrid.demo import run_demo

    try:
        _run(run_demo(_console(), scenario_path=scenario, work_dir=work_dir, keep=keep))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# -- regtest -------------------------------------------------------------------

StackName = Annotated[str, typer.Argument(help="the stack's name")]
RootOpt = Annotated[Path | None, typer.Option(help="where stacks live")]


def _regtest(command: str, name: str, root: Path | None, **more: Any) -> None:
    from p2pgrid.regtest.__main__ import run_command
    from p2pgrid.regtest.stack import default_root

    args = argparse.Namespace(command=command, name=name, root=root or default_root(), **more)
    _run(run_command(args, Console(stderr=True)))


@regtest_app.command("up")
def regtest_up(
    name: StackName = "default",
    root: RootOpt = None,
    port_base: Annotated[int | None, typer.Option(help="first port to use")] = None,
) -> None:
    """Build the daemons if needed and start a fresh stack; prints its status (JSON)."""
    _regtest("up", name, root, port_base=port_base)


@regtest_app.command("down")
def regtest_down(name: StackName = "default", root: RootOpt = None) -> None:
    """Stop a stack's daemons."""
    _regtest("down", name, root)


@regtest_app.command("status")
def regtest_status(name: StackName = "default", root: RootOpt = None) -> None:
    """Show a stack (JSON): its nodes, ports and files."""
    _regtest("status", name, root)


@regtest_app.command("mine")
def regtest_mine(
    blocks: Annotated[int, typer.Argument(min=1, help="how many blocks")],
    name: StackName = "default",
    root: RootOpt = None,
) -> None:
    """Mine BLOCKS blocks and wait until every lnd sees them."""
    _regtest("mine", name, root, blocks=blocks)


@regtest_app.command("build")
def regtest_build(name: StackName = "default", root: RootOpt = None) -> None:
    """Only build btcd and lnd into the cache."""
    _regtest("build", name, root)


def main() -> None:
    app()
