"""Faults injected into a running scenario: the tooling of ``tests/faults`` (not the product).

A :class:`Fault` is one row of the fault table (:data:`FAULTS`): what to do to which
kind of process, and for how long. :class:`Injector` finds the process in ``/proc``
(daemons by their data directory, agents and the utility by their deployment's
command: ``agent run --config <site file> --device <name>``), applies the fault
and undoes it:

- ``kill``: SIGKILL, then start it again on the same data directory after the
  outage (daemons by the stack; an agent or the utility by the ``restart`` the
  injector was given: the launcher's :class:`p2pgrid.launcher.Running`); btcd,
  which deletes its regtest chain at every start, is given its stored blocks back
  (:func:`p2pgrid.regtest.btcd.stored_blocks`) while the lnd nodes are held off
  its RPC port, so that they find the same chain, never height 0;
- ``pause``: SIGSTOP, SIGCONT after the outage (the process keeps its sockets: peers
  see a node that accepts connections and never answers);
- ``partition``: every libp2p packet that a site's agents send is dropped (iptables
  on ``lo``: their sockets' ports, and a cgroup for the sockets they open during the
  cut); their own lnd stays reachable. Removed after the outage;
- ``slow``: a lossy link: a share of those packets is dropped at random (TCP
  retransmits: every exchange slows down), removed after the outage.

Nothing here is imported by the product. Iptables rules carry the comment
:data:`RULE_COMMENT` plus the trial's id so that :func:`clear_rules` removes every
rule a crashed run left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from p2pgrid.config.deployment import Deployment
from p2pgrid.errors import FatalError
from p2pgrid.lightning import LndClient, NodeUnreachable
from p2pgrid.poll import wait_until
from p2pgrid.regtest import Stack, process
from p2pgrid.regtest.btcd import BtcdError, BtcdRpc, BtcdUnreachable, stored_blocks

#: Comment of every iptables rule made here (and the prefix of the cgroups).
RULE_COMMENT = "p2pgrid-fault"
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
#: Deadline for a restarted daemon to serve again.
RESTART_TIMEOUT_S = 120.0


class Target(enum.Enum):
    LND = "lnd"  # the lnd of one device (chosen by the seed)
    BTCD = "btcd"
    AGENT = "agent"  # one device agent (chosen by the seed)
    UTILITY = "utility"
    SITE = "site"  # every agent of one site (chosen by the seed)


class Action(enum.Enum):
    KILL = "kill"
    PAUSE = "pause"
    PARTITION = "partition"
    SLOW = "slow"


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """One row of the fault table."""

    name: str
    target: Target
    action: Action
    #: How long the fault lasts (the process is away, the link cut or slow).
    outage_s: float
    #: Why it is not run yet (an issue that must land first), or "".
    not_yet: str = ""


#: The fault table. Every trial picks one row (in turn) and a moment (by its seed).
FAULTS: tuple[Fault, ...] = (
    Fault("lnd-kill", Target.LND, Action.KILL, outage_s=8.0),
    Fault("lnd-pause", Target.LND, Action.PAUSE, outage_s=20.0),
    Fault("btcd-kill", Target.BTCD, Action.KILL, outage_s=15.0),
    Fault("btcd-pause", Target.BTCD, Action.PAUSE, outage_s=20.0),
    Fault("agent-pause", Target.AGENT, Action.PAUSE, outage_s=8.0),
    Fault("utility-pause", Target.UTILITY, Action.PAUSE, outage_s=8.0),
    Fault("site-partition", Target.SITE, Action.PARTITION, outage_s=10.0),
    Fault("agent-slow-link", Target.AGENT, Action.SLOW, outage_s=15.0),
    Fault("agent-kill", Target.AGENT, Action.KILL, outage_s=5.0),
    Fault("utility-kill", Target.UTILITY, Action.KILL, outage_s=5.0),
)


def runnable(faults: Iterable[Fault] = FAULTS) -> list[Fault]:
    return [f for f in faults if not f.not_yet]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def processes_under(work_dir: Path) -> list[int]:
    """Live processes whose command line names ``work_dir`` (agents, utility)."""
    marker = str(work_dir.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        pid = int(entry.name) if entry.name.isdigit() else 0
        if pid and pid != os.getpid() and marker in _cmdline(pid) and process.alive(pid):
            pids.append(pid)
    return pids


def _socket_ports(pid: int) -> set[tuple[int, int]]:
    """(local port, remote port) of every TCP socket of ``pid`` on 127.0.0.1."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[9] in inodes:
                    ports.add(
                        (int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16))
                    )
    return ports


