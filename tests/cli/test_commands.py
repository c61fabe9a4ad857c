"""Every ``p2pgrid`` command: help, what it writes, bad flags, bad files.

A failure is one line ``error: ...`` naming the file and the key (or the flag),
an exit code of ``p2pgrid.service`` (2: bad configuration), never a traceback,
and nothing changed on disk.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from p2pgrid.config import read_entries
from p2pgrid.config.files import UtilityFile
from p2pgrid.config.setups import utility_setup
from p2pgrid.identity import Role, SiteIdentity
from p2pgrid.ledger import Allocation, LogStore, Outcome
from p2pgrid.provision import membership_of
from p2pgrid.service import EXIT_CONFIG, EXIT_UNAVAILABLE
from p2pgrid.testing.ports import free_port
from tests.cli.deployment import DEVICES, cli, deploy, lnd_table, ok_json, self_signed_cert

COMMANDS = [
    [],
    ["site"],
    ["site", "init"],
    ["site", "allocate"],
    ["device"],
    ["device", "add"],
    ["device", "revoke"],
    ["agent", "run"],
    ["utility", "init"],
    ["utility", "run"],
    ["log", "verify"],
    ["report"],
    ["demo"],
    ["regtest"],
    ["regtest", "up"],
    ["regtest", "down"],
    ["regtest", "status"],
    ["regtest", "mine"],
    ["regtest", "build"],
]


def _no_traceback(result: object) -> None:
    out = getattr(result, "output", "") + getattr(result, "stderr", "")
    assert "Traceback" not in out, out
    assert getattr(result, "exception", None) is None or isinstance(
        getattr(result, "exception", None), SystemExit
    ), out


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "p2pgrid")
def test_every_command_has_help(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: p2pgrid" in result.stdout
    if command:
        assert command[-1] in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["site", "init", "--bogus"],
        ["device", "add"],  # no --config, no name
        ["agent", "run", "--config"],
        ["regtest", "mine", "0"],
        ["site", "allocate", "--config", "x.toml", "--count", "many"],
        ["no-such-command"],
    ],
    ids=["unknown flag", "missing", "no value", "out of range", "not a number", "no command"],
)
def test_a_bad_flag_is_exit_2_with_a_usage_line(args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == EXIT_CONFIG, result.output
    _no_traceback(result)
    assert "Error: " in result.stderr  # click's one line naming the flag


def test_an_operator_makes_a_site_its_utility_and_devices(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    for key_dir, files in (("owner", ["owner.key"]), ("ukeys", ["utility.key", "invoice.secret"])):
        assert stat.S_IMODE((tmp_path / key_dir).stat().st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE((tmp_path / key_dir / name).stat().st_mode) == 0o600
    for name, _, _ in DEVICES:
        assert stat.S_IMODE((tmp_path / "keys" / f"{name}.key").stat().st_mode) == 0o600
    identity = SiteIdentity.from_hex(d.site)
    entries = read_entries(d.entries, identity)
    roster = membership_of(identity, entries).roster
    utility = roster.member(Role.UTILITY, 0)
    assert utility is not None
    assert utility.pubkey.hex() == d.utility_key
    assert sorted(roster.devices()) == [0, 1]
    allocations = [e.body for e in entries if isinstance(e.body, Allocation)]
    assert sum(a.amount_msat for a in allocations) == 3_000_000  # exact, the whole budget
    # A revocation: the device's entries after seq 4 are refused from now on.
    result = ok_json("device", "revoke", "-c", str(d.site_file), "s1-hvac", "--last-seq", "4")
    assert result == {"device": "s1-hvac", "index": 1, "last_seq": 4, "entries": str(d.entries)}
    hvac = membership_of(identity, read_entries(d.entries, identity)).roster.member(Role.DEVICE, 1)
    assert hvac is not None
    assert hvac.revoked
    assert hvac.last_seq == 4


async def test_every_replica_takes_the_owner_commands_entries_whole(tmp_path: Path) -> None:
    """A revocation and a device's description signed after allocations of later
    periods: the log refuses an owner entry of an earlier period than the one
    before, so the commands sign them in the chain's latest period."""
    d = deploy(tmp_path, periods=3)  # allocations of periods 0..2
    ok_json("site", "allocate", "-c", str(d.site_file), "--first", "5", "--count", "1")
    ok_json("device", "revoke", "-c", str(d.site_file), "s1-hvac", "--last-seq", "4")
    identity = SiteIdentity.from_hex(d.site)
    entries = read_entries(d.entries, identity)
    async with await LogStore.open(tmp_path / "replica.db", identity, name="replica") as store:
        report = await store.ingest_many([e.raw for e in entries])
    assert [r.outcome for r in report.results] == [Outcome.STORED] * len(entries)
    hvac = store.roster.member(Role.DEVICE, 1)
    assert hvac is not None
    assert hvac.last_seq == 4
    # An allocation of a period before the latest one would be refused everywhere.
    before = d.entries.read_bytes()
    result = cli("site", "allocate", "-c", str(d.site_file), "--first", "3", "--count", "1")
    assert result.exit_code == EXIT_CONFIG, result.output
    assert "allocation of period 3 cannot follow the owner's entries of period 5" in result.stderr
    assert d.entries.read_bytes() == before


