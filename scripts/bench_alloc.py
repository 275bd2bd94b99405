#!/usr/bin/env python3
"""Allocator benchmark: UMA's cached alloc+free pair against glibc malloc/free
and, from Python, against bytearray; with one thread and with two at once.

    python3 scripts/bench_alloc.py [--json] [--n N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

from allocator_pyx import uma, uma_tools

SIZE = 2048   # a cluster


def median_of(fn, repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def python_pair_ns(zone: uma.Zone, n: int) -> float:
    alloc = zone.alloc
    t0 = time.perf_counter_ns()
    for _ in range(n):
        alloc().free()
    return (time.perf_counter_ns() - t0) / n


def bytearray_ns(n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        bytearray(SIZE)
    return (time.perf_counter_ns() - t0) / n


def two_threads(fn) -> list[float]:
    out: list[float] = [0.0, 0.0]

    def run(i: int) -> None:
        out[i] = fn()

    ts = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def measure(n: int, repeat: int) -> dict:
    zone = uma.Zone.create("bench_cluster", SIZE)
    res: dict[str, float] = {}
    res["uma_pair_ns"] = median_of(lambda: uma_tools.pair_ns(zone, n), repeat)
    res["malloc_pair_ns"] = median_of(lambda: uma_tools.malloc_pair_ns(SIZE, n), repeat)
    res["ratio_vs_malloc"] = res["uma_pair_ns"] / res["malloc_pair_ns"]
    res["uma_burst256_ns"] = median_of(lambda: uma_tools.batch_ns(zone, n // 256, 256), repeat)
    pn = max(n // 20, 10_000)
    res["python_pair_ns"] = median_of(lambda: python_pair_ns(zone, pn), repeat)
    res["bytearray_ns"] = median_of(lambda: bytearray_ns(pn), repeat)
    res["ratio_python_vs_bytearray"] = res["python_pair_ns"] / res["bytearray_ns"]
    t2 = two_threads(lambda: uma_tools.pair_ns(zone, n))
    m2 = two_threads(lambda: uma_tools.malloc_pair_ns(SIZE, n))
    res["uma_pair_ns_2threads"] = max(t2)
    res["malloc_pair_ns_2threads"] = max(m2)
    res["ratio_vs_malloc_2threads"] = max(t2) / max(m2)
    zone.drain()
    zone.destroy()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5_000_000, help="pairs per measurement")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args(argv)
    res = measure(args.n, args.repeat)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'measure':34} {'value':>10}")
    for k, v in res.items():
        unit = "" if k.startswith("ratio") else " ns"
        print(f"{k:34} {v:10.2f}{unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
