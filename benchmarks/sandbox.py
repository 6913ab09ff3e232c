"""Sandbox throughput: verdicts per second on 200 short correct programs, pool vs sequential.

    .venv/bin/python benchmarks/sandbox.py [--n 200] [--workers N]

Half the programs use function tests (judge + candidate sandboxes), half stdin/stdout tests
(one sandbox per case, one case each). Every verdict must be `passed`; the table says so.
"""

from __future__ import annotations

import argparse
import os
import time

from trajdistill.verify.code import FunctionTests, IOTests, Limits, check_programs

from machine import cpu_description  # benchmarks/machine.py (the script's own directory is on sys.path)


def workload(n: int) -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = []
    for i in range(n):
        if i % 2 == 0:
            check = f"def check(candidate):\n    assert candidate(3) == {3 + i}\n"
            items.append((f"def shift(x):\n    return x + {i}\n", FunctionTests("shift", check)))
        else:
            items.append((f"print(int(input()) * {i})\n", IOTests([("7\n", f"{7 * i}\n")])))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    items, limits = workload(args.n), Limits(timeout_s=10.0)
    check_programs(items[:2], limits, workers=1)  # warm the page cache
    rows = []
    for mode, workers in (("sequential", 1), ("pool", args.workers)):
        start = time.perf_counter()
        verdicts = check_programs(items, limits, workers=workers)
        elapsed = time.perf_counter() - start
        passed = sum(v.passed for v in verdicts)
        rows.append((mode, workers, len(items), elapsed, len(items) / elapsed, passed))
    print(f"CPU: {cpu_description()}")
    print(f"{'mode':<11} {'workers':>7} {'programs':>8} {'seconds':>8} {'verdicts/s':>10} {'passed':>7}")
    for mode, workers, n, elapsed, rate, passed in rows:
        print(f"{mode:<11} {workers:>7} {n:>8} {elapsed:>8.2f} {rate:>10.1f} {passed:>7}")
    print(f"speed-up of the pool: {rows[1][4] / rows[0][4]:.2f}x on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