@pytest.mark.parametrize(
    "args",
    [
        ["device", "add", "s1-fridge"],  # enrolled already
        ["site", "allocate", "--count", "1"],  # period 0 allocated already
        ["device", "revoke", "nope", "--last-seq", "1"],  # no such device
    ],
    ids=["enrolled twice", "allocated twice", "no such device"],
)
def test_the_owner_commands_refuse_and_change_nothing(tmp_path: Path, args: list[str]) -> None:
    d = deploy(tmp_path)
    before = d.entries.read_bytes()
    keys = sorted(p.name for p in (tmp_path / "keys").iterdir())
    result = cli(*args[:2], "--config", str(d.site_file), *args[2:])
    assert result.exit_code == EXIT_CONFIG, result.output
    _no_traceback(result)
    _error_line(result.stderr)
    assert d.entries.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == keys


def test_init_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    first = ok_json("utility", "init", "--key-dir", str(tmp_path / "u"))
    key = (tmp_path / "u" / "utility.key").read_bytes()
    result = cli("utility", "init", "--key-dir", str(tmp_path / "u"))
    assert result.exit_code == EXIT_CONFIG
    assert "refusing to overwrite" in _error_line(result.stderr)
    assert (tmp_path / "u" / "utility.key").read_bytes() == key
    owner = cli(
        "site", "init", "--key-dir", str(tmp_path / "o"), "--utility-key", "02ab",
        "--entries", str(tmp_path / "e"),
    )  # fmt: skip
    assert owner.exit_code == EXIT_CONFIG
    assert "--utility-key: not a public key" in _error_line(owner.stderr)
    assert not (tmp_path / "o").exists()
    assert not (tmp_path / "e").exists()
    ok_json("site", "init", "--key-dir", str(tmp_path / "o"), "--utility-key", first["key"],
            "--entries", str(tmp_path / "e"))  # fmt: skip
    again = cli("site", "init", "--key-dir", str(tmp_path / "o"), "--utility-key", first["key"],
                "--entries", str(tmp_path / "e2"))  # fmt: skip
    assert again.exit_code == EXIT_CONFIG
    assert "owner.key exists: refusing to overwrite" in _error_line(again.stderr)


