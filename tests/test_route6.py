"""forwarder.route6: the IPv6 multibit-trie longest-prefix match against naive models."""
from __future__ import annotations

import gc
import ipaddress
import os
import random
import threading

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from forwarder import route6

Route6Table = route6.Route6Table

ALL = (1 << 128) - 1
MASKS = [ALL ^ ((1 << (128 - l)) - 1) for l in range(129)]


def fmt(a: int) -> str:
    return str(ipaddress.IPv6Address(a))


def ip(s: str) -> int:
    return int(ipaddress.IPv6Address(s))


def pfx(net: int, plen: int) -> str:
    return f"{fmt(net)}/{plen}"


NEXTHOPS = [
    {"via": "fe80::1", "ifindex": 0, "type": "forward"},
    {"via": "2001:db8:ffff::1", "ifindex": 1, "type": "forward"},
    {"via": None, "ifindex": 2, "type": "forward"},
    {"via": None, "ifindex": 1, "type": "local"},
    {"via": None, "ifindex": -1, "type": "blackhole"},
    {"via": None, "ifindex": -1, "type": "unreachable"},
    {"via": None, "ifindex": -1, "type": "prohibit"},
]


def nh_tuple(nh: dict) -> tuple:
    return nh["via"], nh["ifindex"], nh["type"]


class Model:
    """The reference: routes in one dict per prefix length; the longest match
    is the longest length whose dict holds the address's masked network (an
    exhaustive search over the lengths, independent of the trie)."""

    def __init__(self) -> None:
        self.by_len: list[dict[int, dict]] = [dict() for _ in range(129)]

    @property
    def routes(self) -> dict[tuple[int, int], dict]:
        return {(net, plen): nh for plen, d in enumerate(self.by_len) for net, nh in d.items()}

    def add(self, net: int, plen: int, nh: dict) -> None:
        self.by_len[plen][net] = nh

    def delete(self, net: int, plen: int) -> None:
        del self.by_len[plen][net]

    def lookup(self, a: int):
        for plen in range(128, -1, -1):
            nh = self.by_len[plen].get(a & MASKS[plen])
            if nh is not None:
                return (a & MASKS[plen], plen), nh
        return None


def scan_lookup(routes: dict[tuple[int, int], dict], a: int):
    """Brute force: every route, the longest that contains a."""
    best = None
    for (net, plen), nh in routes.items():
        if a & MASKS[plen] == net and (best is None or plen > best[0][1]):
            best = ((net, plen), nh)
    return best


def expected_groups(prefixes) -> int:
    """One group per (/24, /32, ..., /120) span holding a longer prefix."""
    return len({(net >> (128 - span), span) for net, plen in prefixes for span in range(24, plen, 8)})


def check(table: Route6Table, lookup, addrs, bulk: bool = True) -> None:
    """Every address: table.lookup() == the reference, and rt6_lookup,
    rt6_lookup_nh and rt6_lookup_bulk agree with it."""
    idxs = []
    for a in addrs:
        got = table.lookup(a)
        want = lookup(a)
        if want is None:
            assert got is None, (fmt(a), got)
            assert table.lookup_nexthop(a) is None
            idxs.append(-1)
        else:
            (net, plen), nh = want
            assert got is not None, (fmt(a), pfx(net, plen))
            assert got["prefix"] == pfx(net, plen), fmt(a)
            assert nh_tuple(got) == nh_tuple(nh), fmt(a)
            if bulk:
                assert nh_tuple(table.lookup_nexthop(a)) == nh_tuple(nh)
            idxs.append(got["index"])
    assert [table.lookup_index(a) for a in addrs] == idxs
    if bulk:
        assert table.lookup_bulk(addrs) == idxs


def probe_addrs(prefixes, extra=()) -> list[int]:
    """Boundaries of every prefix (first, last, just outside, middle) plus extras."""
    out = set(extra)
    for net, plen in prefixes:
        last = net | (~MASKS[plen] & ALL)
        out.update({net, last, (net - 1) & ALL, (last + 1) & ALL, net + ((last - net) >> 1)})
    return sorted(out)


# anchors: prefixes drawn around them nest and overlap a lot, across every level
ANCHORS = [ip(a) for a in ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2:ffff::1", "2001:db8:1:300::7",
                           "2001:db8:ff00::1", "2a00:1450:4001:80b::200e", "::", "::1",
                           "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1")]


