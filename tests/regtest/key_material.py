"""Every form of a run's key material, and a scan of files for any of it.

Used by the end-to-end test on every file its run wrote (process logs, runtime
files, databases, reports) and on the daemons' logs: no key, seed or macaroon
may appear in any of them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from p2pgrid.identity import Signer
from p2pgrid.scenario import Scenario

#: Daemon files that hold secrets by design (the wallet, the macaroons): not logs.
NOT_LOGS = {".macaroon", ".db", ".cert", ".key", ".wif"}


@dataclass(frozen=True)
class Needle:
    label: str
    data: bytes


def _signer_forms(label: str, signer: Signer) -> Iterator[Needle]:
    yield Needle(f"{label} key (raw)", signer.secret)
    yield Needle(f"{label} key (hex)", signer.secret.hex().encode())


def scenario_secrets(scenario: Scenario) -> list[Needle]:
    """Seeds and keys of the owner, the devices and the utility, in raw and text forms."""
    needles: list[Needle] = []
    for site in scenario.sites:
        needles.append(Needle(f"{site.name} seed", site.seed.encode()))
        needles += _signer_forms(f"{site.name} owner", site.owner_signer)
        for device in site.devices:
            needles += _signer_forms(f"{device.name}", site.device_signer(device.index))
        needles += _signer_forms(f"utility for {site.name}", scenario.utility.signer(site))
    utility = scenario.utility
    needles.append(Needle("utility seed", utility.seed.encode()))
    needles.append(Needle("utility invoice secret", utility.invoice_secret))
    needles.append(Needle("utility invoice secret (hex)", utility.invoice_secret.hex().encode()))
    return needles


def deployment_secrets(keys: Path) -> list[Needle]:
    """Every key file under ``keys`` (a deployment's: owner, devices, the utility's
    key and invoice secret), in raw and hex forms."""
    needles: list[Needle] = []
    for path in sorted(keys.rglob("*")):
        if path.is_file():
            secret = bytes.fromhex(path.read_text().strip())
            needles += [
                Needle(f"{path.name} (raw)", secret),
                Needle(f"{path.name} (hex)", secret.hex().encode()),
            ]
    return needles


def macaroon_secrets(macaroons: Iterable[Path]) -> list[Needle]:
    needles = []
    for path in macaroons:
        raw = path.read_bytes()
        for form, data in (
            ("hex", raw.hex().encode()),
            ("base64", base64.b64encode(raw)),
            ("base64url", base64.urlsafe_b64encode(raw)),
        ):
            needles.append(Needle(f"macaroon {path.parent.name} ({form})", data))
    return needles


def scan(files: Iterable[Path], needles: Iterable[Needle]) -> list[str]:
    """``file: label`` for every needle found in a file (empty: nothing leaked)."""
    needles = [n for n in needles if len(n.data) >= 8]  # shorter is noise, not a key
    found = []
    for path in files:
        content = path.read_bytes()
        for needle in needles:
            if needle.data in content:
                found.append(f"{path}: {needle.label}")
    return found


def files_under(root: Path, *, logs_only: bool = False) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not (logs_only and (p.suffix in NOT_LOGS or "wallet" in p.name))
    )
