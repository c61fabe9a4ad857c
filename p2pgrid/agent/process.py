"""One agent process: ``python -m p2pgrid.agent --scenario S --runtime R --name N``
(the launcher's child) or ``p2pgrid agent run --config site.toml --device N`` (a deployed
host, :mod:`p2pgrid.cli`, which also watches the owner's entries file while it runs and
reads it again on SIGHUP: :mod:`p2pgrid.replication.entries_watch`). Both build a typed
:class:`AgentSetup` (from the scenario and runtime files here, from the site file in
:mod:`p2pgrid.config.setups`) and run it as a gateway (:mod:`p2pgrid.agent.gateway`):
one device, or with ``agent run --device A --device B`` / ``--all`` several devices of a
site in one process. The deployed host's commands are one ``start`` at the file's
``clock.start``, then none (or, with ``--control``, those on stdin but ``start``).

Each device opens its lnd client, its payment intents (``<name>.intents.db``) and its
node's parts (its own SQLite log, libp2p host and replica:
:func:`p2pgrid.replication.open_node_parts`), serves its dashboard over its
replica (:mod:`p2pgrid.dashboard`), prints ``{"event": "ready", "name": N, "addrs": [...],
"pubkey": <its lnd node>, "dashboard": url}`` and waits for ``{"cmd": "start",
"at": <epoch s of interval 0>, "nodes": {<device name>: <lnd pubkey>}}`` (the
Lightning node of every device, where shares and sales are paid). It then runs every period
of the scenario, prints ``{"event": "done", "name": N, "report": ...}``, and keeps serving
its replica (answering ``{"cmd": "digest"}``, also while it runs) until
``{"cmd": "stop"}``, end of input, SIGTERM or SIGINT, at any moment
(:class:`p2pgrid.service.Service`: input first, then the run in flight). Parts
stop in order: dashboard, replica, host, the database, the intents, then the lnd client.
Errors end it with one line on stderr and the exit codes of
:mod:`p2pgrid.service` (2: bad files, 3: lnd unreachable), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from p2pgrid.agent.gateway import CommandSource, PaymasterFactory, run_device, run_gateway
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.agent.setup import AgentSetup, PeerSite, setup_from_scenario
from p2pgrid.runtime import Runtime
from p2pgrid.scenario import load_scenario
from p2pgrid.service import run_process

__all__ = [
    "AgentSetup",
    "CommandSource",
    "PaymasterFactory",
    "PeerSite",
    "argument_parser",
    "main",
    "run_device",
    "run_from_files",
    "run_gateway",
    "setup_from_scenario",
    "setup_logging",
]


def argument_parser(prog: str = "python -m p2pgrid.agent") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--scenario", type=Path, required=True)
    parser.add_argument("--runtime", type=Path, required=True)
    parser.add_argument("--name", required=True)
    return parser


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("libp2p").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    args = argument_parser().parse_args(argv)
    setup_logging()
    run_process(run_from_files(args.scenario, args.runtime, args.name))


async def run_from_files(
    scenario_path: Path,
    runtime_path: Path,
    name: str,
    *,
    make_paymaster: PaymasterFactory = Paymaster,
) -> None:
    """The launcher's child: device ``name`` of a scenario and a runtime file."""
    scenario = load_scenario(scenario_path)
    setup = setup_from_scenario(scenario, Runtime.load(runtime_path), name)
    await run_device(setup, make_paymaster=make_paymaster)
