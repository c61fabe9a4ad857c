"""Benchmark of the pooled auction and of the CSV meter source.

One pooled round (:func:`p2pgrid.market.clear_pool`) of a site with ``--sellers``
asks and ``--buyers`` demand curves of ``--steps`` steps (random, seeded), timed
over ``--repeat`` clearings; and a CSV meter of a year of one-minute power
readings (written to a temporary file) read and resampled to 15 minutes.

Usage: .venv/bin/python bench/market_clearing.py [--sellers 50] [--buyers 200] [--steps 8]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from p2pgrid.market import Ask, DemandCurve, Party, Step, clear_pool
from p2pgrid.meter import CsvFormat, CsvSource

SITE = "00000000000000aa"


def clearing(sellers: int, buyers: int, steps: int, repeat: int) -> None:
    rnd = random.Random(1)
    orders: list[Ask | DemandCurve] = [
        Ask(Party(SITE, i), 1, 5, rnd.randint(50, 2000), rnd.randint(80, 160) * 1000)
        for i in range(sellers)
    ]
    for i in range(sellers, sellers + buyers):
        prices = sorted(rnd.sample(range(60, 200), steps), reverse=True)
        curve = tuple(Step(p * 1000, rnd.randint(10, 300)) for p in prices)
        orders.append(DemandCurve(Party(SITE, i), 1, 5, curve))
    start = time.perf_counter()
    for _ in range(repeat):
        result = clear_pool(orders, period=1, interval=5)
    took_ms = (time.perf_counter() - start) / repeat * 1000
    print(
        f"{sellers} asks + {buyers} curves x {steps} steps: {len(result.trades)} trades "
        f"at {result.price_msat_per_kwh} msat/kWh, {took_ms:.1f} ms per clearing"
    )


def csv_year() -> None:
    rnd = random.Random(2)
    rows = 366 * 1440
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "year.csv"
        with path.open("w") as f:
            f.write("minute,load_w\n")
            f.writelines(f"{i},{rnd.uniform(0, 3000):.1f}\n" for i in range(rows))
        fmt = CsvFormat(
            column="load_w", unit="W", resolution_s=60, start="2024-01-01T00:00", timezone="UTC"
        )
        start = time.perf_counter()
        source = CsvSource(path, fmt)
        took = time.perf_counter() - start
    print(f"CSV: {rows} one-minute rows -> {len(source)} intervals in {took:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sellers", type=int, default=50)
    parser.add_argument("--buyers", type=int, default=200)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    clearing(args.sellers, args.buyers, args.steps, args.repeat)
    csv_year()


if __name__ == "__main__":
    main()
