"""forwarder.route: DIR-24-8 longest-prefix match against a naive model."""
import random
import socket
import struct
import threading

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from forwarder import route  # noqa: E402
RouteTable = route.RouteTable

MASKS = [0] + [(0xFFFFFFFF << (32 - l)) & 0xFFFFFFFF for l in range(1, 33)]


def ip2int(s):
    return struct.unpack("!I", socket.inet_aton(s))[0]


def int2ip(a):
    return socket.inet_ntoa(struct.pack("!I", a))


def pfx(net, plen):
    return f"{int2ip(net)}/{plen}"


NEXTHOPS = [
    {"via": "10.0.0.1", "ifindex": 0, "type": "forward"},
    {"via": "10.0.1.1", "ifindex": 1, "type": "forward"},
    {"via": None, "ifindex": 2, "type": "forward"},
    {"via": None, "ifindex": 1, "type": "local"},
    {"via": None, "ifindex": -1, "type": "blackhole"},
    {"via": None, "ifindex": -1, "type": "unreachable"},
    {"via": None, "ifindex": -1, "type": "prohibit"},
]


class Model:
    """Routes in a dict; longest match by scanning every route."""

    def __init__(self):
        self.routes = {}            # (net, plen) -> nexthop dict

    def lookup(self, a):
        best = None
        for (net, plen), nh in self.routes.items():
            if a & MASKS[plen] == net and (best is None or plen > best[0][1]):
                best = ((net, plen), nh)
        return best


def check(table, model, addrs):
    for a in addrs:
        got = table.lookup(a)
        want = model.lookup(a)
        if want is None:
            assert got is None, (int2ip(a), got)
            assert table.lookup_index(a) == -1
        else:
            (net, plen), nh = want
            assert got is not None, (int2ip(a), pfx(net, plen))
            assert got["prefix"] == pfx(net, plen), int2ip(a)
            assert (got["via"], got["ifindex"], got["type"]) == (nh["via"], nh["ifindex"], nh["type"])
            assert table.lookup_index(a) == got["index"]


def probe_addrs(prefixes, extra=()):
    """Boundaries of every prefix (first, last, just outside) plus extras."""
    out = set(extra)
    for net, plen in prefixes:
        last = net | (~MASKS[plen] & 0xFFFFFFFF)
        out.update({net, last, (net - 1) & 0xFFFFFFFF, (last + 1) & 0xFFFFFFFF,
                    net + ((last - net) >> 1)})
    return sorted(out)


# --- stateful: random add / replace / delete sequences, overlapping /0../32 -------

ANCHORS = [ip2int(a) for a in ("10.1.2.3", "10.1.2.200", "10.1.130.7", "10.200.0.1",
                               "192.168.1.77", "0.0.0.0", "255.255.255.255", "127.0.0.1")]


@st.composite
def prefixes(draw):
    plen = draw(st.integers(0, 32))
    if draw(st.booleans()):
        base = draw(st.sampled_from(ANCHORS))          # overlaps a lot
    else:
        base = draw(st.integers(0, 0xFFFFFFFF))
    return base & MASKS[plen], plen


class RouteMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.table = RouteTable(tbl8_max=512)
        self.model = Model()
        self.gone = set()

    @rule(p=prefixes(), nh=st.sampled_from(NEXTHOPS))
    def add(self, p, nh):
        self.table.add(pfx(*p), nh)
        self.model.routes[p] = nh
        self.gone.discard(p)

    @precondition(lambda self: self.model.routes)
    @rule(data=st.data())
    def delete(self, data):
        p = data.draw(st.sampled_from(sorted(self.model.routes)))
        self.table.delete(pfx(*p))
        del self.model.routes[p]
        self.gone.add(p)

    @rule(p=prefixes())
    def delete_missing(self, p):
        if p not in self.model.routes:
            with pytest.raises(KeyError):
                self.table.delete(pfx(*p))

    @invariant()
    def lookups_agree(self):
        check(self.table, self.model, probe_addrs(set(self.model.routes) | self.gone, ANCHORS))

    @invariant()
    def listing_agrees(self):
        assert len(self.table) == len(self.model.routes)
        got = [(r["prefix"], r["via"], r["ifindex"], r["type"]) for r in self.table.routes()]
        want = [(pfx(*p), nh["via"], nh["ifindex"], nh["type"]) for p, nh in sorted(self.model.routes.items())]
        assert got == want
        st_ = self.table.stats()
        # one tbl8 group per /24 holding a longer prefix, no more (collapse works)
        assert st_["tbl8_groups_used"] == len({net >> 8 for net, plen in self.model.routes if plen > 24})
        # next hops are interned and released
        assert st_["nexthops"] == len({tuple(nh.values()) for nh in self.model.routes.values()})


RouteMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_route_machine = RouteMachine.TestCase


# --- explicit cases ----------------------------------------------------------------

