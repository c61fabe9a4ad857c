"""A stack's teardown removes its directory even when entries vanish meanwhile."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from p2pgrid.regtest.stack import remove_tree


def test_an_entry_that_vanishes_during_the_walk_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "stack"
    (tree / "lnd").mkdir(parents=True)
    backup = tree / "lnd" / "channel.backup-2026-12-01"
    backup.write_text("x")
    real_unlink = os.unlink

    def unlink_after_someone_else(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).endswith(backup.name):  # a daemon removed it first
            real_unlink(path, *args, **kwargs)
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink_after_someone_else)
    with pytest.raises(FileNotFoundError):  # what the teardown hit
        shutil.rmtree(tree)
    (tree / "lnd").mkdir(parents=True, exist_ok=True)
    backup.write_text("x")
    remove_tree(tree)
    assert not tree.exists()


def test_other_errors_still_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "stack"
    tree.mkdir()
    (tree / "f").write_text("x")

    def refused(path: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "refused", str(path))

    monkeypatch.setattr(os, "unlink", refused)
    with pytest.raises(PermissionError):
        remove_tree(tree)
