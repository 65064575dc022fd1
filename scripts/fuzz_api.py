"""A larger Schemathesis run against the live search app, with totals.

  flock /tmp/afmrl-heavy.lock python scripts/fuzz_api.py --examples 30

Runs ``tests/serve/test_fuzz.py`` (the app, its index, the token-protected ingress and all
Schemathesis checks are the test's) with more examples per operation and prints how many cases
each operation got and what it answered, with and without the token. Exit status: pytest's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=30, help="examples per operation and mode")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "fuzz.json"
        env = {**os.environ, "AFMRL_FUZZ_EXAMPLES": str(args.examples),
               "AFMRL_FUZZ_REPORT": str(report)}
        started = time.monotonic()
        status = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                                  "tests/serve/test_fuzz.py"], cwd=REPO, env=env)
        seconds = time.monotonic() - started
        tally = json.loads(report.read_text()) if report.is_file() else {}
    by_status: Counter[str] = Counter()
    for key, count in tally.items():
        by_status[f"{key.split(' ', 1)[0]} {key.rsplit(' ', 1)[-1]}"] += count
    print(f"\n{sum(tally.values())} requests in {seconds:.0f}s "
          f"({args.examples} examples per operation and mode); pytest exit {status}")
    for key, count in sorted(tally.items()):
        print(f"  {count:5d}  {key}")
    print("by token and status:", dict(sorted(by_status.items())))
    return status


if __name__ == "__main__":
    sys.exit(main())
