"""The owner's entries file: the site owner's signed chain, one hex entry per line.

The owner's commands (``p2pgrid site init``, ``device add``, ``device revoke``,
``site allocate``) write it whole (a temp file, then rename); every agent and
the utility read it when they start, and a running node reads it again when it
changes (:mod:`p2pgrid.replication.entries_watch`). Whoever reads it takes it
only whole: :func:`parse_owner_file` accepts a text only if every non-blank
line is an entry of this site, authored and signed by the site's owner, and the
lines are the owner's chain from its start (seq 1, 2, ... each ``prev`` the id
of the line before). Anything else, a half-copied last line, a line an
attacker edited or added, a line of another site, is one
:class:`OwnerFileError` naming the file, the line and the problem, and nothing
of the file is taken.
"""

from __future__ import annotations

from pathlib import Path

from p2pgrid.errors import ConfigError
from p2pgrid.identity import SiteIdentity
from p2pgrid.ledger.bodies import Role
from p2pgrid.ledger.entry import GENESIS_PREV, Entry, decode_entry
from p2pgrid.ledger.errors import LedgerError
from p2pgrid.ledger.membership import Membership


class OwnerFileError(ConfigError):
    """An entries file that is not the owner's whole, signed chain (the message
    names the file and the line)."""


def parse_owner_file(text: str, site: SiteIdentity, *, source: str | Path) -> list[Entry]:
    """The owner's entries in ``text`` (the contents of ``source``), in chain order."""
    membership = Membership(site)
    entries: list[Entry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = decode_entry(bytes.fromhex(line.strip()), site.site_hash)
        except (ValueError, LedgerError) as exc:
            raise OwnerFileError(f"{source}:{number}: not an entry of this site: {exc}") from None
        if entry.author.role is not Role.OWNER:
            raise OwnerFileError(f"{source}:{number}: {entry} is not the site owner's entry")
        reason = membership.check(entry)
        if reason is not None:
            raise OwnerFileError(
                f"{source}:{number}: {entry} is refused ({reason}): not signed by the site's owner"
            )
        last = entries[-1] if entries else None
        expected = (last.seq + 1, last.id) if last else (1, GENESIS_PREV)
        if (entry.seq, entry.prev) != expected:
            raise OwnerFileError(
                f"{source}:{number}: {entry} does not follow the line before in the owner's "
                f"chain (expected seq {expected[0]})"
            )
        entries.append(entry)
    return entries


def read_owner_file(path: Path, site: SiteIdentity) -> list[Entry]:
    """The owner's entries in the file ``path`` (:class:`OwnerFileError` if unreadable)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise OwnerFileError(f"cannot read entries file {path}: {exc}") from None
    return parse_owner_file(text, site, source=path)
