#!/usr/bin/env python3
"""Allocator benchmark, in one run:

* UMA's cached alloc+free pair against glibc malloc/free of the same size
  and, from Python, against bytearray; with one thread and with two at once;
* mbufs: m_getcl + m_freem from Cython without the GIL and from Python,
  against the bare cached pair on the Packet zone; m_get + m_clget (the two
  primary zones); m_copym of a 3-cluster chain.

    python3 scripts/bench_alloc.py [--json] [--n N] [--repeat R]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

from allocator_pyx import mbuf, mbuf_bench, uma, uma_tools

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


def python_getcl_freem_ns(n: int) -> float:
    getcl = mbuf.Mbuf.getcl
    t0 = time.perf_counter_ns()
    for _ in range(n):
        getcl().freem()
    return (time.perf_counter_ns() - t0) / n


def measure_mbuf(n: int, repeat: int) -> dict[str, float]:
    res: dict[str, float] = {}
    res["m_getcl_freem_ns"] = median_of(lambda: mbuf_bench.getcl_freem_ns(n), repeat)
    res["packet_zone_pair_ns"] = median_of(lambda: mbuf_bench.pack_pair_ns(n), repeat)
    res["ratio_getcl_vs_packet_pair"] = res["m_getcl_freem_ns"] / res["packet_zone_pair_ns"]
    res["m_get_free_ns"] = median_of(lambda: mbuf_bench.get_free_ns(n), repeat)
    res["m_get_clget_freem_ns"] = median_of(lambda: mbuf_bench.get_clget_freem_ns(n), repeat)
    res["m_copym_3cl_ns"] = median_of(lambda: mbuf_bench.copym_3cl_ns(n // 2), repeat)
    pn = max(n // 10, 10_000)
    res["python_m_getcl_freem_ns"] = median_of(lambda: python_getcl_freem_ns(pn), repeat)
    mbuf.drain()
    return res


def measure(n: int, repeat: int) -> dict:
    zone = uma.Zone.create("bench_cluster", SIZE)
    res: dict[str, float] = {}
    uma_tools.pair_ns(zone, n)              # warm-up (page faults, CPU clock), not counted
    uma_tools.malloc_pair_ns(SIZE, n)
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
    res.update(measure_mbuf(n, repeat))
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