def random_prefix(rng: random.Random) -> tuple[int, int]:
    r = rng.random()
    if r < 0.1:
        plen = rng.choice((0, 128, 24, 32, 48, 64))
    else:
        plen = rng.randint(0, 128)
    base = rng.choice(ANCHORS) if rng.random() < 0.6 else rng.getrandbits(128)
    if rng.random() < 0.3:               # flip a bit near the end of the prefix: siblings
        base ^= 1 << (128 - plen + rng.randint(0, min(8, plen - 1))) if plen else 0
    return base & MASKS[plen], plen


# --- LPM correctness over random prefix sets ---------------------------------------

@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_lpm_random_sets_against_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    t = Route6Table()
    routes: dict[tuple[int, int], dict] = {}
    while len(routes) < 600:
        routes[random_prefix(rng)] = rng.choice(NEXTHOPS)
    routes[(0, 0)] = NEXTHOPS[5] if seed % 2 else routes.get((0, 0), NEXTHOPS[4])
    for (net, plen), nh in routes.items():
        t.add((net, plen), nh)
    assert len(t) == len(routes)
    probes = probe_addrs(routes, ANCHORS)
    probes += [rng.getrandbits(128) for _ in range(300)]
    keys = list(routes)
    for _ in range(300):                 # inside installed prefixes
        net, plen = keys[rng.randrange(len(keys))]
        probes.append(net | (rng.getrandbits(128) & ~MASKS[plen] & ALL))
    check(t, lambda a: scan_lookup(routes, a), probes)
    assert t.stats()["tbl8_groups_used"] == expected_groups(routes)
    assert t.stats()["nexthops"] == len({nh_tuple(nh) for nh in routes.values()})


def test_lpm_50k_bgp_like_routes() -> None:
    """50 000 routes of BGP-like lengths, spot-checked; then half deleted in
    random order and checked again (covering routes come back, groups go)."""
    rng = random.Random(50_000)
    lengths = [16, 19, 20, 24, 28, 29, 32, 32, 32, 36, 40, 44, 44, 46, 47] + [48] * 14 + [56, 64, 128]
    t = Route6Table()
    model = Model()
    parents: list[int] = []
    routes: set[tuple[int, int]] = set()
    while len(routes) < 50_000:
        plen = rng.choice(lengths)
        if plen > 32 and parents and rng.random() < 0.7:
            net = rng.choice(parents) | (rng.getrandbits(96) & ~MASKS[32] & ALL)
        else:
            net = (0x2 << 124) | rng.getrandbits(125) & ~(0x7 << 125)
            if rng.random() < 0.3:
                net = (rng.choice((0x2001, 0x2400, 0x2600, 0x2a00)) << 112) | rng.getrandbits(108) << 4
        net &= MASKS[plen]
        if plen <= 32:
            parents.append(net & MASKS[32])
        if (net, plen) not in routes:
            routes.add((net, plen))
            nh = NEXTHOPS[rng.randrange(len(NEXTHOPS))]
            t.add((net, plen), nh)
            model.add(net, plen, nh)
    assert len(t) == 50_000

    def spot_check(n: int) -> None:
        keys = sorted(routes)
        probes = [(0x2 << 124) | rng.getrandbits(125) for _ in range(n)]
        for _ in range(n):
            net, plen = keys[rng.randrange(len(keys))]
            probes.append(net | (rng.getrandbits(128) & ~MASKS[plen] & ALL))
        check(t, model.lookup, probes)

    spot_check(5_000)
    assert t.stats()["tbl8_groups_used"] == expected_groups(routes)
    for key in rng.sample(sorted(routes), 25_000):
        t.delete(key)
        routes.remove(key)
        model.delete(*key)
    assert len(t) == 25_000
    spot_check(5_000)
    assert t.stats()["tbl8_groups_used"] == expected_groups(routes)
    bench = t.lookup_many_bench(2_000_000, within="2000::/3")
    assert bench["lookups_per_s"] > 1e6


# --- add / replace / delete in random orders, checked after every step ---------------

