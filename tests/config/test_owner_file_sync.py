"""The owner's entries file is on disk when the owner's command returns: the
new file is synced before it replaces the old one, and its directory after
(a power cut must not take the owner's chain back to an older one: its next
command would sign another entry at a sequence number peers may hold)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pgrid.config import append_owner_entries
from p2pgrid.identity import Signer
from p2pgrid.ledger import Enrol, Role


def test_the_entries_file_is_synced_before_and_after_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "site" / "entries.hex"
    owner = Signer.generate()
    synced: list[tuple[str, str]] = []  # (the synced fd's file, what ``path`` holds then)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        what = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((what, path.read_text("ascii") if path.exists() else ""))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    tmp, folder = str(path.with_name(f".{path.name}.tmp")), str(path.parent)
    chain = ""
    for index in range(2):
        enrol = Enrol(Role.DEVICE, index, Signer.generate().pubkey, "fridge", 0)
        [entry] = append_owner_entries(path, owner, [(0, enrol)], create=index == 0)
        before = chain
        chain += entry.raw.hex() + "\n"
        # The temp file, synced while the target still holds the old chain;
        # then the directory, once the target holds the new one.
        assert synced == [(tmp, before), (folder, chain)]
        synced.clear()
