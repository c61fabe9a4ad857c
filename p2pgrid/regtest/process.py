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
import subprocess
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
    """Start a daemon in its own session, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid


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
