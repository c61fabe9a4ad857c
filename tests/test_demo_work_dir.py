"""The demo's work directory: a previous demo's is emptied, anything else is left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pgrid.demo import DEMO_MARKER, prepare_work_dir
from p2pgrid.errors import ConfigError


def test_a_previous_demo_s_work_dir_is_emptied(tmp_path: Path) -> None:
    work = tmp_path / "demo-run"
    prepare_work_dir(work)
    (work / "utility.toml").write_text("old")
    (work / "keys").mkdir()
    prepare_work_dir(work)
    assert sorted(p.name for p in work.iterdir()) == [DEMO_MARKER]


def test_a_directory_no_demo_wrote_is_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a demo's work directory"):
        prepare_work_dir(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
