"""The measured cost of each test file, so the heaviest run first (longest-processing-time order).

``make test`` runs files on two workers with ``--dist loadfile``; xdist hands a worker the next
file in collection order when it is free. By default it orders files by their number of tests,
which put the one-test files (the Airflow scheduler's, the Spark cluster's: the two longest)
last: one worker ran them for 9 minutes while the other sat idle (a fresh-clone run, 1,812 s).
Run longest first, the short files fill in around them and both workers finish together.

The costs live in ``tests/durations.json`` (seconds a file took, setup and teardown included).
A file not in it runs first (its cost is unknown, so it must not become the tail). Refresh the
table from a run's JUnit report::

    make test PYTEST_ARGS=--junitxml=/tmp/junit.xml
    .venv/bin/python -m tests.durations /tmp/junit.xml
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from pathlib import Path

TABLE = Path(__file__).with_name("durations.json")


def load() -> dict[str, float]:
    """Seconds per test file (``tests/…/test_x.py``), as last measured."""
    return {str(k): float(v) for k, v in json.loads(TABLE.read_text()).items()} if TABLE.exists() else {}


def order_key(costs: dict[str, float]) -> Callable[[str], float]:
    """A sort key for test items: the costliest file first, unknown files before all; a stable
    sort keeps each file's tests in their own order."""
    top = max(costs.values(), default=0.0) + 1.0

    def key(nodeid: str) -> float:
        return -costs.get(nodeid.split("::", 1)[0], top)

    return key


def from_junit(report: Path) -> dict[str, float]:
    """Seconds per file from a pytest JUnit XML report (its default: setup + call + teardown)."""
    costs: Counter[str] = Counter()
    for case in ET.parse(report).iter("testcase"):
        costs[case.get("classname", "").replace(".", "/") + ".py"] += float(case.get("time", "0"))
    return {f: round(s, 1) for f, s in costs.most_common()}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tests.durations JUNIT.xml")
    table = from_junit(Path(sys.argv[1]))
    TABLE.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{TABLE}: {len(table)} files, {sum(table.values()):,.0f} s in all")
