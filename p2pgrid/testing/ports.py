"""A TCP port that nothing on loopback listens on now, for tests that must name one.

The kernel picks it (bind to port 0); the socket is closed before the port is
used, so another process could take it meanwhile, which on a test machine is
far less likely than a collision on a fixed number.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