@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_random_add_replace_delete_sequences(seed: int) -> None:
    rng = random.Random(seed)
    t = Route6Table(tbl8_max=4096)
    model = Model()
    pool = list({random_prefix(rng) for _ in range(120)})
    fixed = probe_addrs(pool, ANCHORS)
    seen: set[tuple[int, int]] = set()
    for step in range(300):
        present = model.routes
        op = rng.random()
        if present and op < 0.35:
            net, plen = rng.choice(sorted(present))
            t.delete(pfx(net, plen))
            model.delete(net, plen)
        elif present and op < 0.5:       # replace: same prefix, another next hop
            net, plen = rng.choice(sorted(present))
            nh = rng.choice(NEXTHOPS)
            t.add(pfx(net, plen), nh)
            model.add(net, plen, nh)
        else:
            net, plen = rng.choice(pool)
            nh = rng.choice(NEXTHOPS)
            t.add(pfx(net, plen), nh)
            model.add(net, plen, nh)
        seen.add((net, plen))
        addrs = probe_addrs([(net, plen)]) + fixed[step % 7::7]
        check(t, model.lookup, addrs, bulk=step % 5 == 0)
        st_ = t.stats()
        assert st_["tbl8_groups_used"] == expected_groups(model.routes), step
        assert st_["routes"] == len(t) == len(model.routes)
    check(t, model.lookup, fixed)
    for net, plen in sorted(model.routes, key=lambda _: rng.random()):
        t.delete((net, plen))
        model.delete(net, plen)
        check(t, model.lookup, probe_addrs([(net, plen)]), bulk=False)
    st_ = t.stats()
    assert st_["tbl8_groups_used"] == 0 and st_["nexthops"] == 0 and len(t) == 0
    assert st_["tbl8_groups_free"] == st_["tbl8_groups_hwm"]
    check(t, model.lookup, fixed)


# --- stateful: hypothesis picks the sequences (as tests/test_route.py does for IPv4) ---

@st.composite
def prefixes(draw):
    plen = draw(st.sampled_from([0, 1, 8, 16, 23, 24, 25, 31, 32, 33, 40, 47, 48, 49, 56,
                                 63, 64, 65, 96, 120, 121, 127, 128]) | st.integers(0, 128))
    if draw(st.booleans()):
        base = draw(st.sampled_from(ANCHORS))          # overlaps a lot
    else:
        base = draw(st.integers(0, ALL))
    return base & MASKS[plen], plen


class Route6Machine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.table = Route6Table(tbl8_max=2048)
        self.model: dict[tuple[int, int], dict] = {}
        self.gone: set[tuple[int, int]] = set()

    @rule(p=prefixes(), nh=st.sampled_from(NEXTHOPS))
    def add(self, p, nh) -> None:
        self.table.add(pfx(*p), nh)
        self.model[p] = nh
        self.gone.discard(p)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data) -> None:
        p = data.draw(st.sampled_from(sorted(self.model)))
        self.table.delete(pfx(*p))
        del self.model[p]
        self.gone.add(p)

    @rule(p=prefixes())
    def delete_missing(self, p) -> None:
        if p not in self.model:
            with pytest.raises(KeyError):
                self.table.delete(pfx(*p))

    @invariant()
    def lookups_agree(self) -> None:
        check(self.table, lambda a: scan_lookup(self.model, a),
              probe_addrs(set(self.model) | self.gone, ANCHORS))

    @invariant()
    def listing_agrees(self) -> None:
        assert len(self.table) == len(self.model)
        got = [(r["prefix"], r["via"], r["ifindex"], r["type"]) for r in self.table.list()]
        want = [(pfx(*p), *nh_tuple(nh)) for p, nh in sorted(self.model.items())]
        assert got == want
        st_ = self.table.stats()
        assert st_["tbl8_groups_used"] == expected_groups(self.model)   # collapse works
        assert st_["nexthops"] == len({nh_tuple(nh) for nh in self.model.values()})


Route6Machine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
test_route6_machine = Route6Machine.TestCase


# --- explicit cases ----------------------------------------------------------------

NESTED = ["::/0", "2001::/16", "2001:db8::/32", "2001:db8:100::/40", "2001:db8:100::/48",
          "2001:db8:100::/56", "2001:db8:100::/64", "2001:db8:100::/96", "2001:db8:100::/127",
          "2001:db8:100::1/128"]


