"""One agent process: ``p2pgrid agent run --config site.toml --device N`` (a deployed
host, :mod:`p2pgrid.cli`, which also watches the owner's entries file while it runs and
reads it again on SIGHUP: :mod:`p2pgrid.replication.entries_watch`). It builds a typed
:class:`AgentSetup` (from the site file, :mod:`p2pgrid.config.setups`) and runs it as a
gateway (:mod:`p2pgrid.agent.gateway`):
one device, or with ``agent run --device A --device B`` / ``--all`` several devices of a
site in one process. The deployed host's commands are one ``start`` at the file's
``clock.start``, then none (or, with ``--control``, those on stdin but ``start``).

Each device opens its lnd client, its payment intents (``<name>.intents.db``) and its
libp2p host; the devices of one site share their site's SQLite log and replica
(:class:`p2pgrid.agent.gateway.SiteLogs`); each serves its dashboard over that
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

import logging
import sys

from p2pgrid.agent.gateway import CommandSource, PaymasterFactory, run_device, run_gateway
from p2pgrid.agent.setup import AgentSetup, PeerSite

__all__ = [
    "AgentSetup",
    "CommandSource",
    "PaymasterFactory",
    "PeerSite",
    "run_device",
    "run_gateway",
    "setup_logging",
]


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("libp2p").setLevel(logging.WARNING)
