"""Random fault schedules on the simulated cluster, at scale.

Runs ``--schedules`` seeded random schedules (default 1,000,000) in chunks,
each one a full run: cold start, 6 faults or operator commands, heal, and the
liveness check, with the oracle watching every tick. Prints schedules per
second as the median over chunks, next to a baseline measured in the same
process (schedules with no faults at all), and every failure with its seed
and minimal replayable schedule.

    .venv/bin/python bench/policy_search.py                  # 1,000,000 schedules
    .venv/bin/python bench/policy_search.py --schedules 20000 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import time

from clever_cluster.sim.cluster import search


def chunk(args: tuple[int, int]) -> tuple[int, float, list[tuple[int, list[str]]]]:
    start, n = args
    t0 = time.perf_counter()
    bad = []
    for seed in range(start, start + n):
        sched = search.random_schedule(random.Random(seed))
        out = search.run(seed, sched)
        if not out.ok:
            bad.append((seed, out.violations))
    return n, time.perf_counter() - t0, bad


def baseline(n: int) -> float:
    t0 = time.perf_counter()
    for seed in range(n):
        search.run(seed, [])
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0)
    a = ap.parse_args()
    base = baseline(min(2000, a.schedules))
    jobs = [(s, min(a.chunk, a.first_seed + a.schedules - s)) for s in range(a.first_seed, a.first_seed + a.schedules, a.chunk)]
    rates: list[float] = []
    failures: list[tuple[int, list[str]]] = []
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(a.workers) as pool:
        for n, secs, bad in pool.imap_unordered(chunk, jobs):
            rates.append(n / secs)
            failures += bad
            done = sum(1 for _ in rates) * a.chunk
            print(f"  {min(done, a.schedules):>9} schedules, chunk at {n / secs:7.1f}/s per worker, failures so far {len(failures)}", file=sys.stderr)
    wall = time.perf_counter() - t0
    med = statistics.median(rates)
    print(f"schedules: {a.schedules}  workers: {a.workers}  wall: {wall:.0f} s  total: {a.schedules / wall:.1f} schedules/s")
    print(f"per worker: median {med:.1f} schedules/s over {len(rates)} chunks (min {min(rates):.1f}, max {max(rates):.1f})")
    print(f"baseline (no faults, same process): {base:.1f} schedules/s; ratio {med / base:.2f}")
    print(f"failures: {len(failures)}")
    for seed, _ in sorted(failures)[:5]:
        sched = search.random_schedule(random.Random(seed))
        print(search.report(seed, sched, search.run(seed, sched)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