def test_delete_restores_covering_routes() -> None:
    addr = "2001:db8:100::1"
    plen = lambda q: int(q.split("/")[1])   # noqa: E731
    orders = [list(reversed(NESTED)), NESTED[1:] + NESTED[:1], list(NESTED),
              [NESTED[i] for i in (3, 0, 9, 2, 5, 1, 8, 4, 7, 6)]]
    for order in orders:
        t = Route6Table()
        for i, p in enumerate(NESTED):
            t.add(p, via=f"fe80::{i + 1}", ifindex=i)
        left = list(NESTED)
        for p in order:
            t.delete(p)
            left.remove(p)
            want = max(left, key=plen) if left else None
            got = t.lookup(addr)
            assert (got and got["prefix"]) == want, (p, got)
            if want:
                assert got["via"] == f"fe80::{NESTED.index(want) + 1}"
            assert t.stats()["tbl8_groups_used"] == expected_groups(
                [route6.parse_prefix(q) for q in left]), (order, p)
        assert t.stats()["tbl8_groups_used"] == 0 and len(t) == 0
    t = Route6Table()
    for i, p in enumerate(NESTED):
        t.add(p, via=f"fe80::{i + 1}", ifindex=i)
    assert t.lookup(addr)["prefix"] == "2001:db8:100::1/128"
    assert t.lookup("2001:db8:100::")["prefix"] == "2001:db8:100::/127"
    assert t.lookup("2001:db8:100::2")["prefix"] == "2001:db8:100::/96"
    assert t.lookup("2001:db8:100::1:0:0")["prefix"] == "2001:db8:100::/64"
    assert t.lookup("2001:db8:100:0:1::")["prefix"] == "2001:db8:100::/64"
    assert t.lookup("2001:db8:100:1::")["prefix"] == "2001:db8:100::/56"
    assert t.lookup("2001:db8:100:100::")["prefix"] == "2001:db8:100::/48"
    assert t.lookup("2001:db8:101::")["prefix"] == "2001:db8:100::/40"
    assert t.lookup("2001:db8:200::")["prefix"] == "2001:db8::/32"
    assert t.lookup("2001:db9::")["prefix"] == "2001::/16"
    assert t.lookup("2002::")["prefix"] == "::/0"


def test_delete_short_under_long_keeps_long() -> None:
    t = Route6Table()
    t.add("2001:db8:1:2::1/128", type="local", ifindex=0)
    t.add("2001:db8::/32", ifindex=1)
    t.add("2001:db8:1::/48", type="blackhole")
    t.delete("2001:db8:1::/48")
    assert t.lookup("2001:db8:1:2::1")["type"] == "local"
    assert t.lookup("2001:db8:1:2::2")["prefix"] == "2001:db8::/32"
    t.delete("2001:db8::/32")
    assert t.lookup("2001:db8:1:2::2") is None
    assert t.lookup("2001:db8:1:2::1")["prefix"] == "2001:db8:1:2::1/128"
    assert t.stats()["tbl8_groups_used"] == 13
    t.delete("2001:db8:1:2::1/128")
    assert t.lookup("2001:db8:1:2::1") is None
    assert t.stats()["tbl8_groups_used"] == 0
    assert len(t) == 0 and t.list() == []


@pytest.mark.parametrize("plen", [0, 1, 7, 8, 15, 16, 23, 24, 25, 31, 32, 33, 39, 40, 41, 47, 48,
                                  49, 55, 56, 57, 63, 64, 65, 72, 80, 88, 96, 104, 112, 119,
                                  120, 121, 127, 128])
def test_prefix_ending_at_and_between_byte_boundaries(plen: int) -> None:
    """A prefix of each length under a covering /plen-1 route and above a
    /plen+1: the first and last addresses of the prefix and its neighbours
    on both sides match what they should; deleting each restores the rest."""
    base = ip("2001:db8:a5a5:5a5a:ffff:0:1234:8000") & MASKS[plen]
    t = Route6Table()
    t.add("::/0", type="unreachable")
    parent = (base & MASKS[plen - 1], plen - 1) if plen else None
    if parent:
        t.add(parent, ifindex=1)
    t.add((base, plen), via="fe80::2", ifindex=2)
    child = (base | (1 << (127 - plen)), plen + 1) if plen < 128 else None
    if child:
        t.add(child, ifindex=3)
    routes = {(0, 0): NEXTHOPS[5], (base, plen): {"via": "fe80::2", "ifindex": 2, "type": "forward"}}
    if parent:
        routes[parent] = {"via": None, "ifindex": 1, "type": "forward"}
    if child:
        routes[child] = {"via": None, "ifindex": 3, "type": "forward"}
    probes = probe_addrs(routes)
    check(t, lambda a: scan_lookup(routes, a), probes)
    assert t.stats()["tbl8_groups_used"] == expected_groups(routes)
    last = base | (~MASKS[plen] & ALL)
    assert t.lookup(base)["prefix"] == pfx(base, plen)
    if child is None:
        assert t.lookup(last)["prefix"] == pfx(base, plen)
    for key in [(base, plen), child, parent]:
        if key is None:
            continue
        t.delete(key)
        del routes[key]
        check(t, lambda a: scan_lookup(routes, a), probes)
        assert t.stats()["tbl8_groups_used"] == expected_groups(routes)
    assert t.stats()["tbl8_groups_used"] == 0


