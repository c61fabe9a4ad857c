"""The fuzz suite's budget and its count of cases tried.

Every fuzz test runs ``P2PGRID_FUZZ_EXAMPLES`` hypothesis examples (default
:data:`SHORT_BUDGET`: the whole suite then takes a few seconds inside the normal
test command); the tests over real libp2p hosts run a fifth of that. A longer
campaign (docs/security.md)::

    P2PGRID_FUZZ_EXAMPLES=20000 python -m pytest -p no:cacheprovider -q tests/fuzz

The number of cases tried is printed at the end of the session.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings

SHORT_BUDGET = 150
BUDGET = int(os.environ.get("P2PGRID_FUZZ_EXAMPLES", SHORT_BUDGET))

#: Cases tried, by test (filled by :func:`tried`).
TRIED: Counter[str] = Counter()


def tried(name: str) -> None:
    TRIED[name] += 1


def budget(fraction: float = 1.0) -> settings:
    """Hypothesis settings for one fuzz test: the budget, no deadline (the first
    example of a test pays for imports and database set-up)."""
    return settings(
        max_examples=max(10, int(BUDGET * fraction)),
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
        derandomize=False,
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TRIED:
        total = sum(TRIED.values())
        terminalreporter.write_line(
            f"fuzz: {total} cases tried over {len(TRIED)} targets "
            f"(P2PGRID_FUZZ_EXAMPLES={BUDGET} per test)"
        )
