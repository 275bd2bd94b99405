#!/usr/bin/env python3
"""Route lookup benchmark: DIR-24-8 lookups/s with 1k, 10k and 100k random
routes, plus table build time and memory.

    python3 scripts/bench_route.py [--json] [--lookups N] [--sizes 1000,10000,100000]
                                   [--lengths bgp|uniform] [--repeat R] [--seed S]
    python3 scripts/bench_route.py --family 6 [--sizes 1000,10000,200000] [...]

Lookups run in a nogil C loop (rt_lookup, and rt_lookup_bulk in bursts of 32)
over pre-generated addresses:
  uniform  destinations uniform over the whole IPv4 space (the worst case
           for the cache: every lookup touches a random line of tbl24)
  in-table destinations drawn inside the installed prefixes (every lookup
           hits a route; longer-than-/24 routes take the second load)
Route lengths: "bgp" is an approximation of today's Internet table
(~60% /24, /16-/23 most of the rest, a few % longer than /24, a handful
shorter than /16); "uniform" draws every length /0../32 equally.

--family 6 measures the IPv6 table (forwarder.route6, a 24-bit root and
8-bit groups as DPDK rte_lpm6) the same way, with 1k, 10k and 200k routes:
  random   destinations uniform over 2000::/3, the global unicast space
           that every route is in (uniform over ::/0 is in the JSON: 7/8
           of those fall outside it and cost one load of an untouched page)
  in-table destinations drawn inside the installed prefixes (a /48 is four
           dependent loads: the root, then the /24, /32 and /40 groups)
"bgp" lengths follow the shape of today's IPv6 table (BGP6_LENGTHS below:
/48 48%, /32 12%, /44 9%, /40 6%, /29 4.5%, /36 3.8%, /46 2.5%, /47 2.2%,
the rest spread over /16../47 and 0.1-0.4% each at /52, /56, /60, /64,
/128), and addresses are clustered as allocations are: /28../32 "LIR"
blocks at random inside the RIRs' /12s (2a00::/12 36%, 2600::/12 22%,
2400::/12 18%, 2800::/12 10%, 2001::/16 10%, 2c00::/12 4%); 60% of the
routes longer than /32 are more-specifics of one of those blocks, the
others come half from 64 "PI" /29s (as 2001:678::/29 or 2620::/23 hold
the provider-independent /48s) and half from anywhere in the RIR space.
"uniform" draws every length /0../128 equally at random addresses (the
worst case for memory: ~6 groups per route).

--multipath K (IPv4) measures what ECMP adds to a lookup: the same routes
twice, once with plain next hops and once with each route's next hop a
K-way group (16 distinct groups over 16 gateways), both looked up as
forwarding does it (the route, then a group's member for a flow hash;
route.pxd: next-hop groups), in-table destinations, in the same run.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from forwarder.route import RouteTable  # noqa: E402
from forwarder.route6 import Route6Table  # noqa: E402

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


ALL6 = (1 << 128) - 1
MASKS6 = [ALL6 ^ ((1 << (128 - l)) - 1) for l in range(129)]

# prefix length -> weight (per mille), roughly the shape of the IPv6 BGP table
BGP6_LENGTHS = {16: 1, 19: 1, 20: 2, 21: 1, 22: 2, 23: 1, 24: 3, 25: 1, 26: 1, 27: 2, 28: 8,
                29: 45, 30: 7, 31: 5, 32: 120, 33: 8, 34: 10, 35: 6, 36: 38, 37: 5, 38: 10,
                39: 5, 40: 60, 41: 4, 42: 12, 43: 4, 44: 90, 45: 10, 46: 25, 47: 22, 48: 480,
                52: 1, 56: 4, 60: 1, 64: 4, 128: 1}
# RIR blocks (network, length, weight %)
RIR6_BLOCKS = [(0x2A00 << 112, 12, 36), (0x2600 << 112, 12, 22), (0x2400 << 112, 12, 18),
               (0x2800 << 112, 12, 10), (0x2001 << 112, 16, 10), (0x2C00 << 112, 12, 4)]
NEST6 = 0.6          # share of the routes longer than /32 inside an LIR block
PI6 = 0.5            # share of the others inside one of the PI /29s


def random_routes6(n: int, lengths: str, rng: random.Random) -> list[tuple[int, int, int]]:
    """n distinct IPv6 (network, length, ifindex); see the module docstring."""
    seen: dict[tuple[int, int], int] = {}

    def under(net: int, plen: int, length: int) -> int:
        return (net | (rng.getrandbits(128) & ~MASKS6[plen] & ALL6)) & MASKS6[length]

    if lengths == "uniform":
        while len(seen) < n:
            plen = rng.randint(0, 128)
            seen.setdefault((rng.getrandbits(128) & MASKS6[plen], plen), rng.randrange(16))
        return [(net, plen, ifx) for (net, plen), ifx in seen.items()]
    pop, weights = list(BGP6_LENGTHS), list(BGP6_LENGTHS.values())
    blocks = [(net, plen) for net, plen, _w in RIR6_BLOCKS]
    bweights = [w for _net, _plen, w in RIR6_BLOCKS]
    pi = [under(*rng.choices(blocks, bweights)[0], 29) for _ in range(64)]
    lir: list[tuple[int, int]] = []
    while len(seen) < n:
        plen = rng.choices(pop, weights)[0]
        if plen > 32 and lir and rng.random() < NEST6:
            net = under(*rng.choice(lir), plen)
        elif plen > 32 and rng.random() < PI6:
            net = under(rng.choice(pi), 29, plen)
        else:
            bnet, blen = rng.choices(blocks, bweights)[0]
            net = under(bnet, blen, plen) if plen >= blen else bnet & MASKS6[plen]
            if 28 <= plen <= 32:
                lir.append((net, plen))
        seen.setdefault((net, plen), rng.randrange(16))
    return [(net, plen, ifx) for (net, plen), ifx in seen.items()]


def bench_size6(n: int, args, rng: random.Random) -> dict:
    routes = random_routes6(n, args.lengths, rng)
    tbl8_max = 1 << 22 if args.lengths == "uniform" else 0
    # the same routes as text, the way a configuration or a routing daemon gives them
    texts = [f"{ipaddress.IPv6Address(net)}/{plen}" for net, plen, _ifx in routes]
    t0 = time.perf_counter()
    table = Route6Table(tbl8_max=tbl8_max)
    for text, (_net, _plen, ifx) in zip(texts, routes):
        table.add(text, ifindex=ifx)
    build_text_s = time.perf_counter() - t0
    del table, texts
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    table = Route6Table(tbl8_max=tbl8_max)
    for net, plen, ifx in routes:
        table.add((net, plen), via=None, ifindex=ifx)
    build_s = time.perf_counter() - t0
    rss1 = rss_bytes()
    st = table.stats()
    inside = []
    for _ in range(1 << 16):
        net, plen, _ifx = routes[rng.randrange(len(routes))]
        inside.append(net | (rng.getrandbits(128) & ~MASKS6[plen] & ALL6))

    def best(**kw):
        runs = [table.lookup_many_bench(args.lookups, seed=args.seed + i, **kw) for i in range(args.repeat)]
        return max(runs, key=lambda r: r["lookups_per_s"])

    res = {
        "routes": n,
        "lengths": args.lengths,
        "build_s": round(build_s, 4),
        "build_routes_per_s": round(n / build_s),
        "build_text_s": round(build_text_s, 4),
        "tbl24_resident_mib": round(st["tbl24_resident"] / 2**20, 1),
        "tbl8_groups": st["tbl8_groups_used"],
        "tbl8_groups_per_route": round(st["tbl8_groups_used"] / n, 2),
        "tbl8_mib": round(st["tbl8_committed_bytes"] / 2**20, 2),
        "rss_delta_mib": round((rss1 - rss0) / 2**20, 1),
        "nexthops": st["nexthops"],
    }
    for name, kw in (("random", {"within": "2000::/3"}), ("random_bulk", {"within": "2000::/3", "bulk": True}),
                     ("in_table", {"addrs": inside}), ("in_table_bulk", {"addrs": inside, "bulk": True}),
                     ("uniform", {})):
        r = best(**kw)
        res[f"{name}_mlookups_per_s"] = round(r["lookups_per_s"] / 1e6, 1)
        res[f"{name}_ns"] = round(r["ns_per_lookup"], 2)
        res[f"{name}_hit_ratio"] = round(r["hit_ratio"], 3)
    del table
    return res


def main6(args) -> int:
    rng = random.Random(args.seed)
    warm = Route6Table()
    warm.add("::/0", type="blackhole")
    del warm
    results = [bench_size6(int(s), args, rng) for s in args.sizes.split(",")]
    if args.json:
        print(json.dumps({"benchmark": "route6_lookup", "structure": "multibit trie 24-8-8 (rte_lpm6)",
                          "lookups": args.lookups, "results": results}, indent=2))
        return 0
    print(f"IPv6 24-8-8 trie route lookups, {args.lengths} prefix lengths, "
          f"{args.lookups:,} lookups per run, best of {args.repeat}")
    hdr = (f"{'routes':>8} {'build s':>8} {'text s':>7} {'tbl24 MiB':>9} {'groups':>8} {'grp MiB':>8} "
           f"{'random':>9} {'bulk':>9} {'in-table':>9} {'bulk':>9} {'hit%':>5}  (Mlookups/s)")
    print(hdr)
    for r in results:
        print(f"{r['routes']:>8} {r['build_s']:>8.3f} {r['build_text_s']:>7.3f} "
              f"{r['tbl24_resident_mib']:>9.1f} {r['tbl8_groups']:>8} {r['tbl8_mib']:>8.1f} "
              f"{r['random_mlookups_per_s']:>9.1f} {r['random_bulk_mlookups_per_s']:>9.1f} "
              f"{r['in_table_mlookups_per_s']:>9.1f} {r['in_table_bulk_mlookups_per_s']:>9.1f} "
              f"{100 * r['random_hit_ratio']:>5.1f}")
    print("build s: add((int, len)); text s: add('2001:db8::/32'); random = uniform over "
          "2000::/3; hit% = random destinations with a route; uniform over ::/0: "
          + ", ".join(f"{r['uniform_mlookups_per_s']:.1f}" for r in results) + " Mlookups/s")
    return 0


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


def bench_multipath(n: int, ways: int, args, rng: random.Random) -> dict:
    routes = random_routes(n, args.lengths, rng)
    inside = []
    for _ in range(1 << 16):
        net, plen, _ifx = routes[rng.randrange(len(routes))]
        inside.append(net | (rng.getrandbits(32) & ~MASKS[plen] & 0xFFFFFFFF))
    gws = [f"192.0.2.{k + 1}" for k in range(16)]
    res: dict = {"routes": n, "ways": ways}
    for name in ("plain", "multipath"):
        table = RouteTable()
        t0 = time.perf_counter()
        for net, plen, ifx in routes:
            if name == "plain":
                table.add((net, plen), via=gws[ifx], ifindex=ifx)
            else:
                table.add((net, plen), {"paths": [{"via": gws[(ifx + j) % 16], "ifindex": (ifx + j) % 16}
                                                  for j in range(ways)]})
        res[f"{name}_build_s"] = round(time.perf_counter() - t0, 3)
        runs = [table.lookup_many_bench(args.lookups, seed=args.seed + i, addrs=inside, select=True)
                for i in range(args.repeat)]
        r = max(runs, key=lambda r: r["lookups_per_s"])
        res[f"{name}_mlookups_per_s"] = round(r["lookups_per_s"] / 1e6, 1)
        res[f"{name}_ns"] = round(r["ns_per_lookup"], 2)
        res[f"{name}_nexthops"] = table.stats()["nexthops"]
        del table
    res["multipath_vs_plain"] = round(res["multipath_mlookups_per_s"] / res["plain_mlookups_per_s"], 2)
    return res


def main_multipath(args) -> int:
    rng = random.Random(args.seed)
    warm = RouteTable()                 # the first 64 MiB touched (see main)
    warm.add("0.0.0.0/0", type="blackhole")
    del warm
    results = [bench_multipath(int(s), args.multipath, args, rng) for s in args.sizes.split(",")]
    if args.json:
        print(json.dumps({"benchmark": "route_lookup_multipath", "lookups": args.lookups,
                          "results": results}, indent=2))
        return 0
    print(f"DIR-24-8 lookups as forwarding does them (route, then member), in-table destinations, "
          f"{args.multipath}-way groups, {args.lookups:,} lookups per run, best of {args.repeat}")
    print(f"{'routes':>8} {'plain':>9} {'ns':>6} {'multipath':>10} {'ns':>6} {'ratio':>6} "
          f"{'build plain s':>14} {'build mp s':>11}")
    for r in results:
        print(f"{r['routes']:>8} {r['plain_mlookups_per_s']:>9.1f} {r['plain_ns']:>6.2f} "
              f"{r['multipath_mlookups_per_s']:>10.1f} {r['multipath_ns']:>6.2f} "
              f"{r['multipath_vs_plain']:>5.2f}x {r['plain_build_s']:>14.3f} {r['multipath_build_s']:>11.3f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--lookups", type=int, default=20_000_000, help="lookups per measurement")
    ap.add_argument("--family", type=int, choices=(4, 6), default=4,
                    help="4: the IPv4 table (forwarder.route), 6: the IPv6 one (forwarder.route6)")
    ap.add_argument("--sizes", default=None,
                    help="route counts (default 1000,10000,100000; 1000,10000,200000 with --family 6)")
    ap.add_argument("--lengths", choices=("bgp", "uniform"), default="bgp")
    ap.add_argument("--repeat", type=int, default=3, help="best of R runs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--multipath", type=int, default=0, metavar="K",
                    help="IPv4: plain next hops against K-way groups, looked up as forwarding does")
    args = ap.parse_args(argv)
    if args.sizes is None:
        args.sizes = "1000,10000,200000" if args.family == 6 else "1000,10000,100000"
    if args.family == 6:
        return main6(args)
    if args.multipath:
        if not 2 <= args.multipath <= 16:
            ap.error("--multipath K: 2 to 16 ways")
        return main_multipath(args)
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
