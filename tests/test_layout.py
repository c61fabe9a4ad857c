"""The layout tells the truth: pure packages stay pure in their imports too.

Each package is imported in a fresh interpreter (this process has long loaded
everything), and the modules it pulled in are checked. ``ledger`` is the log in
SQLite, so it may load ``aiosqlite``; the domain rules (``market``, ``billing``,
``meter``) load no database driver; none of them loads the network stack
(``libp2p``, ``trio``) or the Lightning client's HTTP library (``httpx``).
Test tooling (``p2pgrid.testing``) is imported by tests and benchmarks only.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import p2pgrid

NETWORK = ("libp2p", "trio", "httpx")
PURE = {
    "p2pgrid.ledger": NETWORK,
    "p2pgrid.market": (*NETWORK, "aiosqlite"),
    "p2pgrid.billing": (*NETWORK, "aiosqlite"),
    "p2pgrid.meter": (*NETWORK, "aiosqlite"),
}

PROBE = """
import json, sys, time
start = time.perf_counter()
import {package}
took = time.perf_counter() - start
print(json.dumps({{"took_s": took, "modules": sorted(sys.modules)}}))
"""


@pytest.mark.parametrize("package", sorted(PURE))
def test_pure_package_loads_no_io_stack(package: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(package=package)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(out.stdout)
    loaded = set(result["modules"])
    pulled = sorted(m for m in PURE[package] if m in loaded)
    assert not pulled, (
        f"import {package} loads {pulled} ({len(loaded)} modules, {result['took_s']:.2f} s)"
    )


def test_only_tests_and_bench_import_the_testing_package() -> None:
    package = Path(p2pgrid.__file__).parent
    importers = []
    for path in sorted(package.rglob("*.py")):
        if path.parent.name == "testing" and path.parent.parent == package:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "p2pgrid.testing" or n.startswith("p2pgrid.testing.") for n in names):
                importers.append(str(path.relative_to(package.parent)))
    assert not importers, f"product modules import p2pgrid.testing: {importers}"