def test_delete_restores_covering_routes():
    t = RouteTable()
    nested = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.0/25",
              "10.1.2.0/28", "10.1.2.3/32"]
    for i, p in enumerate(nested):
        t.add(p, via=f"192.0.2.{i + 1}", ifindex=i)
    addr = "10.1.2.3"
    for orders in (list(reversed(nested)), nested[1:] + nested[:1], [nested[i] for i in (3, 0, 6, 2, 5, 1, 4)]):
        t2 = RouteTable()
        for i, p in enumerate(nested):
            t2.add(p, via=f"192.0.2.{i + 1}", ifindex=i)
        left = list(nested)
        for p in orders:
            t2.delete(p)
            left.remove(p)
            want = max(left, key=lambda q: int(q.split("/")[1])) if left else None
            got = t2.lookup(addr)
            assert (got and got["prefix"]) == want, (p, got)
        assert t2.stats()["tbl8_groups_used"] == 0
    assert t.lookup(addr)["prefix"] == "10.1.2.3/32"
    assert t.lookup("10.1.2.4")["prefix"] == "10.1.2.0/28"
    assert t.lookup("10.1.2.100")["prefix"] == "10.1.2.0/25"
    assert t.lookup("10.1.2.200")["prefix"] == "10.1.2.0/24"
    assert t.lookup("10.1.3.1")["prefix"] == "10.1.0.0/16"
    assert t.lookup("10.2.0.0")["prefix"] == "10.0.0.0/8"
    assert t.lookup("11.0.0.0")["prefix"] == "0.0.0.0/0"


def test_delete_short_under_long_keeps_long():
    t = RouteTable()
    t.add("10.1.2.3/32", type="local", ifindex=0)
    t.add("10.0.0.0/8", ifindex=1)
    t.add("10.1.2.0/24", type="blackhole")
    t.delete("10.1.2.0/24")
    assert t.lookup("10.1.2.3")["type"] == "local"
    assert t.lookup("10.1.2.4")["prefix"] == "10.0.0.0/8"
    t.delete("10.0.0.0/8")
    assert t.lookup("10.1.2.4") is None
    assert t.lookup("10.1.2.3")["prefix"] == "10.1.2.3/32"
    t.delete("10.1.2.3/32")
    assert t.lookup("10.1.2.3") is None
    assert t.stats()["tbl8_groups_used"] == 0
    assert len(t) == 0 and t.routes() == []


def test_replace_route():
    t = RouteTable()
    t.add("10.0.0.0/8", via="10.255.0.1", ifindex=0)
    t.add("10.9.0.0/16", via="10.255.0.1", ifindex=0)
    assert t.stats()["nexthops"] == 1
    t.add("10.0.0.0/8", {"type": "prohibit"})
    assert len(t) == 2
    assert t.lookup("10.1.1.1")["type"] == "prohibit"
    assert t.lookup("10.9.1.1")["via"] == "10.255.0.1"
    assert t.get("10.0.0.0/8")["type"] == "prohibit"
    t.add("10.9.0.0/16", type="unreachable")
    assert t.stats()["nexthops"] == 2          # the gateway next hop was released
    t.add("10.9.0.0/16", type="unreachable")   # same again: no-op
    assert t.lookup("10.9.1.1")["type"] == "unreachable"
    t.delete("10.9.0.0/16")
    assert t.lookup("10.9.1.1")["type"] == "prohibit"


def test_prefix_validation_and_errors():
    t = RouteTable()
    with pytest.raises(ValueError, match="host bits"):
        t.add("10.1.2.3/24", ifindex=0)
    with pytest.raises(ValueError):
        t.add("10.1.2.0/33", ifindex=0)
    with pytest.raises(ValueError):
        t.add("10.1.2/24", ifindex=0)
    with pytest.raises(ValueError, match="ifindex"):
        t.add("10.0.0.0/8", via="1.2.3.4")
    with pytest.raises(ValueError, match="type"):
        t.add("10.0.0.0/8", type="bogus")
    with pytest.raises(ValueError, match="gateway"):
        t.add("10.0.0.0/8", via="1.2.3.4", type="blackhole")
    with pytest.raises(KeyError):
        t.delete("10.0.0.0/8")
    t.add("192.0.2.1", type="local", ifindex=3)        # bare address: /32
    assert "192.0.2.1/32" in t
    assert t.lookup(ip2int("192.0.2.1"))["type"] == "local"
    assert len(t) == 1


def test_tbl8_exhaustion_leaves_table_unchanged():
    t = RouteTable(tbl8_max=2)
    t.add("10.0.0.0/8", ifindex=0)
    t.add("10.0.0.1/32", ifindex=1)
    t.add("10.0.1.1/32", ifindex=1)
    t.add("10.0.1.2/32", ifindex=1)       # same /24: no new group
    with pytest.raises(OverflowError):
        t.add("10.0.2.1/32", ifindex=1)
    assert "10.0.2.1/32" not in t and len(t) == 4
    assert t.lookup("10.0.2.1")["prefix"] == "10.0.0.0/8"
    t.delete("10.0.0.1/32")                # frees a group
    t.add("10.0.2.1/32", ifindex=1)
    assert t.lookup("10.0.2.1")["prefix"] == "10.0.2.1/32"
    assert t.lookup("10.0.0.1")["prefix"] == "10.0.0.0/8"