def test_group_counts_per_level() -> None:
    """Groups appear exactly for the byte spans that longer prefixes split."""
    t = Route6Table()
    used = lambda: t.stats()["tbl8_groups_used"]       # noqa: E731
    t.add("2001:d00::/24", ifindex=0)
    assert used() == 0                                   # fits the root
    t.add("2001:d00::/25", ifindex=0)
    assert used() == 1
    t.add("2001:db8::/32", ifindex=0)
    assert used() == 1                                   # same /24 group
    t.add("2001:db8::/33", ifindex=0)
    assert used() == 2
    t.add("2001:db8:0:1::/64", ifindex=1)               # the /40, /48, /56 spans split
    assert used() == 5
    t.add("2001:db8:0:1::1/128", ifindex=2)             # the /64 .. /120 spans: 8 more
    assert used() == 13
    t.add("2001:db8:0:1::2/128", ifindex=2)             # shares all of them
    assert used() == 13
    t.add("2001:db8:0:1::1:2/128", ifindex=2)           # differs in byte 13: /112, /120
    assert used() == 15
    t.delete("2001:db8:0:1::1/128")
    assert used() == 15
    t.delete("2001:db8:0:1::2/128")
    assert used() == 13
    t.delete("2001:db8:0:1::1:2/128")                  # collapse back to the /64's groups
    assert used() == 5
    assert t.lookup("2001:db8:0:1::1")["prefix"] == "2001:db8:0:1::/64"
    t.delete("2001:d00::/24")                          # nothing collapses: longer routes stay
    assert used() == 5
    assert t.lookup("2001:d00::1")["prefix"] == "2001:d00::/25"
    assert t.lookup("2001:d80::") is None
    assert t.lookup("2001:db8::1")["prefix"] == "2001:db8::/33"
    assert t.lookup("2001:db8:8000::1")["prefix"] == "2001:db8::/32"
    for p in ("2001:d00::/25", "2001:db8::/32", "2001:db8::/33"):
        t.delete(p)
    assert used() == 5                                   # the /64 alone: /24 .. /56 spans
    t.delete("2001:db8:0:1::/64")
    assert used() == 0


def test_groups_recycled_after_quarantine_and_memory_bounded() -> None:
    """Freed groups wait in a FIFO (64 at least) and are then reused: churn
    does not grow the groups ever handed out or the committed memory."""
    t = Route6Table(tbl8_max=1024)
    t.add("2001:db8::/32", ifindex=0)
    for i in range(200):
        t.add(f"2001:db8:{i:x}::1/128", ifindex=1)
        t.delete(f"2001:db8:{i:x}::1/128")
    st_ = t.stats()
    assert st_["tbl8_groups_used"] == 1
    # 12 groups per /128 (levels 2..13): fresh ones until 64 wait, then the oldest reused
    assert st_["tbl8_groups_hwm"] <= 1 + 64 + 12
    assert st_["tbl8_groups_free"] == st_["tbl8_groups_hwm"] - 1
    assert st_["tbl8_groups_recycled"] > 200 * 12 - 77        # all but the first 77 reused
    assert st_["tbl8_committed_bytes"] == 1024 * 1024          # one commit step (all 1024)
    assert t.lookup("2001:db8:5::1")["prefix"] == "2001:db8::/32"
    # with every fresh group used, freed ones are taken even below the quarantine
    t2 = Route6Table(tbl8_max=13)
    for i in range(5):
        t2.add("2001:db8::1/128", ifindex=0)
        assert t2.stats()["tbl8_groups_used"] == 13
        t2.delete("2001:db8::1/128")
    assert t2.stats()["tbl8_groups_hwm"] == 13


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_released_when_the_table_goes() -> None:
    gc.collect()
    rss0 = rss_bytes()
    t = Route6Table()
    t.add("default", type="blackhole")                 # all of tbl24 resident
    for i in range(2000):
        t.add(f"2001:{i:x}::/48", ifindex=1)            # ~4 000 groups, 4 MiB
    st_ = t.stats()
    assert st_["tbl24_resident"] >= 60 * 2**20
    assert st_["tbl8_groups_used"] == expected_groups(
        [route6.parse_prefix(f"2001:{i:x}::/48") for i in range(2000)]) > 4000
    assert rss_bytes() - rss0 > 60 * 2**20
    del t
    gc.collect()
    assert rss_bytes() - rss0 < 8 * 2**20


