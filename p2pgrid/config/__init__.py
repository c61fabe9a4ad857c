"""Deployment configuration: site and utility files, key files, the owner's entries."""

from p2pgrid.config.files import SiteFile, UtilityFile
from p2pgrid.config.keys import (
    append_owner_entries,
    make_key_dir,
    read_entries,
    read_key,
    write_new_key,
)
from p2pgrid.config.setups import (
    agent_setup,
    agent_start,
    node_commands,
    start_once,
    start_then_stdin,
    utility_setup,
    utility_start,
)

__all__ = [
    "SiteFile",
    "UtilityFile",
    "agent_setup",
    "agent_start",
    "append_owner_entries",
    "make_key_dir",
    "node_commands",
    "read_entries",
    "read_key",
    "start_once",
    "start_then_stdin",
    "utility_setup",
    "utility_start",
    "write_new_key",
]
