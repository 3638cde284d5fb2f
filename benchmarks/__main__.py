"""``python -m benchmarks [name ...]``: run the named benchmarks, or all of them."""

from __future__ import annotations

import importlib
import sys

ALL = ("models", "realtime", "kafka", "batch", "serving", "console", "pacing", "memory", "ivt")


def main(argv: list[str]) -> int:
    names = argv or list(ALL)
    for name in names:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"benchmarks.{name}":
                print(f"benchmark {name!r}: not written yet, skipped")
                continue
            raise
        module.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
