"""A scenario deployed on a test's stack: its files written as the demo writes them.

:func:`deploy` writes the deployment of a scenario file (fresh keys,
:func:`p2pgrid.config.deployment.write_deployment`) for the lnd nodes of ``stack``,
interval 0 after the launcher's lead (what a run by hand would use); the tests run
it with :func:`p2pgrid.launcher.run_deployment` (the same ``place``, if any) and
``start_when_ready=True``, so interval 0 is fixed once every process is ready.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from p2pgrid.config.deployment import Deployment, free_port, write_deployment
from p2pgrid.launcher import Placer, lnd_nodes, on_this_host, start_after_lead
from p2pgrid.regtest import Stack
from p2pgrid.scenario import load_scenario


async def deploy(
    scenario_path: Path,
    stack: Stack,
    dir: Path,
    *,
    place: Placer = on_this_host,
    port: Callable[[str], int] = free_port,
) -> Deployment:
    """The deployment of ``scenario_path`` in ``dir`` on ``stack``'s lnd nodes; the
    utility and each device listen where ``place`` puts them (``port`` picks their
    ports)."""
    scenario = load_scenario(scenario_path)
    names = scenario.lnd_nodes  # one per process
    listening = (scenario.utility.name, *(d.name for s in scenario.sites for d in s.devices))
    return write_deployment(
        scenario_path,
        dir,
        await lnd_nodes(stack, names),
        start=start_after_lead(len(names)),
        listen_hosts={name: place(name).listen_host for name in listening},
        port=port,
    )