def test_replace_route_and_interned_nexthops() -> None:
    t = Route6Table()
    t.add("2001:db8::/32", via="fe80::1", ifindex=0)
    t.add("2001:db8:9::/48", via="fe80::1", ifindex=0)
    assert t.stats()["nexthops"] == 1
    t.add("2001:db8::/32", {"type": "prohibit"})
    assert len(t) == 2
    assert t.lookup("2001:db8:1::1")["type"] == "prohibit"
    assert t.lookup("2001:db8:9::1")["via"] == "fe80::1"
    assert t.get("2001:db8::/32")["type"] == "prohibit"
    t.add("2001:db8:9::/48", type="unreachable")
    assert t.stats()["nexthops"] == 2          # the gateway next hop was released
    g = t.generation
    t.add("2001:db8:9::/48", type="unreachable")   # same again: no-op
    assert t.generation == g
    assert t.lookup("2001:db8:9::1")["type"] == "unreachable"
    t.delete("2001:db8:9::/48")
    assert t.lookup("2001:db8:9::1")["type"] == "prohibit"
    assert t.stats()["tbl8_groups_used"] == 1           # the /32's, in its /24


def test_prefix_forms() -> None:
    t = Route6Table()
    t.add("default", type="blackhole")
    assert "::/0" in t and t.get("::/0")["type"] == "blackhole"
    t.add("::/0", type="unreachable")                  # the same route
    assert len(t) == 1 and t.lookup("1::")["type"] == "unreachable"
    t.add("2001:DB8:0:0::1", type="local", ifindex=3)  # bare address: /128, any spelling
    assert "2001:db8::1/128" in t
    t.add(ipaddress.IPv6Network("2001:db8::/32"), ifindex=1)
    t.add((ip("2001:db8:1::"), 48), ifindex=1)
    t.add(("2001:db8:2::", 48), ifindex=1)
    assert [r["prefix"] for r in t.list()] == ["::/0", "2001:db8::/32", "2001:db8::1/128",
                                               "2001:db8:1::/48", "2001:db8:2::/48"]
    for a in ("2001:db8::1", ip("2001:db8::1"), ipaddress.IPv6Address("2001:db8::1"),
              ipaddress.IPv6Address("2001:db8::1").packed):
        assert t.lookup(a)["prefix"] == "2001:db8::1/128"
    assert t.lookup("::ffff:10.0.0.1")["prefix"] == "::/0"   # IPv4-mapped is IPv6
    t.delete("default")
    assert t.lookup("1::") is None


def test_errors() -> None:
    t = Route6Table()
    with pytest.raises(ValueError, match=r"host bits set.*did you mean 2001:db8::/32\?"):
        t.add("2001:db8::1/32", ifindex=0)
    with pytest.raises(ValueError, match="host bits"):
        t.add("::1/0", ifindex=0)
    with pytest.raises(ValueError, match=r"0\.\.128"):
        t.add("2001:db8::/129", ifindex=0)
    for bad in ("2001:db8::/-1", "2001:db8::/", "2001:db8::/3x", "2001:db8::/ 32", "2001:db8::/+3"):
        with pytest.raises(ValueError, match="prefix length"):
            t.add(bad, ifindex=0)
    with pytest.raises(ValueError, match=r"0\.\.128"):
        t.add((0, 129), ifindex=0)
    with pytest.raises(ValueError, match="IPv4"):
        t.add("10.0.0.0/8", ifindex=0)
    with pytest.raises(ValueError, match="IPv4"):
        t.add("192.0.2.1", ifindex=0)
    for bad in ("2001:db8::g/32", "2001:db8:::/32", "", "1:2:3:4:5:6:7:8:9/128", "garbage"):
        with pytest.raises(ValueError, match="bad IPv6 address"):
            t.add(bad, ifindex=0)
    with pytest.raises(ValueError, match="zone index"):
        t.add("fe80::%eth0/64", ifindex=0)
    with pytest.raises(ValueError, match="via.*IPv4"):
        t.add("2001:db8::/32", via="192.0.2.1", ifindex=0)
    with pytest.raises(ValueError, match="bad IPv6 address"):
        t.add("2001:db8::/32", via="fe80::zz", ifindex=0)
    with pytest.raises(ValueError, match="zone index.*ifindex"):
        t.add("2001:db8::/32", via="fe80::1%eth0", ifindex=0)
    with pytest.raises(ValueError, match="multicast"):
        t.add("2001:db8::/32", via="ff02::1", ifindex=0)
    with pytest.raises(ValueError, match="needs an ifindex"):
        t.add("2001:db8::/32", via="fe80::1")
    with pytest.raises(ValueError, match="ifindex must be"):
        t.add("2001:db8::/32", ifindex="eth0")
    with pytest.raises(ValueError, match="ifindex must be"):
        t.add("2001:db8::/32", ifindex=-2)
    with pytest.raises(ValueError, match="type must be one of forward, local"):
        t.add("2001:db8::/32", type="bogus")
    with pytest.raises(ValueError, match="bad route type"):
        t.add("2001:db8::/32", type=99)
    with pytest.raises(ValueError, match="only forward routes have a gateway"):
        t.add("2001:db8::/32", via="fe80::1", type="blackhole")
    with pytest.raises(ValueError, match="unknown next-hop keys"):
        t.add("2001:db8::/32", {"via": "fe80::1", "ifindex": 0, "metric": 5})
    with pytest.raises(TypeError):
        t.add("2001:db8::/32", ("fe80::1", 0))
    with pytest.raises(ValueError, match="next hop's prefix"):
        t.add("2001:db8::/32", {"prefix": "2001:db8::/48", "ifindex": 0})
    with pytest.raises(KeyError):
        t.delete("2001:db8::/32")
    with pytest.raises(ValueError, match="IPv4"):
        t.lookup("10.0.0.1")
    with pytest.raises(ValueError, match="out of range"):
        t.lookup(1 << 128)
    with pytest.raises(ValueError, match="16 bytes"):
        t.lookup(b"\x20\x01")
    assert len(t) == 0 and t.stats()["nexthops"] == 0 and t.generation == 0


