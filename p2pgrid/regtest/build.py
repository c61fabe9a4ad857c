"""Build btcd, btcctl, lnd and lncli from the Go module proxy into a versioned cache.

The Go wrapper module in ``regtest/gomod`` pins the versions (its go.mod repeats
lnd's replace directives, which ``go install pkg@version`` refuses). Binaries
land in ``<cache>/daemons/<key>/bin`` where ``<key>`` names the versions and a hash
of go.mod/go.sum, so a second run builds nothing.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from p2pgrid.errors import ReportableError

log = logging.getLogger(__name__)

BINARIES = ("btcd", "btcctl", "lnd", "lncli")
PACKAGES = (
    "github.com/btcsuite/btcd",
    "github.com/btcsuite/btcd/cmd/btcctl",
    "github.com/lightningnetwork/lnd/cmd/lnd",
    "github.com/lightningnetwork/lnd/cmd/lncli",
)
LND_BUILD_TAGS = "signrpc walletrpc chainrpc invoicesrpc peersrpc routerrpc"
GOMOD_DIR = Path(__file__).resolve().parents[2] / "regtest" / "gomod"


class BuildError(ReportableError):
    """The daemons could not be built (Go missing, proxy refused a module, ...)."""


@dataclass(frozen=True)
class Daemons:
    """Paths of the built daemons."""

    bin_dir: Path

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def btcd(self) -> Path:
        return self.path("btcd")

    @property
    def lnd(self) -> Path:
        return self.path("lnd")


def default_cache_dir() -> Path:
    env = os.environ.get("P2PGRID_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "p2pgrid"


def _pinned(gomod: str, module: str) -> str:
    match = re.search(rf"^\s*{re.escape(module)} (\S+)$", gomod, re.MULTILINE)
    if not match:
        raise BuildError(f"{GOMOD_DIR / 'go.mod'} does not pin {module}")
    return match.group(1)


def cache_key(gomod_dir: Path = GOMOD_DIR) -> str:
    gomod = (gomod_dir / "go.mod").read_text()
    digest = hashlib.sha256(gomod.encode() + (gomod_dir / "go.sum").read_bytes()).hexdigest()
    lnd = _pinned(gomod, "github.com/lightningnetwork/lnd")
    btcd = _pinned(gomod, "github.com/btcsuite/btcd")
    return f"lnd-{lnd}_btcd-{btcd[:14]}_{digest[:10]}"


def _explain(output: str) -> str:
    lower = output.lower()
    if "410 gone" in lower or "404 not found" in lower or "reading https://" in lower:
        return "the Go module proxy refused a module (see the lines above)"
    if "verifying" in lower and "checksum" in lower:
        return "a module's checksum did not verify against go.sum / the checksum database"
    if "dial tcp" in lower or "no such host" in lower:
        return "the Go module proxy could not be reached"
    return "go build failed (see the lines above)"


async def ensure_daemons(cache_dir: Path | None = None, console: Console | None = None) -> Daemons:
    """Return the built daemons, building them first if the cache lacks them."""
    console = console or Console(stderr=True)
    bin_dir = (cache_dir or default_cache_dir()) / "daemons" / cache_key() / "bin"
    daemons = Daemons(bin_dir)
    if all(daemons.path(b).exists() for b in BINARIES):
        log.debug("daemons cached in %s", bin_dir)
        return daemons
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "Go is not installed (needed once, to build btcd and lnd): "
            "install Go >= 1.25 and put `go` on PATH"
        )
    # Two processes (a demo and a test run, or parallel test sessions) may ask at
    # once: one builds, the others wait on the lock and then find the binaries.
    bin_dir.parent.mkdir(parents=True, exist_ok=True)
    with (bin_dir.parent / "build.lock").open("a") as lock:
        if not _try_lock(lock):
            console.print(f"waiting for another process that is building the daemons ({bin_dir})")
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            if not all(daemons.path(b).exists() for b in BINARIES):
                await _build(go, bin_dir, console)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return daemons


def _try_lock(lock: IO[str]) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def _go(go: str, *args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        go,
        *args,
        cwd=GOMOD_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _build(go: str, bin_dir: Path, console: Console) -> None:
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    started = time.monotonic()
    console.print(f"[bold]Building btcd and lnd once[/] into {bin_dir} (a few minutes on 2 cores)")
    tmp_dir = bin_dir.with_name("bin.partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)

    listing = await _go(go, "list", "-deps", "-tags", LND_BUILD_TAGS, *PACKAGES, env=env)
    out, _ = await listing.communicate()
    if listing.returncode != 0:
        text = out.decode(errors="replace")
        console.print(text[-4000:])
        raise BuildError(f"cannot resolve the daemons' modules: {_explain(text)}")
    total = max(1, len(out.splitlines()))

    proc = await _go(
        go,
        "build",
        "-v",
        "-trimpath",
        "-tags",
        LND_BUILD_TAGS,
        "-o",
        str(tmp_dir) + os.sep,
        *PACKAGES,
        env=env,
    )
    assert proc.stdout is not None
    tail: list[str] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} packages"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("go build", total=total)
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail = [*tail[-40:], line]
            progress.advance(task)
            progress.update(task, description=f"go build {line.split('/')[-1][:24]:<24}")
    if await proc.wait() != 0:
        console.print("\n".join(tail))
        raise BuildError(_explain("\n".join(tail)))
    missing = [b for b in BINARIES if not (tmp_dir / b).exists()]
    if missing:
        raise BuildError(f"go build finished but did not produce {missing}")
    shutil.rmtree(bin_dir, ignore_errors=True)
    tmp_dir.rename(bin_dir)
    console.print(f"[green]Built[/] {', '.join(BINARIES)} in {time.monotonic() - started:.0f}s")
