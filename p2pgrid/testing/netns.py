"""Network namespaces for tests of several hosts on one machine (``ip netns``): not the product.

A :class:`Lan` is a bridge in the root namespace with an address of its own
(:attr:`Lan.gateway`, ``10.77.N.1/24``, N a subnet no interface of this machine
uses yet) and, per party, a network namespace joined to the bridge by a veth
pair: the party's ``eth0`` has ``10.77.N.(10 + i)`` (:meth:`Lan.address`) and
its loopback is up. A process runs in a party's namespace through the command
prefix ``ip netns exec <ns>`` (:meth:`Lan.placement`); it reaches the other
parties only over the bridge, and the root namespace (where the regtest
daemons run) at the gateway. A party's own ``127.0.0.1`` is its own.

Names carry this process's id (hex; interface names have at most 15
characters), so parallel sessions do not collide (one LAN per process at a
time) and :func:`reap_leftovers` removes what a session that died left behind.
:meth:`Lan.down` removes every namespace (their veth ends go with them) and the
bridge that :meth:`Lan.up` made, also after a failed :meth:`Lan.up`, and is
safe to call twice.
:func:`netns_refused` says why, if this machine will not make namespaces.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Sequence

from p2pgrid.errors import ReportableError
from p2pgrid.launcher import Placement
from p2pgrid.regtest.process import alive

#: Every namespace made here is named ``p2pgrid-<pid hex>-<i>``, the bridge
#: ``p2g-<pid hex>-br`` and the veth ends on it ``p2g-<pid hex>-<i>``.
NS_PREFIX = "p2pgrid-"
IF_PREFIX = "p2g-"
#: The /16 that test LANs draw their /24 from.
SUPERNET = ipaddress.IPv4Network("10.77.0.0/16")
FIRST_HOST = 10  # party i gets .(FIRST_HOST + i); the gateway is .1
IP_TIMEOUT_S = 30.0


class NetnsError(ReportableError):
    """An ``ip`` command failed: its command line and stderr say why."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; :class:`NetnsError` with its stderr if it fails and ``check``."""
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"ip {' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def netns_refused() -> str | None:
    """Why this machine will not make a network namespace (``None``: it will).

    ``ip`` itself missing is not a refusal: :class:`NetnsError` says to install
    iproute2 (``./dev test`` does)."""
    if shutil.which("ip") is None:
        raise NetnsError("`ip` is not installed: install iproute2 (./dev test does)")
    probe = f"{NS_PREFIX}probe-{os.getpid():x}"
    added = ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        who = "" if os.geteuid() == 0 else " (not root)"
        return f"`ip netns add` refused{who}: {added.stderr.strip()}"
    ip("netns", "del", probe)
    return None


def _owner(name: str, prefix: str) -> int | None:
    """The pid (hex) in a name made here, or ``None`` if it is not one."""
    match = re.match(re.escape(prefix) + r"([0-9a-f]+)-", name)
    return int(match.group(1), 16) if match else None


def reap_leftovers() -> list[str]:
    """Remove the namespaces and bridges of sessions that died; returns their names."""
    reaped = []
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = _owner(name, NS_PREFIX)
        if pid is not None and not alive(pid):
            ip("netns", "del", name, check=False)
            reaped.append(name)
    for line in ip("-o", "link", "show", "type", "bridge").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        pid = _owner(name, IF_PREFIX)
        if pid is not None and not alive(pid):
            ip("link", "del", name, check=False)
            reaped.append(name)
    return reaped


def _free_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /24 of :data:`SUPERNET` that no interface of the root namespace is in."""
    used = set()
    for line in ip("-o", "-4", "addr", "show").stdout.splitlines():
        if m := re.search(r"inet (\S+)", line):
            used.add(ipaddress.IPv4Interface(m.group(1)).network)
    subnets = list(SUPERNET.subnets(new_prefix=24))[1:]  # not 10.77.0.0/24
    for k in range(len(subnets)):
        candidate = subnets[(seed + k) % len(subnets)]
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise NetnsError(f"every /24 of {SUPERNET} is in use on this machine")


class Lan:
    """A bridge and one network namespace per party (see the module docstring)."""

    def __init__(self, parties: Sequence[str]) -> None:
        if len(set(parties)) != len(parties) or not parties:
            raise NetnsError(f"a LAN needs one or more distinct parties, not {parties}")
        pid = f"{os.getpid():x}"
        self.parties = tuple(parties)
        self.bridge = f"{IF_PREFIX}{pid}-br"
        self.namespaces = {p: f"{NS_PREFIX}{pid}-{i}" for i, p in enumerate(parties)}
        self._veths = {p: f"{IF_PREFIX}{pid}-{i}" for i, p in enumerate(parties)}
        self.subnet: ipaddress.IPv4Network | None = None
        #: What this LAN made (and so removes): never a namespace or bridge that
        #: was there before, e.g. another live LAN of this process by mistake.
        self._made: list[tuple[str, str]] = []  # ("netns" | "link", name)

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge."""
        return str(self._net()[1])

    def address(self, party: str) -> str:
        """``party``'s address: its namespace's ``eth0``."""
        return str(self._net()[FIRST_HOST + self.parties.index(party)])

    def prefix(self, party: str) -> tuple[str, ...]:
        """The command prefix that runs a program in ``party``'s namespace."""
        return ("ip", "netns", "exec", self.namespaces[party])

    def placement(self, party: str) -> Placement:
        """A process of ``party`` for the launcher: in its namespace, on its address."""
        return Placement(prefix=self.prefix(party), listen_host=self.address(party))

    def _net(self) -> ipaddress.IPv4Network:
        if self.subnet is None:
            raise NetnsError("the LAN is not up")
        return self.subnet

    def up(self) -> None:
        """Make the bridge and the namespaces; on failure, remove what was made."""
        reap_leftovers()
        self.subnet = _free_subnet(os.getpid())
        try:
            ip("link", "add", "name", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for party in self.parties:
                ns, veth = self.namespaces[party], self._veths[party]
                ip("netns", "add", ns)
                self._made.append(("netns", ns))
                ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                ip("link", "set", veth, "master", self.bridge, "up")
                ip("-n", ns, "addr", "add", f"{self.address(party)}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Remove the namespaces (their veth ends go with them) and the bridge that
        :meth:`up` made, last made first."""
        while self._made:
            kind, name = self._made.pop()
            ip(kind, "del", name)
