"""The site owner's and the utility's one-off commands: keys and signed entries.

``site init`` makes the owner's key (the site *is* its public key) and starts
the owner's entries file with the utility's enrolment; ``utility init`` makes
the utility's key and invoice secret; ``device add`` makes a device's key and
enrols it (``enrol`` and ``device_info``); ``device revoke`` ends a device's
membership after a chosen sequence number; ``site allocate`` splits the site's
budget between the enrolled devices for a run of periods. Each refuses to
overwrite a key and changes nothing when it refuses (see
:mod:`p2pgrid.config.keys` for the files).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from p2pgrid.billing import split_budget
from p2pgrid.config.files import SiteFile
from p2pgrid.config.keys import (
    append_owner_entries,
    make_key_dir,
    read_entries,
    read_key,
    write_new_key,
)
from p2pgrid.errors import ConfigError
from p2pgrid.identity import Role, Signer, SiteIdentity, is_pubkey
from p2pgrid.ledger import Allocation, Body, DeviceInfo, Enrol, Revoke
from p2pgrid.provision import membership_of

OWNER_KEY = "owner.key"
UTILITY_KEY = "utility.key"
INVOICE_SECRET = "invoice.secret"


@dataclasses.dataclass(frozen=True)
class SiteCreated:
    site: str  # the owner's public key (hex): the site's identity to share
    site_id: str
    owner_key: str
    entries: str


def init_site(key_dir: Path, entries: Path, utility_key: str) -> SiteCreated:
    """Make the owner's key in ``key_dir`` and the entries file enrolling the utility."""
    try:
        utility = bytes.fromhex(utility_key)
    except ValueError:
        utility = b""
    if not is_pubkey(utility):
        raise ConfigError(f"--utility-key: not a public key: {utility_key[:70]!r}")
    key_path = key_dir / OWNER_KEY
    if entries.exists():
        raise ConfigError(f"{entries} exists: refusing to overwrite the owner's entries")
    owner = write_new_key(key_path)
    append_owner_entries(
        entries, owner, [(0, Enrol(Role.UTILITY, 0, utility, "utility", 0))], create=True
    )
    identity = SiteIdentity(owner.pubkey)
    return SiteCreated(owner.pubkey.hex(), identity.site_id, str(key_path), str(entries))


def init_utility(key_dir: Path) -> dict[str, str]:
    """Make the utility's key and invoice secret in ``key_dir`` (refusing to overwrite)."""
    for name in (UTILITY_KEY, INVOICE_SECRET):
        if (key_dir / name).exists():
            raise ConfigError(f"{key_dir / name} exists: refusing to overwrite a key")
    make_key_dir(key_dir)
    key = write_new_key(key_dir / UTILITY_KEY)
    write_new_key(key_dir / INVOICE_SECRET)
    return {
        "key": key.pubkey.hex(),
        "key_file": str(key_dir / UTILITY_KEY),
        "invoice_secret_file": str(key_dir / INVOICE_SECRET),
    }


def _owner(site_file: SiteFile) -> tuple[Signer, Path]:
    site = site_file.model.site
    if not site.owner_key:
        raise ConfigError(f"{site_file.path.name}: site.owner_key: missing (the owner's key file)")
    owner = read_key(site_file.resolve(site.owner_key))
    if owner.pubkey.hex() != site.owner_pubkey:
        raise ConfigError(
            f"{site_file.path.name}: site.owner_key: {site.owner_key} is not the key of "
            f"site.owner_pubkey"
        )
    return owner, site_file.resolve(site.entries)


def add_device(site_file: SiteFile, name: str, key_out: Path | None) -> dict[str, object]:
    """Make device ``name``'s key and enrol it; the key goes to ``key_out`` (default:
    the row's ``key_file``), to be copied to the device's host."""
    owner, entries_path = _owner(site_file)
    row = site_file.device(name)
    identity = SiteIdentity(owner.pubkey)
    roster = membership_of(identity, read_entries(entries_path, identity)).roster
    if roster.member(Role.DEVICE, row.index) is not None:
        raise ConfigError(
            f"device index {row.index} is already enrolled in {entries_path} (an index is "
            f"enrolled once: give a replacement device a new index)"
        )
    path = key_out or site_file.resolve(row.key_file)
    device = write_new_key(path)
    bodies: list[tuple[int, Body]] = [
        (0, Enrol(Role.DEVICE, row.index, device.pubkey, row.device_class, 0)),
        (0, DeviceInfo(row.index, row.device_class, row.name)),
    ]
    append_owner_entries(entries_path, owner, bodies)
    return {
        "device": name,
        "index": row.index,
        "pubkey": device.pubkey.hex(),
        "key_file": str(path),
        "entries": str(entries_path),
    }


def revoke_device(site_file: SiteFile, name: str, last_seq: int, reason: str) -> dict[str, object]:
    """Revoke device ``name``: its entries after ``last_seq`` are refused everywhere."""
    owner, entries_path = _owner(site_file)
    row = site_file.device(name)
    identity = SiteIdentity(owner.pubkey)
    member = membership_of(identity, read_entries(entries_path, identity)).roster.member(
        Role.DEVICE, row.index
    )
    if member is None:
        raise ConfigError(f"device {name!r} (index {row.index}) is not enrolled in {entries_path}")
    if member.revoked:
        raise ConfigError(f"device {name!r} (index {row.index}) is already revoked")
    if last_seq < 0:
        raise ConfigError(f"--last-seq: must be >= 0, got {last_seq}")
    append_owner_entries(
        entries_path, owner, [(0, Revoke(Role.DEVICE, row.index, last_seq, reason))]
    )
    return {"device": name, "index": row.index, "last_seq": last_seq, "entries": str(entries_path)}


def allocate(site_file: SiteFile, first: int, count: int) -> dict[str, object]:
    """Split ``site.budget_msat`` by weight between the enrolled, unrevoked devices of
    the file, for periods ``first .. first+count-1``; a period allocated before is refused
    (allocations add up: twice would double the budget)."""
    owner, entries_path = _owner(site_file)
    identity = SiteIdentity(owner.pubkey)
    entries = read_entries(entries_path, identity)
    roster = membership_of(identity, entries).roster
    if first < 0 or count < 1:
        raise ConfigError(f"--first must be >= 0 and --count >= 1, got {first} and {count}")
    done = sorted({e.period for e in entries if isinstance(e.body, Allocation)})
    periods = range(first, first + count)
    again = [p for p in periods if p in done]
    if again:
        raise ConfigError(f"period(s) {again} already allocated in {entries_path}")
    members = roster.devices()
    weights = {
        d.index: d.weight
        for d in site_file.model.devices
        if d.index in members and not members[d.index].revoked
    }
    if not weights:
        raise ConfigError(f"no enrolled device in {entries_path}: run `p2pgrid device add` first")
    split = split_budget(site_file.model.site.budget_msat, weights)
    bodies: list[tuple[int, Body]] = [
        (period, Allocation(device, amount))
        for period in periods
        for device, amount in split.items()
        if amount > 0
    ]
    append_owner_entries(entries_path, owner, bodies)
    return {"periods": list(periods), "allocations": {str(k): v for k, v in split.items()}}