def test_nexthop_exhaustion():
    t = RouteTable(nexthops=2)
    t.add("10.0.0.0/8", ifindex=0)
    t.add("11.0.0.0/8", ifindex=1)
    with pytest.raises(OverflowError):
        t.add("12.0.0.0/8", ifindex=2)
    assert len(t) == 2
    t.add("12.0.0.0/8", ifindex=1)         # shares a next hop
    t.delete("10.0.0.0/8")
    t.add("13.0.0.0/8", ifindex=5)         # reuses the freed slot
    assert t.lookup("13.1.1.1")["ifindex"] == 5
    assert t.lookup("11.1.1.1")["ifindex"] == 1


def test_nexthop_slots_recycled_fifo():
    t = RouteTable(nexthops=1000)
    for i in range(300):
        t.add("10.0.0.0/8", ifindex=i)     # each replacement frees the previous next hop
    st_ = t.stats()
    assert st_["nexthops"] == 1
    assert t.lookup("10.0.0.1")["ifindex"] == 299
    # freed slots are reused (oldest first) once 64 wait, so slots ever used stay bounded
    with pytest.raises(IndexError):
        t.nexthop(100)
    assert t.nexthop(t.lookup_index("10.0.0.1"))["ifindex"] == 299


def test_generation_bumps():
    t = RouteTable()
    g = t.generation
    t.add("10.0.0.0/8", ifindex=0)
    assert t.generation > g


# --- 100 000 random routes ---------------------------------------------------------

def dict_model_lookup(by_len, a):
    for plen in range(32, -1, -1):
        nh = by_len[plen].get(a & MASKS[plen])
        if nh is not None:
            return plen, nh
    return None


def test_100k_random_routes():
    rng = random.Random(100_000)
    t = RouteTable()
    by_len = [dict() for _ in range(33)]
    routes = {}
    while len(routes) < 100_000:
        plen = rng.randint(0, 32)
        net = rng.getrandbits(32) & MASKS[plen]
        routes[(net, plen)] = rng.randrange(len(NEXTHOPS))
    for (net, plen), nh in routes.items():
        t.add((net, plen), NEXTHOPS[nh])
        by_len[plen][net] = nh
    assert len(t) == 100_000

    def spot_check(n):
        probes = [rng.getrandbits(32) for _ in range(n)]
        keys = list(routes)
        for _ in range(n):
            net, plen = keys[rng.randrange(len(keys))]
            probes.append(net | (rng.getrandbits(32) & ~MASKS[plen] & 0xFFFFFFFF))
        for a in probes:
            want = dict_model_lookup(by_len, a)
            got = t.lookup(a)
            if want is None:
                assert got is None
            else:
                plen, nh = want
                assert got["prefix"] == pfx(a & MASKS[plen], plen)
                e = NEXTHOPS[nh]
                assert (got["via"], got["ifindex"], got["type"]) == (e["via"], e["ifindex"], e["type"])

    spot_check(10_000)
    assert t.stats()["tbl8_groups_used"] == len({net >> 8 for net, plen in routes if plen > 24})
    # delete half (covering routes must come back), check again
    for key in rng.sample(sorted(routes), 50_000):
        t.delete(key)
        del routes[key]
        del by_len[key[1]][key[0]]
    assert len(t) == 50_000
    spot_check(10_000)
    assert t.stats()["tbl8_groups_used"] == len({net >> 8 for net, plen in routes if plen > 24})
    bench = t.lookup_many_bench(2_000_000)
    assert bench["lookups_per_s"] > 1e6


# --- lookups without the GIL racing updates ----------------------------------------------

def test_nogil_lookups_race_updates():
    """A nogil reader hammers addresses of a /24 while this thread splits and
    collapses it (tbl8 group created, published, collapsed, recycled) and
    replaces the /32: every result must be one of the legitimate next hops."""
    t = RouteTable(tbl8_max=300)
    t.add("10.1.2.0/24", ifindex=0)
    t.add("10.1.3.0/24", ifindex=5)
    base = t.lookup_index("10.1.2.1")
    other = t.lookup_index("10.1.3.9")
    result = {}

    def reader():
        result.update(t.lookup_histogram(["10.1.2.1", "10.1.2.9", "10.1.3.9"], 100_000_000))

    th = threading.Thread(target=reader)
    th.start()
    allowed = {base, other}
    i = 0
    while th.is_alive():
        # split/collapse several /24s so freed groups are recycled FIFO
        for k in range(8):
            t.add(f"10.1.{10 + k}.1/32", ifindex=9)
        t.add("10.1.2.1/32", ifindex=1 + i % 3)
        allowed.add(t.lookup_index("10.1.2.1"))
        t.delete("10.1.2.1/32")
        for k in range(8):
            t.delete(f"10.1.{10 + k}.1/32")
        i += 1
    th.join()
    assert i > 10
    assert set(result) <= allowed, (result, allowed)
    assert -1 not in result
