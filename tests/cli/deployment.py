"""A site and a utility made through ``p2pgrid`` itself, as an operator would.

:func:`deploy` runs ``utility init``, ``site init``, writes a site file and a
utility file (data: :data:`DEVICES`), then ``device add`` for each device and
``site allocate``. Tests then break one thing and look at what the command says.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner, Result

from p2pgrid.cli import app

#: The devices of the test site: (name, index, meter inline table).
DEVICES = (
    ("s1-fridge", 0, '{ kind = "bdew", profile = "g0", annual_kwh = 4000 }'),
    ("s1-hvac", 1, '{ kind = "bdew", profile = "g0", annual_kwh = 9000 }'),
)


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def ok_json(*args: str) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@dataclasses.dataclass(frozen=True)
class Deployment:
    root: Path
    site_file: Path
    utility_file: Path
    entries: Path
    site: str  # the owner's public key
    utility_key: str


def self_signed_cert(path: Path) -> None:
    """A TLS certificate lnd could have made (for a node whose lnd is down)."""
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


def lnd_table(root: Path, name: str, port: int) -> str:
    return (
        f'{{ rest_host = "127.0.0.1", rest_port = {port}, tls_cert = "{root}/{name}/tls.cert",'
        f' macaroon = "{root}/{name}/admin.macaroon" }}'
    )


def clock_and_tariff(
    start: datetime.datetime, interval_s: float, intervals_per_period: int, periods: int
) -> str:
    """The [clock] and [tariff] tables, the same in the site and the utility file."""
    return f"""[clock]
start = {start.isoformat().replace("+00:00", "Z")}
interval_s = {interval_s}
intervals_per_period = {intervals_per_period}
periods = {periods}

[tariff]
msat_per_kwh = 250000
"""


def site_toml(
    root: Path,
    site: str,
    utility_key: str,
    *,
    start: datetime.datetime,
    interval_s: float = 900.0,
    intervals_per_period: int = 2880,
    periods: int = 1,
    lnd: dict[str, str] | None = None,
    utility_lnd: str | None = None,
    devices: tuple[tuple[str, int, str], ...] = DEVICES,
) -> str:
    rows = []
    for name, index, meter in devices:
        rows.append(
            f"""
[[devices]]
name = "{name}"
index = {index}
device_class = "fridge"
priority = "critical"
meter = {meter}
key_file = "keys/{name}.key"
data_dir = "data/{name}"
lnd = {(lnd or {}).get(name, lnd_table(root, name, 1))}
"""
        )
    return f"""
[site]
name = "store-1"
owner_pubkey = "{site}"
budget_msat = 3000000
entries = "store-1.entries"
owner_key = "owner/owner.key"

{clock_and_tariff(start, interval_s, intervals_per_period, periods)}
[utility]
key = "{utility_key}"
lnd_pubkey = "{utility_lnd or utility_key}"
{"".join(rows)}"""


def utility_toml(
    root: Path,
    site: str,
    *,
    start: datetime.datetime,
    interval_s: float = 900.0,
    intervals_per_period: int = 2880,
    periods: int = 1,
    lnd: str | None = None,
) -> str:
    return f"""
[utility]
name = "utility"
key_file = "ukeys/utility.key"
invoice_secret_file = "ukeys/invoice.secret"
data_dir = "data/utility"
lnd = {lnd or lnd_table(root, "utility", 1)}

{clock_and_tariff(start, interval_s, intervals_per_period, periods)}
[[sites]]
name = "store-1"
owner_pubkey = "{site}"
entries = "store-1.entries"
budget_msat = 3000000
"""


def deploy(root: Path, **clock: Any) -> Deployment:
    """Keys, files, enrolments and one period's allocation, made by the commands
    (``site_edit``: a change made to the site file's text before them)."""
    start = clock.pop("start", datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC))
    site_kw = {k: clock.pop(k) for k in ("lnd", "utility_lnd") if k in clock}
    utility_lnd_table = clock.pop("utility_lnd_table", None)
    devices = clock.pop("devices", DEVICES)
    edit = clock.pop("site_edit", lambda text: text)  # a change to the site file's text
    utility_key = ok_json("utility", "init", "--key-dir", str(root / "ukeys"))["key"]
    entries = root / "store-1.entries"
    created = ok_json(
        "site",
        "init",
        "--key-dir",
        str(root / "owner"),
        "--utility-key",
        utility_key,
        "--entries",
        str(entries),
    )
    site_file = root / "site.toml"
    site_file.write_text(
        edit(
            site_toml(
                root, created["site"], utility_key, start=start, devices=devices, **clock, **site_kw
            )
        )
    )
    utility_file = root / "utility.toml"
    utility_file.write_text(
        utility_toml(root, created["site"], start=start, lnd=utility_lnd_table, **clock)
    )
    for name, _, _ in devices:
        ok_json("device", "add", "--config", str(site_file), name)
    ok_json("site", "allocate", "--config", str(site_file), "--count", str(clock.get("periods", 1)))
    return Deployment(root, site_file, utility_file, entries, created["site"], utility_key)
