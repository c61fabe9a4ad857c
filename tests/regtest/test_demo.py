"""``p2pgrid demo`` runs the deployed path: files, then ``p2pgrid utility run`` and
``p2pgrid agent run`` processes, on the two-site stack (``two_sites_stack``, with the
other modules that run that scenario: the demo's own stack comes up as the
fixture's does, :meth:`p2pgrid.regtest.Stack.up`).

Asserted: the demo printed the commands it ran, and they are the deployed
commands on the files it wrote (which validate, and whose keys are fresh, not
the scenario's seed keys), store-1's light devices in one gateway on its site
node; the two stores, each its own site file, still share
budget between them (the owner's other sites); every invoice the logs call for
is issued and paid, and every period settled; every site's replicas agree; lnd
and the logs agree to the msat (the demo's own check, printed; the site node's
payments are its light devices'); and ``p2pgrid
report`` reads the demo's work directory.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from p2pgrid.config import SiteFile, UtilityFile
from p2pgrid.demo import default_scenario, run_demo, site_entries
from p2pgrid.ledger import bill
from p2pgrid.regtest import Stack
from p2pgrid.reporting import ReportRequest, run_report
from p2pgrid.scenario import load_scenario


async def test_the_demo_runs_the_deployed_commands_from_files(
    two_sites_stack: Stack, tmp_path: Path
) -> None:
    out = io.StringIO()
    console = Console(file=out, width=400, color_system=None)
    work = tmp_path / "demo-run"
    result = await run_demo(
        console,
        scenario_path=None,
        work_dir=work,
        keep=False,
        stack=two_sites_stack,  # shared with the other two-site runs
    )
    printed = out.getvalue()
    scenario = load_scenario(default_scenario())
    kinds = {d.light for site in scenario.sites for d in site.devices}
    assert kinds == {True, False}  # the demo shows light devices and devices on their own lnd
    assert f"p2pgrid -v utility run --config {work / 'utility.toml'} --control" in printed
    for site in scenario.sites:
        site_file = SiteFile(work / f"{site.name}.toml")
        assert site_file.model.site.owner_pubkey == result.sites[site.name].owner_pubkey.hex()
        assert result.sites[site.name] != site.identity  # fresh keys, not the seeds'
        assert [o.name for o in site_file.model.other_sites] == [
            s.name for s in scenario.sites if s != site
        ]
        # A site node's light devices run in one gateway, every other device alone.
        assert (site_file.model.site_lightning is None) == (site.site_node is None)
        light = [d.name for d in site.light_devices]
        for device in site.devices:
            devices = " ".join(f"--device {n}" for n in (light if device.light else [device.name]))
            command = f"p2pgrid -v agent run --config {site_file.path} {devices} --control"
            assert command in printed
    assert [s.name for s in UtilityFile(work / "utility.toml").model.sites] == [
        s.name for s in scenario.sites
    ]
    for site in scenario.sites:
        digests = result.digests[site.name]
        assert len(digests) == 1 + len(site.devices), digests
        assert len(set(digests.values())) == 1, digests
        assert re.search(rf"{site.name}: {len(digests)} replicas agree", printed)
    statuses = {
        (s["site"], s["device"], s["period"]): s["collection"] for s in result.invoice_status
    }
    logs = await site_entries(scenario, result)  # the utility's replicas, by site hash
    owing = set()  # (site, device, period) with grid energy to pay for, by the log
    for site in scenario.sites:
        entries = logs[result.sites[site.name].site_hash]
        for d in site.devices:
            for p in range(scenario.periods):
                if bill(entries, device=d.index, period=p, tariff=scenario.tariff).amount_msat:
                    owing.add((site.name, d.index, p))
            states = result.reports[d.name]["period_states"]
            assert states == {str(p): "settled" for p in range(scenario.periods)}, d.name
    assert set(statuses) == owing
    assert len(owing) >= 6  # the critical fridge always imports; most others too
    assert set(statuses.values()) == {"paid"}, statuses
    assert sum(r["site_shares_received_msat"] for r in result.reports.values()) > 0
    assert "lnd and the logs: agree" in printed, printed[-3000:]
    # The light devices paid (their invoices at least) from the site node.
    for site in (s for s in scenario.sites if s.site_node is not None):
        light = ", ".join(d.name for d in site.light_devices)
        said = re.search(
            rf"site node {site.site_node} of {site.name}: light devices {light}; "
            r"(\d+) payment\(s\) between them \(internal transfers, no Lightning hop\), "
            r"(\d+) over Lightning",
            printed,
        )
        assert said is not None, printed[-3000:]
        assert int(said[2]) >= 1
    # `p2pgrid report` on the demo's work directory finds the sites' fresh keys
    # in its site files.
    request = ReportRequest(default_scenario(), "store-2", None, None, work, tmp_path / "r")
    written = await run_report(console, request)
    assert {p.name for p in written} >= {f"store-2-p{n}.png" for n in range(scenario.periods)}


pytestmark = pytest.mark.timeout(900)
