"""Files that hold secrets (macaroons, keys, seeds, wallet keys): owner-only, checked.

:func:`write_secret` creates the file with mode ``0600`` before any byte is
written (no window in which another user could open it) and replaces the target
atomically. :func:`read_secret` refuses a file that users other than the owner
and its group may read or write (``o+r``/``o+w``; lnd itself writes its admin
macaroon ``0640``), and one that is not a regular file, with a
:class:`~p2pgrid.errors.ConfigError` that names the file, its mode and the fix.
Nothing here logs a secret's content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from p2pgrid.errors import ConfigError

#: Permission bits that make a secret file unsafe: anything for "others".
UNSAFE_BITS = stat.S_IRWXO


class InsecureSecretFile(ConfigError):
    """A secret file that other users can read or write."""


def read_secret(path: Path) -> bytes:
    """The bytes of a secret file; :class:`InsecureSecretFile` if others may read
    or write it, :class:`ConfigError` if it cannot be read."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"secret file {path} is not a regular file")
    if info.st_mode & UNSAFE_BITS:
        raise InsecureSecretFile(
            f"secret file {path} has mode {stat.filemode(info.st_mode)}: other users may "
            f"read it; run `chmod o-rwx {path}` (or 600)"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from exc


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (a temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask, and skipped if it existed
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