BAD_SITE_FILES = [
    ("missing", None, "site.toml: no such file"),
    ("not toml", "[site\n", "site.toml: not TOML"),
    (
        "wrong type",
        ("annual_kwh = 4000", 'annual_kwh = "lots"'),
        'site.toml: devices[0] ("s1-fridge").meter.annual_kwh: Input should be a valid integer',
    ),
    (
        "out of range",
        ("annual_kwh = 4000", "annual_kwh = -1"),
        'site.toml: devices[0] ("s1-fridge").meter.annual_kwh: Input should be greater than'
        " or equal to 0",
    ),
    (
        "unknown key",
        ('device_class = "fridge"', 'device_class = "fridge"\ncolour = "red"'),
        'site.toml: devices[0] ("s1-fridge").colour: unknown key (misspelt?)',
    ),
    (
        "missing key",
        ('data_dir = "data/s1-fridge"\n', ""),
        'site.toml: devices[0] ("s1-fridge").data_dir: missing',
    ),
    (
        "bad pubkey",
        ('lnd_pubkey = "', 'lnd_pubkey = "04'),
        "site.toml: utility.lnd_pubkey: not a public key",
    ),
    (
        "unspecified listen host",
        ('data_dir = "data/s1-fridge"', 'data_dir = "data/s1-fridge"\nlisten_host = "0.0.0.0"'),
        'site.toml: devices[0] ("s1-fridge").listen_host: 0.0.0.0 cannot be dialled',
    ),
    (
        "agent tuning",
        ("[tariff]", "[agent]\nanti_entropy_s = -1\n\n[tariff]"),
        "site.toml: agent.anti_entropy_s: Input should be greater than 0",
    ),
    (
        "naive start",
        ("start = 2027-01-01T00:00:00Z", "start = 2027-01-01T00:00:00"),
        "site.toml: clock: start needs a UTC offset",
    ),
    (
        "unknown time zone",
        ("start = 2027-01-01T00:00:00Z", 'start = 2027-01-01T00:00:00Z\ntimezone = "Mars/Olympus"'),
        "site.toml: clock: unknown time zone 'Mars/Olympus'",
    ),
    (
        "bad bootstrap",
        ('data_dir = "data/s1-fridge"', 'data_dir = "data/s1-fridge"\nbootstrap = ["nowhere"]'),
        'site.toml: devices[0] ("s1-fridge").bootstrap[0]: String should match pattern',
    ),
]


@pytest.mark.parametrize(
    ("change", "says"),
    [(c, s) for _, c, s in BAD_SITE_FILES],
    ids=[i for i, _, _ in BAD_SITE_FILES],
)
@pytest.mark.parametrize(
    "command",
    [
        ["agent", "run", "--device", "s1-fridge"],
        ["device", "add", "s1-fridge"],
        ["site", "allocate"],
    ],
    ids=["agent run", "device add", "site allocate"],
)
def test_a_bad_site_file_names_the_file_and_key(
    tmp_path: Path, command: list[str], change: tuple[str, str] | str | None, says: str
) -> None:
    d = deploy(tmp_path)
    before = d.entries.read_bytes()
    text = d.site_file.read_text()
    if change is None:
        d.site_file.unlink()
    elif isinstance(change, str):
        d.site_file.write_text(change)
    else:
        assert change[0] in text
        d.site_file.write_text(text.replace(change[0], change[1], 1))
    result = cli(*command[:2], "--config", str(d.site_file), *command[2:])
    assert result.exit_code == EXIT_CONFIG, result.output + result.stderr
    _no_traceback(result)
    line = _error_line(result.stderr)
    assert says in line or says in result.stderr, result.stderr
    assert d.entries.read_bytes() == before


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    key = tmp_path / "keys" / "s1-fridge.key"
    key.chmod(0o644)
    result = cli("agent", "run", "--config", str(d.site_file), "--device", "s1-fridge")
    assert result.exit_code == EXIT_CONFIG
    line = _error_line(result.stderr)
    assert str(key) in line
    assert "chmod o-rwx" in line


