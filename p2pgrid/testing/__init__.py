"""Tooling for p2pgrid's tests and benchmarks, NOT part of the product.

Fakes (an in-memory loopback network for the log's sync protocol), the probe
agent process and its driver for multi-process tests and the latency benchmark,
and test hooks. Only ``tests/`` and ``bench/`` import this package; nothing in
the rest of ``p2pgrid`` does, and it re-exports nothing: import its modules.
"""
