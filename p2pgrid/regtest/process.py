"""Daemon processes of a stack: spawn detached, find by data directory, stop.

Daemons outlive the script that started them (``regtest/up`` returns and the
stack keeps running), so they are found again through ``/proc``: every daemon's
command line names its stack's directory. That also finds daemons left behind
by a crash, whatever state file survived.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from p2pgrid.errors import TimeoutExpired
from p2pgrid.poll import wait_until

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
"""How long a daemon may take to exit after SIGTERM before it gets SIGKILL."""


@dataclass(frozen=True)
class DaemonProcess:
    pid: int
    cmdline: str


def spawn(args: list[str], log_path: Path) -> int:
    """Start a daemon in its own session, output appended to ``log_path``.

    ``posix_spawn`` rather than ``subprocess.Popen``: the daemon is meant to outlive
    this process, so there is no Popen object to keep (``alive`` reaps zombies).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawn(args[0], args, dict(os.environ), file_actions=actions, setsid=True)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    if state == "Z":  # a zombie of ours: reap it
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def find(stack_dir: Path) -> list[DaemonProcess]:
    """Every live process whose command line names ``stack_dir``."""
    marker = str(stack_dir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        named = marker + os.sep in cmdline or cmdline.rstrip().endswith(marker)
        if named and alive(int(entry.name)):
            found.append(DaemonProcess(int(entry.name), cmdline.strip()))
    return found


async def terminate(pids: list[int], *, what: str) -> None:
    """SIGTERM, wait up to :data:`STOP_TIMEOUT_S`, then SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

    async def all_gone() -> bool:
        return not any(alive(p) for p in pids)

    try:
        await wait_until(all_gone, timeout_s=STOP_TIMEOUT_S, what=f"{what} to exit")
    except TimeoutExpired:
        log.warning("%s did not exit after SIGTERM; sending SIGKILL", what)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await wait_until(all_gone, timeout_s=STOP_TIMEOUT_S, what=f"{what} to die")
