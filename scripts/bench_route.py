#!/usr/bin/env python3
"""Route lookup benchmark: DIR-24-8 lookups/s with 1k, 10k and 100k random
routes, plus table build time and memory.

    python3 scripts/bench_route.py [--json] [--lookups N] [--sizes 1000,10000,100000]
                                   [--lengths bgp|uniform] [--repeat R] [--seed S]

Lookups run in a nogil C loop (rt_lookup, and rt_lookup_bulk in bursts of 32)
over pre-generated addresses:
  uniform  destinations uniform over the whole IPv4 space (the worst case
           for the cache: every lookup touches a random line of tbl24)
  in-table destinations drawn inside the installed prefixes (every lookup
           hits a route; longer-than-/24 routes take the second load)
Route lengths: "bgp" is an approximation of today's Internet table
(~60% /24, /16-/23 most of the rest, a few % longer than /24, a handful
shorter than /16); "uniform" draws every length /0../32 equally.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from forwarder.route import RouteTable  # noqa: E402

MASKS = [0] + [(0xFFFFFFFF << (32 - l)) & 0xFFFFFFFF for l in range(1, 33)]

# prefix length -> weight (per mille), roughly the shape of a full BGP table
BGP_LENGTHS = {8: 1, 10: 1, 11: 2, 12: 3, 13: 5, 14: 8, 15: 10, 16: 25, 17: 12, 18: 20,
               19: 30, 20: 40, 21: 45, 22: 110, 23: 90, 24: 560, 25: 6, 26: 6, 27: 5,
               28: 5, 29: 4, 30: 3, 31: 1, 32: 8}


def random_routes(n: int, lengths: str, rng: random.Random) -> list[tuple[int, int, int]]:
    """n distinct (network, length, ifindex)."""
    if lengths == "bgp":
        pop, weights = list(BGP_LENGTHS), list(BGP_LENGTHS.values())
    else:
        pop, weights = list(range(33)), [1] * 33
    seen: dict[tuple[int, int], int] = {}
    while len(seen) < n:
        plen = rng.choices(pop, weights)[0]
        net = rng.getrandbits(32) & MASKS[plen]
        seen.setdefault((net, plen), rng.randrange(16))
    return [(net, plen, ifx) for (net, plen), ifx in seen.items()]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_size(n: int, args, rng: random.Random) -> dict:
    routes = random_routes(n, args.lengths, rng)
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    table = RouteTable()
    for net, plen, ifx in routes:
        table.add((net, plen), via=None, ifindex=ifx)
    build_s = time.perf_counter() - t0
    rss1 = rss_bytes()
    st = table.stats()
    inside = []
    for _ in range(1 << 16):
        net, plen, _ifx = routes[rng.randrange(len(routes))]
        inside.append(net | (rng.getrandbits(32) & ~MASKS[plen] & 0xFFFFFFFF))

    def best(**kw):
        runs = [table.lookup_many_bench(args.lookups, seed=args.seed + i, **kw) for i in range(args.repeat)]
        return max(runs, key=lambda r: r["lookups_per_s"])

    res = {
        "routes": n,
        "lengths": args.lengths,
        "build_s": round(build_s, 4),
        "build_routes_per_s": round(n / build_s),
        "tbl24_resident_mib": round(st["tbl24_resident"] / 2**20, 1),
        "tbl8_groups": st["tbl8_groups_used"],
        "tbl8_mib": round(st["tbl8_committed_bytes"] / 2**20, 2),
        "rss_delta_mib": round((rss1 - rss0) / 2**20, 1),
        "nexthops": st["nexthops"],
    }
    for name, kw in (("uniform", {}), ("uniform_bulk", {"bulk": True}),
                     ("in_table", {"addrs": inside}), ("in_table_bulk", {"addrs": inside, "bulk": True})):
        r = best(**kw)
        res[f"{name}_mlookups_per_s"] = round(r["lookups_per_s"] / 1e6, 1)
        res[f"{name}_ns"] = round(r["ns_per_lookup"], 2)
        res[f"{name}_hit_ratio"] = round(r["hit_ratio"], 3)
    del table
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--lookups", type=int, default=20_000_000, help="lookups per measurement")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--lengths", choices=("bgp", "uniform"), default="bgp")
    ap.add_argument("--repeat", type=int, default=3, help="best of R runs")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    # warm-up: the first 64 MiB a process touches may cost host page faults
    # (VMs); charge them to nobody
    warm = RouteTable()
    warm.add("0.0.0.0/0", type="blackhole")
    del warm
    results = [bench_size(int(s), args, rng) for s in args.sizes.split(",")]
    if args.json:
        print(json.dumps({"benchmark": "route_lookup", "structure": "DIR-24-8",
                          "lookups": args.lookups, "results": results}, indent=2))
        return 0
    print(f"DIR-24-8 route lookups, {args.lengths} prefix lengths, "
          f"{args.lookups:,} lookups per run, best of {args.repeat}")
    hdr = (f"{'routes':>8} {'build s':>8} {'tbl24 MiB':>9} {'tbl8 grp':>8} {'tbl8 MiB':>8} "
           f"{'uniform':>9} {'bulk':>9} {'in-table':>9} {'bulk':>9} {'hit%':>5}  (Mlookups/s)")
    print(hdr)
    for r in results:
        print(f"{r['routes']:>8} {r['build_s']:>8.3f} {r['tbl24_resident_mib']:>9.1f} "
              f"{r['tbl8_groups']:>8} {r['tbl8_mib']:>8.2f} "
              f"{r['uniform_mlookups_per_s']:>9.1f} {r['uniform_bulk_mlookups_per_s']:>9.1f} "
              f"{r['in_table_mlookups_per_s']:>9.1f} {r['in_table_bulk_mlookups_per_s']:>9.1f} "
              f"{100 * r['uniform_hit_ratio']:>5.1f}")
    print(f"median ns/lookup (uniform): "
          f"{statistics.median(r['uniform_ns'] for r in results):.1f}; "
          f"hit% = uniform destinations with a route")
    return 0


if __name__ == "__main__":
    sys.exit(main())
