"""Secret files are owner-only and refused otherwise; the key-material scan finds a leak."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pgrid.errors import ConfigError
from p2pgrid.lightning import LndClient
from p2pgrid.lightning.lnd import LndEndpoint
from p2pgrid.scenario import load_scenario
from p2pgrid.secretfile import InsecureSecretFile, read_secret, write_secret
from tests.regtest.key_material import files_under, macaroon_secrets, scan, scenario_secrets

SCENARIO = Path(__file__).parents[1] / "p2pgrid" / "scenarios" / "two_sites.toml"


def test_a_secret_is_written_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "key"
        path.write_bytes(b"old")
        path.chmod(0o666)
        write_secret(path, b"s3cret")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_secret(path) == b"s3cret"


@pytest.mark.parametrize("mode", [0o604, 0o644, 0o606, 0o602, 0o666])
def test_a_secret_others_may_touch_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "admin.macaroon"
    path.write_bytes(b"\x02\x01")
    path.chmod(mode)
    with pytest.raises(InsecureSecretFile, match=f"{path}.*chmod o-rwx"):
        read_secret(path)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_owner_and_group_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "admin.macaroon"  # lnd writes its admin macaroon 0640
    path.write_bytes(b"\x02\x01")
    path.chmod(mode)
    assert read_secret(path) == b"\x02\x01"


def test_missing_or_odd_secret_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret(tmp_path / "nope")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_secret(tmp_path)


async def test_the_lnd_client_refuses_a_world_readable_macaroon(tmp_path: Path) -> None:
    macaroon = tmp_path / "admin.macaroon"
    macaroon.write_bytes(b"\x02\x01")
    macaroon.chmod(0o644)
    endpoint = LndEndpoint("dev-a", "127.0.0.1", 1, tmp_path / "tls.cert", macaroon)
    with pytest.raises(InsecureSecretFile):
        await LndClient(endpoint).open()


def test_the_scan_finds_planted_key_material(tmp_path: Path) -> None:
    """The end-to-end scan's positive control: a key or macaroon in a log is found."""
    scenario = load_scenario(SCENARIO)
    site = scenario.sites[0]
    macaroon = tmp_path / "lnd" / "admin.macaroon"
    macaroon.parent.mkdir()
    macaroon.write_bytes(b"\x02\x01\x03lnd\x02" + bytes(range(40)))
    needles = scenario_secrets(scenario) + macaroon_secrets([macaroon])
    logs = tmp_path / "run"
    logs.mkdir()
    (logs / "clean.log").write_text("INFO agent started; pubkey 02abcdef\n")
    assert scan(files_under(logs), needles) == []
    secret = site.device_signer(site.devices[1].index).secret.hex()
    (logs / "leak.log").write_text(f"DEBUG signer {secret}\n")
    (logs / "mac.log").write_text(f"header {macaroon.read_bytes().hex()}\n")
    found = scan(files_under(logs), needles)
    assert found == [
        f"{logs / 'leak.log'}: {site.devices[1].name} key (hex)",
        f"{logs / 'mac.log'}: macaroon lnd (hex)",
    ]
    assert files_under(tmp_path, logs_only=True) == sorted(logs.iterdir())