def test_list_round_trip() -> None:
    rng = random.Random(7)
    t = Route6Table()
    for _ in range(300):
        net, plen = random_prefix(rng)
        t.add((net, plen), rng.choice(NEXTHOPS))
    listed = t.list()
    assert listed == t.routes() and len(listed) == len(t)
    keys = [route6.parse_prefix(r["prefix"]) for r in listed]
    assert keys == sorted(keys)
    for r in listed:                      # canonical (RFC 5952) text
        net, plen = route6.parse_prefix(r["prefix"])
        assert r["prefix"] == f"{ipaddress.IPv6Address(net)}/{plen}"
    t2 = Route6Table()
    for r in reversed(listed):
        t2.add(r["prefix"], r)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "index"} for r in rs]   # noqa: E731
    assert strip(t2.list()) == strip(listed)
    probes = probe_addrs(keys[:80], ANCHORS)
    for a in probes:
        r1, r2 = t.lookup(a), t2.lookup(a)
        assert (r1 and strip([r1])) == (r2 and strip([r2]))
    assert t2.stats()["tbl8_groups_used"] == t.stats()["tbl8_groups_used"]


def test_tbl8_exhaustion_leaves_table_unchanged() -> None:
    t = Route6Table(tbl8_max=15)
    used = lambda: t.stats()["tbl8_groups_used"]       # noqa: E731
    t.add("2001:db8::/32", ifindex=0)                   # the /24's group
    t.add("2001:db8::1/128", ifindex=1)                 # + the /32 .. /120 spans: 12
    assert used() == 13
    t.add("2001:db8::2/128", ifindex=1)                 # same chain: no new group
    t.add("2001:db8::1:1/128", ifindex=1)               # differs in byte 13: 2 new
    assert used() == 15
    before = t.list()
    gen = t.generation
    with pytest.raises(OverflowError, match="tbl8 groups"):
        t.add("2001:db8:0:1::1/128", ifindex=2)         # would need 8
    with pytest.raises(OverflowError, match="tbl8 groups"):
        t.add("2001:db9::/48", ifindex=2)               # would need 2
    with pytest.raises(OverflowError, match="tbl8 groups"):
        t.add("2001:db8::100/128", ifindex=2)           # would need 1 (the /120 span)
    assert t.list() == before and t.generation == gen
    assert "2001:db8:0:1::1/128" not in t and len(t) == 4
    assert t.lookup("2001:db8:0:1::1")["prefix"] == "2001:db8::/32"
    assert used() == 15 and t.stats()["nexthops"] == 2
    t.add("2001:db8::1:0:0:0/80", ifindex=2)            # ends in a group on ::1's path
    t.add("2001:db8::1:2/128", ifindex=2)               # needs none either: fits a full table
    assert t.lookup("2001:db8::1:2")["ifindex"] == 2
    t.add("2001:db9::/32", ifindex=2)                   # a leaf in the /24's group
    t.delete("2001:db8::1/128")
    assert used() == 15
    t.delete("2001:db8::2/128")                         # frees the /112, /120 spans of ::0
    assert used() == 13
    t.delete("2001:db8::1:1/128")
    t.delete("2001:db8::1:2/128")
    assert used() == 7                                   # the /80's: /24 .. /72 spans
    t.delete("2001:db8::1:0:0:0/80")
    assert used() == 1
    t.add("2001:db8:0:1::1/128", ifindex=2)
    assert t.lookup("2001:db8:0:1::1")["prefix"] == "2001:db8:0:1::1/128"
    assert t.lookup("2001:db8::1")["prefix"] == "2001:db8::/32"
    assert used() == 13


