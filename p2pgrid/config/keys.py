"""Key files and the site owner's signed entries, on disk.

A **key file** holds one secp256k1 secret as 64 hex characters and a newline.
It is written with mode ``0600`` in a directory of mode ``0700``
(:func:`p2pgrid.secretfile.write_secret`), never over an existing file, and read
only if no user but the owner (and its group) may read it
(:func:`p2pgrid.secretfile.read_secret`).

The **entries file** (``site.toml``'s ``site.entries``) holds the owner's signed
log entries (enrolments, device descriptions, allocations, revocations), one
per line in hex, in the order of the owner's chain (seq 1, 2, ...). It is public
(every entry is signed; nothing in it is secret): the owner's commands append
to it (the whole file rewritten, and synced to disk before the command ends),
every agent and the utility of the site load it when they start and again
whenever it changes while they run (:mod:`p2pgrid.replication.entries_watch`),
and the replicated log carries it on to replicas that lack it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from p2pgrid.errors import ConfigError
from p2pgrid.identity import IdentityError, Signer, SiteIdentity
from p2pgrid.ledger import Author, Body, Entry, EntryKind, read_owner_file, sign_entry
from p2pgrid.ledger.entry import GENESIS_PREV
from p2pgrid.secretfile import read_secret, write_secret

KEY_DIR_MODE = 0o700
#: Owner entries whose meaning has no period (signed in the chain's highest period).
PERIODLESS_KINDS = frozenset({EntryKind.ENROL, EntryKind.REVOKE, EntryKind.DEVICE_INFO})


def make_key_dir(path: Path) -> None:
    """Create ``path`` (and parents) owner-only, or tighten it to 0700 if it exists."""
    path.mkdir(mode=KEY_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, KEY_DIR_MODE)


def write_new_key(path: Path) -> Signer:
    """Generate a key into ``path`` (0600, its directory 0700); refuse an existing file."""
    if path.exists():
        raise ConfigError(f"{path} exists: refusing to overwrite a key (move it away first)")
    make_key_dir(path.parent)
    signer = Signer.generate()
    write_secret(path, signer.secret.hex().encode() + b"\n")
    return signer


def read_key(path: Path) -> Signer:
    """The key in ``path``; :class:`ConfigError` naming the file if it is unsafe or not a key."""
    text = read_secret(path)
    try:
        return Signer.from_secret(bytes.fromhex(text.decode("ascii").strip()))
    except (ValueError, UnicodeDecodeError, IdentityError) as exc:
        raise ConfigError(f"{path}: not a key file (64 hex characters): {exc}") from None


def read_entries(path: Path, site: SiteIdentity) -> list[Entry]:
    """The owner's entries in ``path``: the owner's whole signed chain, or a
    :class:`ConfigError` naming the file and line (:mod:`p2pgrid.ledger.owner_file`)."""
    return read_owner_file(path, site)


def append_owner_entries(
    path: Path, owner: Signer, bodies: Sequence[tuple[int, Body]], *, create: bool = False
) -> list[Entry]:
    """Sign ``(period, body)`` pairs as the owner, continuing its chain in ``path``,
    and rewrite the file whole (a temp file, then rename), synced to disk
    before this returns. ``create``: the file must not exist yet; otherwise it
    must.

    The log refuses an owner entry of a period before the chain's highest one
    (``time_regression``, docs/protocol-log.md section 4), so an enrolment,
    revocation or device description, whose meaning has no period, is signed
    in that highest period (a revocation after a year of allocations is still
    taken); an allocation of an earlier period is a :class:`ConfigError` and
    nothing is written."""
    site = SiteIdentity(owner.pubkey)
    if create and path.exists():
        raise ConfigError(f"{path} exists: refusing to overwrite the owner's entries")
    existing = [] if create else read_entries(path, site)
    entries = list(existing)
    now_ms = int(time.time() * 1000)
    floor = max((e.period for e in entries), default=0)
    for period, body in bodies:
        if period < floor:
            if body.KIND not in PERIODLESS_KINDS:
                raise ConfigError(
                    f"{path}: {body.KIND.name.lower()} of period {period} cannot follow the "
                    f"owner's entries of period {floor}: every replica would refuse it"
                )
            period = floor
        floor = period
        last = entries[-1] if entries else None
        entries.append(
            sign_entry(
                owner,
                site.site_hash,
                author=Author.owner(),
                seq=len(entries) + 1,
                prev=last.id if last else GENESIS_PREV,
                period=period,
                timestamp_ms=max(now_ms, last.timestamp_ms + 1 if last else 0),
                body=body,
            )
        )
    _write_synced(path, "".join(e.raw.hex() + "\n" for e in entries))
    return entries[len(existing) :]


def _write_synced(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` whole (a temp file, then rename), on disk
    when this returns: the temp file is synced before the rename and the
    directory after it. The owner's entries may be published as soon as a node
    reads the file; a power cut must not take the file back to an older chain,
    or the owner's next command would sign another entry at a sequence number
    that peers hold (an equivocation of the owner)."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="ascii") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
