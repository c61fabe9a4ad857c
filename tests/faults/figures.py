"""The figures of a fault run, as the Markdown table of docs/reliability.md.

``python -m tests.faults.figures faults.json`` (the file ``--fault-report`` wrote).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

COLUMNS = (
    "double_payments",
    "lost_payments",
    "diverged_sites",
    "unsettled_periods",
    "in_flight",
    "hanging",
    "unreconciled",
    "accounts_differ",  # figures that differ from the uncut run's (network faults)
)


def table(records: list[dict[str, Any]]) -> str:
    by_fault: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_fault[r["fault"]].append(r)
    head = ["fault", "trials", "passed", "run failed", *(c.replace("_", " ") for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for fault, rows in sorted(by_fault.items()):
        cells = [
            fault,
            str(len(rows)),
            str(sum(1 for r in rows if not r["problems"])),
            str(sum(1 for r in rows if r["run_error"])),
            *(str(sum(r.get(c, 0) for r in rows)) for c in COLUMNS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    total = [
        "**all**",
        str(len(records)),
        str(sum(1 for r in records if not r["problems"])),
        str(sum(1 for r in records if r["run_error"])),
        *(str(sum(r.get(c, 0) for r in records)) for c in COLUMNS),
    ]
    lines.append("| " + " | ".join(total) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    records = json.loads(Path(argv[0]).read_text())
    print(table(records))
    for r in records:
        if r["problems"]:
            what = f"seed {r['seed']} trial {r['trial']} {r['fault']} on {r['victims']}"
            problems = "; ".join(p[:200] for p in r["problems"][:4])
            print(f"\n- {what} at +{r['moment_s']}s: {problems}")


if __name__ == "__main__":
    main(sys.argv[1:])
