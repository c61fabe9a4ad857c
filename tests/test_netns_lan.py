"""The namespaces of the several-hosts tests leave nothing behind (p2pgrid.testing.netns)."""

from __future__ import annotations

import subprocess

import pytest

from p2pgrid.testing.netns import Lan, NetnsError, ip, netns_refused, reap_leftovers


@pytest.fixture(autouse=True)
def _namespaces_allowed() -> None:
    refused = netns_refused()
    if refused is not None:
        pytest.skip(f"this machine makes no network namespaces: {refused}")


def made(lan: Lan) -> set[str]:
    """Which of the LAN's namespaces and bridge exist now."""
    listed = set(ip("netns", "list").stdout.split())
    found = {ns for ns in lan.namespaces.values() if ns in listed}
    if ip("link", "show", lan.bridge, check=False).returncode == 0:
        found.add(lan.bridge)
    return found


def test_down_removes_everything_up_made_and_is_safe_twice() -> None:
    lan = Lan(("utility", "store-1"))
    lan.up()
    try:
        assert made(lan) == {lan.bridge, *lan.namespaces.values()}
        assert lan.address("utility") != lan.address("store-1")
        inside = ip("-n", lan.namespaces["store-1"], "-o", "-4", "addr", "show", "dev", "eth0")
        assert f"inet {lan.address('store-1')}/24" in inside.stdout
    finally:
        lan.down()
    assert made(lan) == set()
    lan.down()


def test_a_failed_up_removes_what_it_made() -> None:
    lan = Lan(("utility", "store-1"))
    in_the_way = lan.namespaces["store-1"]  # up fails at the second party
    ip("netns", "add", in_the_way)
    try:
        with pytest.raises(NetnsError, match="netns add"):
            lan.up()
        assert made(lan) == {in_the_way}  # not made by the LAN: not removed by it
    finally:
        lan.down()
        ip("netns", "del", in_the_way)
    assert made(lan) == set()


def test_what_a_dead_session_left_is_reaped() -> None:
    pid = subprocess.Popen(["true"])
    pid.wait()
    ns, bridge = f"p2pgrid-{pid.pid:x}-0", f"p2g-{pid.pid:x}-br"
    ip("netns", "add", ns)
    ip("link", "add", "name", bridge, "type", "bridge")
    try:
        assert {ns, bridge} <= set(reap_leftovers())
        assert ns not in ip("netns", "list").stdout.split()
        assert ip("link", "show", bridge, check=False).returncode != 0
    finally:
        ip("netns", "del", ns, check=False)
        ip("link", "del", bridge, check=False)


def test_a_lan_needs_distinct_parties() -> None:
    with pytest.raises(NetnsError, match="distinct"):
        Lan(("a", "a"))