def _iptables(*args: str) -> None:
    subprocess.run(["iptables", *args], check=True, capture_output=True)


def clear_rules() -> None:
    """Remove every iptables rule and cgroup made by any injector (also a crashed one's)."""
    listed = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        if RULE_COMMENT in line and line.startswith("-A "):
            subprocess.run(["iptables", "-D", *line.split()[1:]], capture_output=True)
    if CGROUP_ROOT.exists():
        for group in CGROUP_ROOT.glob(f"{RULE_COMMENT}-*"):
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    (CGROUP_ROOT / "cgroup.procs").write_text(pid)
                group.rmdir()


@dataclasses.dataclass
class Injected:
    """What one injection did (for the trial's record)."""

    fault: Fault
    victim: str
    pids: list[int]
    at_s: float = 0.0


class Injector:
    """Applies faults to the processes of one run on one stack."""

    def __init__(
        self,
        stack: Stack,
        deployment: Deployment,
        trial: str,
        restart: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.stack = stack
        self.deployment = deployment
        self.work_dir = deployment.dir
        self.trial = trial
        #: Starts a killed agent or utility (by name) again on its files.
        self.restart = restart
        self._cgroup = CGROUP_ROOT / f"{RULE_COMMENT}-{trial}"

    # -- finding victims -----------------------------------------------------------

    def lnd_pid(self, node: str) -> int:
        marker = f"--lnddir={self.stack.lnd_config(node).lnd_dir}"
        (pid,) = [p.pid for p in process.find(self.stack.config.dir) if marker in p.cmdline]
        return pid

    def btcd_pid(self) -> int:
        (pid,) = [
            p.pid
            for p in process.find(self.stack.config.dir)
            if "--lnddir" not in p.cmdline and "--regtest" in p.cmdline
        ]
        return pid

    def node_pid(self, name: str) -> int:
        """The agent (or utility) process named ``name`` of this run: the one whose
        command is its deployment's (``agent run --config <site file> --device <name>``)."""
        command = " ".join(self.deployment.argv(name)) + " "
        (pid,) = [pid for pid in processes_under(self.work_dir) if command in _cmdline(pid)]
        return pid

    # -- applying ------------------------------------------------------------------

    async def inject(self, fault: Fault, victims: list[str]) -> Injected:
        """Apply ``fault`` to ``victims`` (names: a node of the stack or of the run),
        keep it for ``fault.outage_s``, undo it. Returns what was done."""
        if fault.target is Target.LND:
            pids = [self.lnd_pid(v) for v in victims]
        elif fault.target is Target.BTCD:
            pids = [self.btcd_pid()]
        else:
            pids = [self.node_pid(v) for v in victims]
        done = Injected(fault, ",".join(victims), pids)
        match fault.action:
            case Action.PAUSE:
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(fault.outage_s)  # the outage itself
                finally:
                    for pid in pids:
                        os.kill(pid, signal.SIGCONT)
            case Action.KILL:
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                await asyncio.sleep(fault.outage_s)  # the outage itself
                if fault.target is Target.LND:
                    for v in victims:
                        await self.restart_lnd(v)
                elif fault.target is Target.BTCD:
                    await self.restart_btcd()
                elif self.restart is None:
                    raise FatalError(f"{fault.name}: this injector cannot restart {victims}")
                else:
                    for v in victims:
                        await self.restart(v)
            case Action.PARTITION | Action.SLOW:
                drop = ["-j", "DROP"]
                if fault.action is Action.SLOW:
                    drop = ["-m", "statistic", "--mode", "random", "--probability", "0.3", *drop]
                self._cut(victims, pids, drop)
                try:
                    await asyncio.sleep(fault.outage_s)  # the outage itself
                finally:
                    clear_rules()
        return done

    def _cut(self, victims: list[str], pids: list[int], drop: list[str]) -> None:
        """Drop (some of) the libp2p packets the processes send on ``lo``: those of
        their sockets now, and of the sockets they open later (their cgroup)."""
        keep = {self.stack.lnd_config(v).rest_port for v in victims}  # their own lnd
        comment = ["-m", "comment", "--comment", f"{RULE_COMMENT}-{self.trial}"]
        self._cgroup.mkdir(exist_ok=True)
        for pid in pids:
            (self._cgroup / "cgroup.procs").write_text(str(pid))
        path = self._cgroup.relative_to(CGROUP_ROOT)
        for port in sorted(keep):
            _iptables("-I", "OUTPUT", "-o", "lo", "-m", "cgroup", "--path", str(path),
                      "-p", "tcp", "--dport", str(port), "-j", "ACCEPT", *comment)  # fmt: skip
        _iptables("-A", "OUTPUT", "-o", "lo", "-m", "cgroup", "--path", str(path),
                  "-p", "tcp", *drop, *comment)  # fmt: skip
        local = sorted({lp for pid in pids for lp, rp in _socket_ports(pid) if rp not in keep})
        for i in range(0, len(local), 15):  # multiport takes 15 ports
            ports = ",".join(str(p) for p in local[i : i + 15])
            _iptables("-A", "OUTPUT", "-o", "lo", "-p", "tcp", "-m", "multiport",
                      "--sports", ports, *drop, *comment)  # fmt: skip

    # -- restarting daemons --------------------------------------------------------

    async def restart_lnd(self, node: str) -> None:
        cfg = self.stack.lnd_config(node)
        btcd = self.stack.rpc().config
        process.spawn(cfg.args(self.stack.daemons.lnd, btcd), cfg.lnd_dir / "lnd.out")
        async with LndClient(cfg.endpoint(), call_timeout_s=5.0) as client:

            async def serving() -> bool:
                try:
                    info = await client.get_info()
                except NodeUnreachable:
                    return False
                return info.synced_to_chain

            await wait_until(serving, timeout_s=RESTART_TIMEOUT_S, what=f"{node} restarted")

    async def restart_btcd(self) -> None:
        """Start btcd again with the chain it had: its blocks are read from its flat
        files before the start deletes them and submitted once it serves, while
        every lnd of the stack is held off its RPC port (an lnd that saw height 0
        would take the replay for a reorg)."""
        rpc: BtcdRpc = self.stack.rpc()
        blocks = stored_blocks(rpc.config)
        hold = self._hold_off(rpc.config.rpc_port)
        try:
            process.spawn(
                rpc.config.args(self.stack.daemons.btcd), rpc.config.data_dir / "btcd.out"
            )

            async def serving() -> int | None:
                try:
                    return await rpc.block_count() + 1
                except BtcdUnreachable:
                    return None

            await wait_until(serving, timeout_s=RESTART_TIMEOUT_S, what="btcd restarted")
            for raw in blocks[1:]:  # the genesis block is built in
                refused = await rpc.submit_block(raw)
                if refused not in (None, "duplicate"):
                    raise BtcdError(f"btcd refused a stored block on replay: {refused}")
            if blocks:
                tip = hashlib.sha256(hashlib.sha256(blocks[-1][:80]).digest()).digest()[::-1]
                height = await rpc.block_count()
                if await rpc.block_hash(height) != tip.hex():
                    raise BtcdError(f"btcd's tip after replay is not the stored tip {tip.hex()}")
        finally:
            hold()
            await rpc.aclose()

    def _hold_off(self, port: int) -> Callable[[], None]:
        """Drop what the stack's lnd nodes send to ``port`` until the returned call."""
        group = CGROUP_ROOT / f"{RULE_COMMENT}-{self.trial}-lnd"
        group.mkdir(exist_ok=True)
        for node in self.stack.layout.node_names:
            with contextlib.suppress(ValueError, OSError):  # one that is down has no pid
                (group / "cgroup.procs").write_text(str(self.lnd_pid(node)))
        rule = ["OUTPUT", "-o", "lo", "-m", "cgroup", "--path", str(group.relative_to(CGROUP_ROOT)),
                "-p", "tcp", "--dport", str(port), "-j", "DROP",
                "-m", "comment", "--comment", f"{RULE_COMMENT}-{self.trial}"]  # fmt: skip
        _iptables("-I", *rule)

        def release() -> None:
            with contextlib.suppress(subprocess.CalledProcessError):
                _iptables("-D", *rule)
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    (CGROUP_ROOT / "cgroup.procs").write_text(pid)
                group.rmdir()

        return release

    async def heal(self) -> None:
        """After a trial: every daemon of the stack runs again and none is stopped."""
        found = process.find(self.stack.config.dir)
        for p in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
        if not any("--lnddir" not in p.cmdline and "--regtest" in p.cmdline for p in found):
            await self.restart_btcd()
        for node in self.stack.layout.node_names:
            marker = f"--lnddir={self.stack.lnd_config(node).lnd_dir}"
            if not any(marker in p.cmdline for p in found):
                await self.restart_lnd(node)
