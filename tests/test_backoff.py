"""The one back-off rule: capped, jittered, defined for any number of failures."""

from __future__ import annotations

import random

import pytest

from p2pgrid.backoff import Backoff
from p2pgrid.errors import ConfigError
from p2pgrid.replication import ReplicaConfig


def test_delay_doubles_then_stays_at_the_cap() -> None:
    backoff = Backoff(initial_s=0.25, max_s=10.0, jitter=0.0)
    rng = random.Random(1)
    assert [backoff.delay(n, rng) for n in range(1, 8)] == [0.25, 0.5, 1, 2, 4, 8, 10]


@pytest.mark.parametrize("fails", [1024, 1025, 1026, 1_100, 5_000, 10**6, 10**18])
def test_any_number_of_failures_gives_a_capped_delay(fails: int) -> None:
    # The replica's former `RETRY_MIN_S * 2 ** (fails - 1)` raised OverflowError at 1,025.
    backoff = Backoff(initial_s=0.25, max_s=10.0, jitter=0.5)
    rng = random.Random(fails)
    delays = [backoff.delay(fails, rng) for _ in range(200)]
    assert all(5.0 <= d <= 10.0 for d in delays)
    assert len(set(delays)) > 1  # jittered: peers that failed together do not retry together


def test_replica_retry_delay_is_capped_at_the_interval_for_a_long_dead_peer() -> None:
    config = ReplicaConfig(anti_entropy_interval_s=3.0, seed=7)
    backoff = config.retry_backoff
    rng = random.Random(7)
    for fails in range(1, 2_001):  # a peer dead for >1,100 rounds, computed, not waited for
        delay = backoff.delay(fails, rng)
        assert 0 < delay <= 3.0
        if fails > 10:
            assert delay >= 1.5


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ConfigError):
        Backoff(initial_s=2.0, max_s=1.0)
    with pytest.raises(ConfigError):
        Backoff(initial_s=0.0, max_s=1.0)
    with pytest.raises(ConfigError):
        Backoff(initial_s=1.0, max_s=2.0, jitter=1.5)
    with pytest.raises(ConfigError):
        ReplicaConfig(retry_max_s=-1.0)