def test_nexthop_exhaustion_and_fifo_recycling() -> None:
    t = Route6Table(nexthops=2)
    t.add("2001:db8::/32", ifindex=0)
    t.add("2001:db9::/32", ifindex=1)
    with pytest.raises(OverflowError, match="next-hop table full"):
        t.add("2001:dba::/32", ifindex=2)
    assert len(t) == 2 and t.stats()["tbl8_groups_used"] == 1   # 2001:db8/db9 share a /24
    t.add("2001:dba::/32", ifindex=1)          # shares a next hop
    t.delete("2001:db8::/32")
    t.add("2001:dbb::/32", ifindex=5)          # reuses the freed slot
    assert t.lookup("2001:dbb::1")["ifindex"] == 5
    assert t.lookup("2001:db9::1")["ifindex"] == 1
    t = Route6Table(nexthops=1000)
    for i in range(300):
        t.add("2001:db8::/32", ifindex=i)      # each replacement frees the previous next hop
    assert t.stats()["nexthops"] == 1
    assert t.lookup("2001:db8::1")["ifindex"] == 299
    with pytest.raises(IndexError):            # slots reused oldest first once 64 wait
        t.nexthop(100)
    assert t.nexthop(t.lookup_index("2001:db8::1"))["ifindex"] == 299


def test_generation_bumps() -> None:
    t = Route6Table()
    g = t.generation
    t.add("2001:db8::/32", ifindex=0)
    assert t.generation > g
    g = t.generation
    t.delete("2001:db8::/32")
    assert t.generation > g


def test_constructor_limits() -> None:
    st_ = Route6Table().stats()
    assert st_["tbl8_groups_max"] == route6.DEFAULT_TBL8 and st_["nexthops_max"] == route6.DEFAULT_NEXTHOPS
    with pytest.raises(MemoryError):
        Route6Table(tbl8_max=route6.MAX_INDEX + 2)


# --- lookups without the GIL racing updates ----------------------------------------------

@pytest.mark.parametrize("bulk", [False, True], ids=["rt6_lookup", "rt6_lookup_bulk"])
def test_nogil_lookups_race_updates(bulk: bool) -> None:
    """A nogil reader hammers an address under a /48 while this thread hangs
    chains of groups below it and collapses them again (a /128 and a /64 on
    its path: groups created, published, collapsed, freed and recycled FIFO,
    churned further by /128s elsewhere) and replaces the /128: every result
    must be one of the next hops legitimately routing that address."""
    t = Route6Table(tbl8_max=600)
    t.add("2001:db8::/32", ifindex=9)
    t.add("2001:db8:1::/48", ifindex=0)
    base = t.lookup_index("2001:db8:1::1")
    result: dict[int, int] = {}

    def reader() -> None:
        result.update(t.lookup_histogram(["2001:db8:1::1", "2001:db8:1:0:1::1"], 30_000_000,
                                         bulk=bulk))

    th = threading.Thread(target=reader)
    th.start()
    allowed = {base}
    i = 0
    while th.is_alive():
        for k in range(6):                  # 11 groups each: freed groups cycle through the FIFO
            t.add(f"2001:db8:{0x100 + k:x}::1/128", ifindex=7)
        t.add("2001:db8:1::/64", ifindex=4)
        allowed.add(t.lookup_index("2001:db8:1::1"))
        t.add("2001:db8:1::1/128", ifindex=1 + i % 3)
        allowed.add(t.lookup_index("2001:db8:1::1"))
        t.delete("2001:db8:1::/64")
        t.delete("2001:db8:1::1/128")
        for k in range(6):
            t.delete(f"2001:db8:{0x100 + k:x}::1/128")
        i += 1
    th.join()
    assert i > 10
    assert sum(result.values()) >= 30_000_000
    assert set(result) <= allowed, (result, allowed)
    assert -1 not in result
    st_ = t.stats()
    assert st_["tbl8_groups_used"] == 3 and st_["tbl8_groups_hwm"] < 200   # recycled, not leaked
