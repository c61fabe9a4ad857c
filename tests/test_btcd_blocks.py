"""Reading btcd's flat block files (what a restarted btcd is given back)."""

from __future__ import annotations

import struct
from pathlib import Path

from p2pgrid.regtest.btcd import REGTEST_MAGIC, BtcdConfig, stored_blocks


def _record(block: bytes, magic: int = REGTEST_MAGIC) -> bytes:
    return struct.pack("<II", magic, len(block)) + block + b"\0\0\0\0"  # crc not read


def _config(tmp_path: Path, *files: bytes) -> BtcdConfig:
    folder = tmp_path / "data" / "regtest" / "blocks_ffldb"
    folder.mkdir(parents=True)
    for i, data in enumerate(files):
        (folder / f"{i:09d}.fdb").write_bytes(data)
    return BtcdConfig(tmp_path, rpc_port=0, p2p_port=0, mining_address="")


def test_blocks_come_back_in_file_and_record_order(tmp_path: Path) -> None:
    blocks = [bytes([i]) * (80 + i) for i in range(5)]
    config = _config(
        tmp_path,
        b"".join(_record(b) for b in blocks[:3]),
        b"".join(_record(b) for b in blocks[3:]),
    )
    assert stored_blocks(config) == blocks


def test_a_record_torn_by_a_kill_ends_the_list(tmp_path: Path) -> None:
    blocks = [b"a" * 90, b"b" * 90]
    torn = _record(b"c" * 90)[:50]
    config = _config(tmp_path, b"".join(_record(b) for b in blocks) + torn)
    assert stored_blocks(config) == blocks


def test_another_network_s_record_is_not_read_as_a_block(tmp_path: Path) -> None:
    config = _config(tmp_path, _record(b"a" * 90) + _record(b"b" * 90, magic=0xD9B4BEF9))
    assert stored_blocks(config) == [b"a" * 90]


def test_no_files_no_blocks(tmp_path: Path) -> None:
    assert stored_blocks(BtcdConfig(tmp_path, rpc_port=0, p2p_port=0, mining_address="")) == []
