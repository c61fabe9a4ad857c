"""Light devices in a site file: a row with ``lightning = "site"`` names no lnd,
pays and is paid through ``[site_lightning]``, and its peers pay it at the site
node's key; every inconsistent file is refused with the key that is wrong."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pgrid.cli import _lnd_node
from p2pgrid.config import SiteFile, agent_setup, agent_start
from p2pgrid.errors import ConfigError
from p2pgrid.identity import Signer
from p2pgrid.ledger import Author
from tests.cli.deployment import deploy, lnd_table

SITE_KEY = Signer.generate().pubkey.hex()
OWN_KEY = Signer.generate().pubkey.hex()
DEVICES = (
    ("s1-fridge", 0, '{ kind = "bdew", profile = "g0", annual_kwh = 4000 }'),
    ("s1-hvac", 1, '{ kind = "bdew", profile = "g0", annual_kwh = 9000 }'),
    ("s1-oven", 2, '{ kind = "bdew", profile = "h0", annual_kwh = 3000 }'),
)


def light_site(root: Path, light: tuple[str, ...] = ("s1-fridge", "s1-hvac")) -> Path:
    """The deployed site file with ``light`` devices light on a site node."""
    d = deploy(root, devices=DEVICES)
    text = d.site_file.read_text()
    for name in light:
        text = re.sub(
            rf'(name = "{name}"\n(?:.*\n)*?)lnd = \{{[^}}]*\}}\n', r'\1lightning = "site"\n', text
        )
    text = text.replace(
        'data_dir = "data/s1-oven"\n', f'data_dir = "data/s1-oven"\nlnd_pubkey = "{OWN_KEY}"\n'
    )
    text += f'\n[site_lightning]\npubkey = "{SITE_KEY}"\nlnd = {lnd_table(root, "site", 10009)}\n'
    d.site_file.write_text(text)
    return d.site_file


def test_a_light_device_pays_through_the_site_node(tmp_path: Path) -> None:
    site_file = SiteFile(light_site(tmp_path))
    fridge, oven = agent_setup(site_file, "s1-fridge"), agent_setup(site_file, "s1-oven")
    assert fridge.site_node is not None
    assert (fridge.site_node.pubkey, fridge.site_node.light) == (SITE_KEY, frozenset({0, 1}))
    assert fridge.runtime.lnd.rest_port == 10009  # the site node's endpoint
    assert agent_setup(site_file, "s1-hvac").runtime.lnd == fridge.runtime.lnd
    assert oven.site_node is None
    assert oven.runtime.lnd.rest_port == 1
    # Every peer pays a light device at the site node.
    assert agent_start(site_file)["nodes"] == {
        "s1-fridge": SITE_KEY,
        "s1-hvac": SITE_KEY,
        "s1-oven": OWN_KEY,
    }


def test_log_verify_of_a_light_device_checks_the_site_node_for_all_of_them(
    tmp_path: Path,
) -> None:
    path = light_site(tmp_path)
    node = _lnd_node(path, "s1-hvac", None)
    assert node is not None
    endpoint, authors = node
    assert endpoint.rest_port == 10009
    assert authors == (Author.device(0), Author.device(1))
    own = _lnd_node(path, "s1-oven", None)
    assert own is not None
    assert own[1] == (Author.device(2),)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda t: t[: t.index("[site_lightning]")], r"needs a \[site_lightning\] section"),
        (
            lambda t: t.replace(
                'lightning = "site"\n', f'lightning = "site"\nlnd_pubkey = "{OWN_KEY}"\n', 1
            ),
            r"devices\[0\]\.lnd_pubkey: a light device is paid on the site node",
        ),
        (
            lambda t: t.replace(
                'lightning = "site"\n',
                f'lightning = "site"\nlnd = {lnd_table(Path("/x"), "x", 2)}\n',
                1,
            ),
            "names no lnd of its own",
        ),
        (
            lambda t: re.sub(r'(name = "s1-oven"\n(?:.*\n)*?)lnd = \{[^}]*\}\n', r"\1", t),
            "names its lnd",
        ),
        (lambda t: t.replace('lightning = "site"', 'lightning = "shared"', 1), "lightning"),
    ],
)
def test_an_inconsistent_light_device_is_refused(
    tmp_path: Path, change: Callable[[str], str], why: str
) -> None:
    path = light_site(tmp_path)
    path.write_text(change(path.read_text()))
    with pytest.raises(ConfigError, match=why):
        SiteFile(path)
