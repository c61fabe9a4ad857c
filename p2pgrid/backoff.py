"""Capped exponential back-off with jitter: the one delay rule of every retry loop.

A retry loop (a replica's sync with one peer, calls to a Lightning node that is
away) asks :meth:`Backoff.delay` how long to wait after ``fails`` failures in a
row. The delay grows as ``initial_s * 2**(fails - 1)`` up to ``max_s`` and is then
jittered down by up to ``jitter`` of itself, so that peers that failed together
do not retry together. It is defined for every ``fails >= 1`` (a million failures
included): the exponent is clamped before any power is taken, so no float
overflows however long a peer stays dead.
"""

from __future__ import annotations

import dataclasses
import random

from p2pgrid.errors import ConfigError

#: Above this exponent ``2**n`` times any sane initial delay exceeds any cap.
_MAX_EXPONENT = 62


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before the next try. Built once, shared freely."""

    #: Delay after the first failure (before jitter).
    initial_s: float
    #: Largest delay, whatever the number of failures.
    max_s: float
    #: Fraction of the delay taken off at random (0: none, 1: "full jitter").
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ConfigError(f"back-off needs 0 < initial_s <= max_s, got {self}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigError(f"back-off jitter must be within 0..1, got {self.jitter}")

    def ceiling(self, fails: int) -> float:
        """The delay after ``fails`` failures in a row, before jitter."""
        exponent = min(max(fails - 1, 0), _MAX_EXPONENT)
        return min(self.initial_s * float(1 << exponent), self.max_s)

    def delay(self, fails: int, rng: random.Random) -> float:
        """The jittered delay after ``fails`` failures: within
        ``[(1 - jitter) * ceiling, ceiling]``."""
        ceiling = self.ceiling(fails)
        return ceiling * (1.0 - self.jitter * rng.random())
