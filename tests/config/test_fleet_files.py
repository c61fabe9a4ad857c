"""The scale fleet's files (:mod:`p2pgrid.testing.fleet`): what the bench and its
end-to-end test run is what the plan says, and files the product accepts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from p2pgrid.config.deployment import LndNode
from p2pgrid.config.files import SiteFile, UtilityFile
from p2pgrid.config.keys import read_entries
from p2pgrid.identity import Signer, SiteIdentity
from p2pgrid.ledger import Allocation, Enrol, Role
from p2pgrid.lightning import LndEndpoint
from p2pgrid.testing.fleet import (
    FleetFailed,
    FleetNodes,
    FleetPlan,
    FleetSite,
    saying_who,
    with_bootstrap,
    write_fleet,
)

#: Public keys in the form lnd prints (any valid point will do for the files).
PUBKEYS = [Signer.generate().pubkey.hex() for _ in range(5)]


def nodes(names: list[str], tmp_path: Path) -> dict[str, LndNode]:
    return {
        name: LndNode(
            LndEndpoint(
                name,
                "127.0.0.1",
                10_000 + i,
                tmp_path / f"{name}.cert",
                tmp_path / f"{name}.macaroon",
            ),
            PUBKEYS[i],
        )
        for i, name in enumerate(names)
    }


def test_the_plan_spreads_devices_and_own_lnds_over_the_sites() -> None:
    plan = FleetPlan(devices=10, sites=3, light_fraction=0.7, interval_s=5.0, intervals=2)
    assert [plan.site_size(s) for s in range(3)] == [4, 3, 3]
    assert plan.lnd_devices == 3
    assert list(plan.own_lnd()) == [(0, 0), (1, 0), (2, 0)]
    with pytest.raises(ValueError, match="sites"):
        FleetPlan(devices=2, sites=3, light_fraction=1.0, interval_s=5.0, intervals=2)
    with pytest.raises(ValueError, match="light fraction"):
        FleetPlan(devices=2, sites=1, light_fraction=1.5, interval_s=5.0, intervals=2)


def test_the_fleet_files_enrol_and_allocate_every_device(tmp_path: Path) -> None:
    plan = FleetPlan(devices=7, sites=2, light_fraction=0.75, interval_s=5.0, intervals=2)
    names = ["utility", "site-a", "site-b", "own-1", "own-2"]
    fleet = write_fleet(
        tmp_path / "fleet",
        plan,
        FleetNodes(nodes(names, tmp_path), "utility", ("site-a", "site-b"), ("own-1", "own-2")),
    )
    assert [s.devices for s in fleet.sites] == [
        ("s0-d0", "s0-d1", "s0-d2", "s0-d3"),
        ("s1-d0", "s1-d1", "s1-d2"),
    ]
    assert (fleet.node_of["s0-d0"], fleet.node_of["s1-d0"]) == ("own-1", "own-2")
    assert fleet.light == {n for s in fleet.sites for n in s.devices} - {"s0-d0", "s1-d0"}
    assert {fleet.node_of[n] for n in fleet.light} == {"site-a", "site-b"}
    utility = UtilityFile(fleet.utility_file).model
    assert [s.name for s in utility.sites] == ["site-0", "site-1"]
    for site, node in zip(fleet.sites, ("site-a", "site-b"), strict=True):
        model = SiteFile(site.file).model
        assert model.site_lightning is not None
        assert model.site_lightning.pubkey == PUBKEYS[names.index(node)]
        assert [d.lightning for d in model.devices][:2] == ["own", "site"]
        assert (model.clock.intervals_per_period, model.clock.interval_s) == (2, 5.0)
        entries = read_entries(site.file.parent / "site.entries", SiteIdentity.from_hex(site.owner))
        enrolled = {e.body.index for e in entries if isinstance(e.body, Enrol)
                    and e.body.role == Role.DEVICE}  # fmt: skip
        allocated = sum(e.body.amount_msat for e in entries if isinstance(e.body, Allocation))
        assert enrolled == set(site.index.values())
        assert allocated == model.site.budget_msat

        # Before its gateway starts: the utility's address once, on its first row.
        addrs = ["/ip4/127.0.0.1/tcp/4001/p2p/QmUtility"]
        site.file.write_text(with_bootstrap(site.file.read_text(), addrs))
        bootstraps = [d.bootstrap for d in SiteFile(site.file).model.devices]
        assert bootstraps == [addrs] + [[]] * (len(site.devices) - 1)


def fleet_sites(sizes: list[int], tmp_path: Path) -> list[FleetSite]:
    sites = []
    for s, n in enumerate(sizes):
        names = tuple(f"s{s}-d{d}" for d in range(n))
        sites.append(FleetSite(f"site-{s}", tmp_path / f"site-{s}.toml", PUBKEYS[s], names,
                               {name: d for d, name in enumerate(names)}))  # fmt: skip
    return sites


async def test_a_passed_deadline_says_how_far_each_site_came(tmp_path: Path) -> None:
    sites = fleet_sites([3, 2, 2], tmp_path)
    seen = {"site-0": {"s0-d0": {}, "s0-d1": {}, "s0-d2": {}}, "site-1": {"s1-d0": {}}}
    with pytest.raises(FleetFailed) as failed:
        async with saying_who(sites, "done", seen, 0.01):
            await asyncio.Event().wait()  # never set: the deadline passes
    assert str(failed.value) == (
        "no 'done' line of every device after 0 s: site-0 3/3, site-1 1/2, site-2 not read"
    )
    assert isinstance(failed.value.__cause__, TimeoutError)


async def test_a_passed_deadline_with_every_device_read_names_the_utility(tmp_path: Path) -> None:
    sites = fleet_sites([1, 1], tmp_path)
    seen = {"site-0": {"s0-d0": {}}, "site-1": {"s1-d0": {}}}
    with pytest.raises(FleetFailed, match=r"site-0 1/1, site-1 1/1; the utility's not$"):
        async with saying_who(sites, "done", seen, 0.01):
            await asyncio.Event().wait()


async def test_within_its_deadline_nothing_is_raised(tmp_path: Path) -> None:
    async with saying_who(fleet_sites([1], tmp_path), "ready", {}, 5.0):
        pass