def test_a_key_not_enrolled_is_refused(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    other = tmp_path / "keys" / "s1-hvac.key"
    (tmp_path / "keys" / "s1-fridge.key").write_bytes(other.read_bytes())
    result = cli("agent", "run", "--config", str(d.site_file), "--device", "s1-fridge")
    assert result.exit_code == EXIT_CONFIG
    line = _error_line(result.stderr)
    assert "devices[0].key_file" in line
    assert "not enrolled as device 0" in line


def test_a_gateway_whose_port_is_on_a_higher_index_row_is_refused_in_any_order(
    tmp_path: Path,
) -> None:
    """The host of a gateway speaks as its lowest index (the fridge, 0) and listens
    on its row's port; the file names the port on the hvac's row (as for a gateway
    once run as ``--device s1-hvac --device s1-fridge``): exit 2 in either order,
    the line says which row wants the port, nothing opened."""
    d = deploy(tmp_path)
    text = d.site_file.read_text()
    row = 'data_dir = "data/s1-hvac"'
    d.site_file.write_text(text.replace(row, row + "\nlisten_port = 4002", 1))
    for first, second in (("s1-hvac", "s1-fridge"), ("s1-fridge", "s1-hvac")):
        result = cli("agent", "run", "--config", str(d.site_file),
                     "--device", first, "--device", second)  # fmt: skip
        assert result.exit_code == EXIT_CONFIG, result.output + result.stderr
        _no_traceback(result)
        assert _error_line(result.stderr) == (
            "error: store-1: the gateway's host of s1-fridge, s1-hvac speaks as s1-fridge "
            "(the lowest device index, 0) and listens on its row's listen_port, which names "
            "none, while s1-hvac's row names 4002: give that listen_port on s1-fridge's row "
            "(and s1-fridge's peer id in the peers' bootstrap addresses)"
        )
    assert not (tmp_path / "data").exists()


def test_the_utility_refuses_a_site_that_did_not_enrol_it(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    ok_json("utility", "init", "--key-dir", str(tmp_path / "other"))
    text = d.utility_file.read_text().replace('"ukeys/utility.key"', '"other/utility.key"')
    d.utility_file.write_text(text)
    result = cli("utility", "run", "--config", str(d.utility_file))
    assert result.exit_code == EXIT_CONFIG
    assert "utility.toml: sites[0].entries" in _error_line(result.stderr)


@pytest.mark.parametrize("process", ["agent", "utility"])
def test_await_start_without_control_is_refused(tmp_path: Path, process: str) -> None:
    d = deploy(tmp_path)
    command = (
        ["agent", "run", "--config", str(d.site_file), "--device", "s1-fridge"]
        if process == "agent"
        else ["utility", "run", "--config", str(d.utility_file)]
    )
    result = cli(*command, "--await-start")
    assert result.exit_code == EXIT_CONFIG, result.output + result.stderr
    _no_traceback(result)
    assert "--await-start reads interval 0 on stdin: it needs --control" in _error_line(
        result.stderr
    )


def test_a_bad_utility_file_names_the_key(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    d.utility_file.write_text(d.utility_file.read_text().replace("budget_msat = 3000000", ""))
    result = cli("utility", "run", "--config", str(d.utility_file))
    assert result.exit_code == EXIT_CONFIG
    assert 'utility.toml: sites[0] ("store-1").budget_msat: missing' in _error_line(result.stderr)


def test_the_utility_file_sets_the_readings_wait(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    text = d.utility_file.read_text()
    assert "[utility]\n" in text
    d.utility_file.write_text(text.replace("[utility]\n", "[utility]\nreadings_wait_s = 7.5\n", 1))
    assert utility_setup(UtilityFile(d.utility_file)).readings_wait_s == 7.5
    d.utility_file.write_text(text.replace("[utility]\n", "[utility]\nreadings_wait_s = 0\n", 1))
    result = cli("utility", "run", "--config", str(d.utility_file))
    assert result.exit_code == EXIT_CONFIG
    assert "utility.toml: utility.readings_wait_s: Input should be greater than 0" in (
        _error_line(result.stderr)
    )


def _lnd_files(root: Path, name: str) -> None:
    (root / name).mkdir()
    self_signed_cert(root / name / "tls.cert")
    macaroon = root / name / "admin.macaroon"
    macaroon.write_bytes(b"\x02macaroon")
    macaroon.chmod(0o600)


@pytest.mark.parametrize("node", ["agent", "utility"])
@pytest.mark.parametrize(
    ("files", "code", "says"),
    [(False, EXIT_CONFIG, "cannot load TLS cert or macaroon"), (True, EXIT_UNAVAILABLE, "")],
    ids=["no-lnd-files", "lnd-down"],
)
def test_a_node_without_its_lnd_exits_in_one_line(
    tmp_path: Path, node: str, files: bool, code: int, says: str
) -> None:
    """As a real process (its own signal handlers and exit code): lnd's files
    missing is a bad configuration (2), lnd down is unavailable (3), once the
    agent has waited ``[agent] lnd_away_wait_s`` for it (here 1 s), the utility
    ``[utility] lnd_away_wait_s`` (here 0.3 s), each with a WARNING while waiting."""
    port = free_port()
    d = deploy(
        tmp_path,
        lnd={"s1-fridge": lnd_table(tmp_path, "s1-fridge", port)},
        utility_lnd_table=lnd_table(tmp_path, "utility", port),
        site_edit=lambda text: text + "\n[agent]\nlnd_away_wait_s = 1.0\n",
    )
    text = d.utility_file.read_text()
    named = 'name = "utility"\n'
    d.utility_file.write_text(text.replace(named, f"{named}lnd_away_wait_s = 0.3\n", 1))
    if files:
        _lnd_files(tmp_path, "s1-fridge" if node == "agent" else "utility")
    args = (
        ["agent", "run", "--config", str(d.site_file), "--device", "s1-fridge"]
        if node == "agent"
        else ["utility", "run", "--config", str(d.utility_file)]
    )
    run = subprocess.run(
        [sys.executable, "-m", "p2pgrid", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr
    line = _error_line(run.stderr)
    assert "s1-fridge" in line if node == "agent" else "utility" in line
    assert says in line
    if files:  # the configured wait, not the default (agent 60 s, utility 300 s)
        assert f"node away for {1.0 if node == 'agent' else 0.3}s" in line
        assert "Lightning node away" in run.stderr  # the line while it waits
    assert not (tmp_path / "data" / "s1-fridge" / "s1-fridge.db").exists()  # nothing written


def test_report_names_an_unknown_site(tmp_path: Path) -> None:
    result = cli("report", "--site", "nope", "--work-dir", str(tmp_path))
    assert result.exit_code == EXIT_CONFIG
    _no_traceback(result)
    assert "no site 'nope'" in _error_line(result.stderr)


def test_no_secret_is_inside_the_files(tmp_path: Path) -> None:
    """Secrets are named by path: no key material ends up in the files."""
    d = deploy(tmp_path)
    texts = d.site_file.read_text() + d.utility_file.read_text() + d.entries.read_text()
    keys = [*(tmp_path / "keys").iterdir(), *(tmp_path / "owner").iterdir()]
    keys += (tmp_path / "ukeys").iterdir()
    assert len(keys) == 5
    for key in keys:
        assert key.read_text().strip() not in texts


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ([], "--device NAME (repeatable) or --all"),
        (["--all", "--device", "s1-fridge"], "--device NAME (repeatable) or --all"),
        (["--device", "s1-fridge", "--device", "s1-fridge"], "s1-fridge given twice"),
        (["--device", "s1-fridge", "--device", "nope"], "no device 'nope'"),
    ],
    ids=["no device", "both", "twice", "unknown"],
)
def test_a_gateway_names_its_devices_once(tmp_path: Path, flags: list[str], says: str) -> None:
    d = deploy(tmp_path)
    result = cli("agent", "run", "--config", str(d.site_file), *flags)
    assert result.exit_code == EXIT_CONFIG, result.output
    _no_traceback(result)
    assert says in _error_line(result.stderr)


def test_a_gateway_of_all_devices_checks_every_key(tmp_path: Path) -> None:
    d = deploy(tmp_path)
    other = tmp_path / "keys" / "s1-fridge.key"
    (tmp_path / "keys" / "s1-hvac.key").write_bytes(other.read_bytes())
    result = cli("agent", "run", "--config", str(d.site_file), "--all")
    assert result.exit_code == EXIT_CONFIG
    line = _error_line(result.stderr)
    assert "devices[1].key_file" in line
    assert "not enrolled as device 1" in line
