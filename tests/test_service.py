"""A node process stops at any moment, in order, and ends with one line and an exit code.

In-process: :class:`Service` with real asyncio tasks and a real SIGTERM to this
process. As processes: the agent and the utility with lnd absent or unreachable.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2pgrid.errors import ConfigError, FatalError, ReportableError, RetryableError
from p2pgrid.service import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    Command,
    Service,
    exit_code,
)
from p2pgrid.testing.ports import free_port

SCENARIO = Path(__file__).parent.parent / "p2pgrid" / "scenarios" / "two_sites.toml"


class _Commands:
    """Commands a test feeds one by one; records when the reader let go of it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Command] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[Command]:
        try:
            while True:
                yield await self.queue.get()
        finally:
            self.closed.set()


async def _serve_long_work(stop: Command | None) -> list[str]:
    """Start work that never ends by itself, then stop (a command or SIGTERM)."""
    events: list[str] = []
    commands = _Commands()
    service = Service()
    started, answered = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            events.append(f"work cancelled, input closed: {commands.closed.is_set()}")

    async def handle(command: Command) -> None:
        if command["cmd"] == "start":
            service.spawn(work())
        events.append(command["cmd"])
        answered.set()

    serving = asyncio.create_task(service.serve(aiter(commands), handle))
    await commands.queue.put({"cmd": "start"})
    await started.wait()
    answered.clear()
    await commands.queue.put({"cmd": "digest"})  # answered while the work runs
    await answered.wait()
    if stop is None:
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        await commands.queue.put(stop)
    async with asyncio.timeout(10):
        await serving
    return events


@pytest.mark.parametrize("stop", [{"cmd": "stop"}, None], ids=["stop", "sigterm"])
async def test_stop_ends_running_work_after_input(stop: Command | None) -> None:
    events = await _serve_long_work(stop)
    assert events == ["start", "digest", "work cancelled, input closed: True"]


async def test_failing_work_stops_the_service_with_its_error() -> None:
    service = Service()
    commands = _Commands()

    async def work() -> None:
        raise ReportableError("payment failed")

    async def handle(command: Command) -> None:
        service.spawn(work())

    await commands.queue.put({"cmd": "start"})
    with pytest.raises(ExceptionGroup) as caught:
        async with asyncio.timeout(10):
            await service.serve(aiter(commands), handle)
    assert exit_code(caught.value) == (EXIT_FAILED, "error: payment failed")


def test_exit_codes_follow_the_error_split() -> None:
    assert exit_code(ConfigError("bad")) == (EXIT_CONFIG, "error: bad")
    assert exit_code(RetryableError("down")) == (EXIT_UNAVAILABLE, "error: down")
    assert exit_code(FatalError("broken")) == (EXIT_FAILED, "error: broken")
    nested = ExceptionGroup("g", [ExceptionGroup("h", [RetryableError("lnd down")])])
    assert exit_code(nested) == (EXIT_UNAVAILABLE, "error: lnd down")
    assert exit_code(ValueError("a bug")) is None  # a bug keeps its traceback


def _self_signed(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _runtime(tmp_path: Path, *, files: bool) -> Path:
    cert, macaroon = tmp_path / "tls.cert", tmp_path / "admin.macaroon"
    if files:
        _self_signed(cert)
        macaroon.write_bytes(b"\x02macaroon")
        macaroon.chmod(0o600)
    path = tmp_path / "runtime.json"
    lnd = {
        "name": "lnd-x",
        "rest_host": "127.0.0.1",
        "rest_port": free_port(),
        "tls_cert": str(cert),
        "macaroon": str(macaroon),
    }
    path.write_text(json.dumps({"lnd": lnd, "data_dir": str(tmp_path / "data")}))
    return path


@pytest.mark.parametrize(
    ("module", "extra"), [("p2pgrid.agent", ["--name", "s1-fridge"]), ("p2pgrid.utility", [])]
)
@pytest.mark.parametrize(
    ("files", "code", "says"),
    [(False, EXIT_CONFIG, "cannot load TLS cert or macaroon"), (True, EXIT_UNAVAILABLE, "lnd-x")],
    ids=["no-lnd-files", "lnd-down"],
)
def test_with_the_stack_down_a_process_says_so_in_one_line(
    tmp_path: Path, module: str, extra: list[str], files: bool, code: int, says: str
) -> None:
    runtime = _runtime(tmp_path, files=files)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            "--scenario",
            str(SCENARIO),
            "--runtime",
            str(runtime),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert says in errors[0]
