"""Benchmark: device -> utility payments through p2pgrid's lnd client vs raw REST.

Brings up its own regtest stack (or uses ``--stack NAME`` if it is up), makes N
payments sequentially and with C concurrent payers, first with raw httpx calls
to lnd's ``/v2/router/send`` (the baseline: what lnd itself costs), then through
``p2pgrid.lightning.LndClient`` (decode + send + typed parsing), in the same run.
Prints payments/s, p50/p99 latency and the ratio p2pgrid/raw.

    .venv/bin/python bench/lnd_payments.py --payments 200 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx

from p2pgrid.lightning import LndEndpoint
from p2pgrid.regtest import Stack, StackConfig, ensure_daemons

FEE_LIMIT_MSAT = 10_000
AMOUNT_MSAT = 1_000_000


def raw_payer(endpoint: LndEndpoint) -> tuple[httpx.AsyncClient, Callable[[str], Awaitable[None]]]:
    ctx = ssl.create_default_context(cafile=str(endpoint.tls_cert))
    client = httpx.AsyncClient(
        base_url=endpoint.base_url,
        verify=ctx,
        headers={"Grpc-Metadata-macaroon": endpoint.macaroon.read_bytes().hex()},
        timeout=120,
    )

    async def pay(payment_request: str) -> None:
        body = {
            "payment_request": payment_request,
            "timeout_seconds": 60,
            "fee_limit_msat": str(FEE_LIMIT_MSAT),
            "no_inflight_updates": True,
        }
        succeeded = False
        # Read to the stream's end (lnd ends it right after the final update): a
        # response closed before its end closes its connection, and the next payment
        # would pay a new TCP connection and TLS handshake (as LndClient does not).
        async with client.stream("POST", "/v2/router/send", json=body) as response:
            async for line in response.aiter_lines():
                status = json.loads(line)["result"]["status"]
                if status == "FAILED":
                    raise RuntimeError(line)
                succeeded = succeeded or status == "SUCCEEDED"
        if not succeeded:
            raise RuntimeError("the payment stream ended before the payment succeeded")

    return client, pay


async def run(
    pay: Callable[[str], Awaitable[object]], invoices: list[str], concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    queue = list(invoices)

    async def worker() -> None:
        while queue:
            request = queue.pop()
            t0 = time.perf_counter()
            await pay(request)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "per_s": len(invoices) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payments", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--stack", default=None, help="use this running stack")
    args = parser.parse_args()

    own = args.stack is None
    stack = Stack(StackConfig(name=args.stack or f"bench-{os.getpid()}"), await ensure_daemons())
    if own:
        await stack.up()
    try:
        async with stack.client("utility") as utility, stack.client("dev-a") as device:

            async def invoices(n: int) -> list[str]:
                return [
                    (await utility.add_invoice(AMOUNT_MSAT, "bench")).payment_request
                    for _ in range(n)
                ]

            http, raw_pay = raw_payer(stack.endpoint("dev-a"))

            async def p2p_pay(request: str) -> object:
                return await device.pay_invoice(request, fee_limit_msat=FEE_LIMIT_MSAT)

            print(
                f"machine: {platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}"
            )
            print(
                f"{args.payments} payments of {AMOUNT_MSAT // 1000} sat "
                "dev-a -> utility (one channel)"
            )
            print(f"{'mode':<28}{'payments/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
            results: dict[str, dict[str, float]] = {}
            for conc in (1, args.concurrency):
                for name, pay in (("raw REST", raw_pay), ("p2pgrid LndClient", p2p_pay)):
                    batch = await invoices(args.payments)
                    r = await run(pay, batch, conc)
                    results[f"{name} c={conc}"] = r
                    print(
                        f"{name + f' (c={conc})':<28}{r['per_s']:>12.1f}"
                        f"{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}"
                    )
                    await stack.wait_settled()
                raw, ours = results[f"raw REST c={conc}"], results[f"p2pgrid LndClient c={conc}"]
                print(
                    f"ratio p2pgrid/raw (c={conc}): throughput {ours['per_s'] / raw['per_s']:.2f}, "
                    f"p50 {ours['p50_ms'] / raw['p50_ms']:.2f}"
                )
            await http.aclose()
    finally:
        if own:
            await stack.down()


if __name__ == "__main__":
    asyncio.run(main())
