"""Multipath next hops of both route tables (route.pxd: next-hop groups): the
slot rows weights make, the member a flow hash picks, the sharing and release
of members, and what is refused."""
from __future__ import annotations

import pytest

from forwarder.route import NHG_SLOTS, RouteTable, nhg_slots
from forwarder.route6 import Route6Table

FAMILIES = {
    "ipv4": (RouteTable, "10.0.0.0/8", "10.1.2.3", ("192.0.2.1", "192.0.2.2", "192.0.2.3")),
    "ipv6": (Route6Table, "2001:db8::/32", "2001:db8::1",
             ("fe80::1", "2001:db8:2::2", "2001:db8:3::2")),
}


@pytest.fixture(params=list(FAMILIES))
def fam(request):
    return FAMILIES[request.param]


def paths(gws, weights=None):
    return {"paths": [{"via": gw, "ifindex": k + 1, **({"weight": weights[k]} if weights else {})}
                      for k, gw in enumerate(gws)]}


def test_a_row_has_a_run_per_member_in_proportion_to_its_weight() -> None:
    assert nhg_slots([1, 1]) == [0, 1]
    assert nhg_slots([3, 1]) == [0, 0, 0, 1]
    assert nhg_slots([2, 4]) == [0, 1, 1]                      # divided by the gcd
    assert nhg_slots([256, 128]) == [0, 0, 1]
    wide = nhg_slots([100, 1, 1])                              # scaled to 64 slots
    assert len(wide) == NHG_SLOTS and wide == sorted(wide)
    assert wide.count(1) == wide.count(2) == 1
    assert nhg_slots([1] * NHG_SLOTS) == list(range(NHG_SLOTS))
    with pytest.raises(ValueError, match="1 to 64 next hops"):
        nhg_slots([1] * (NHG_SLOTS + 1))


def test_hashes_pick_members_in_proportion_and_each_hash_always_the_same(fam) -> None:
    cls, prefix, addr, gws = fam
    t = cls()
    t.add(prefix, paths(gws, [3, 1, 4]))
    step = 1 << 20                                             # 4096 evenly spaced hashes
    picks = [t.lookup_flow(addr, h)["via"] for h in range(0, 1 << 32, step)]
    assert [picks.count(g) for g in gws] == [1536, 512, 2048]  # exactly 3 : 1 : 4
    assert picks == [t.lookup_flow(addr, h)["via"] for h in range(0, 1 << 32, step)]
    # runs are contiguous: the member changes only twice over the hash space
    assert sum(1 for a, b in zip(picks, picks[1:]) if a != b) == 2
    r = t.lookup(addr)
    assert r["type"] == "multipath" and [(p["via"], p["weight"]) for p in r["paths"]] == \
        list(zip(gws, [3, 1, 4]))


def test_the_routers_own_lookup_resolves_a_group_to_a_member(fam) -> None:
    cls, prefix, addr, gws = fam
    t = cls()
    t.add(prefix, paths(gws[:2]))
    nh = t.lookup_nexthop(addr)
    assert nh["type"] == "forward" and nh["via"] in gws[:2]
    assert nh == t.lookup_nexthop(addr)


def test_groups_share_members_and_give_them_back(fam) -> None:
    cls, prefix, _, gws = fam
    t = cls()
    other = "11.0.0.0/8" if cls is RouteTable else "2001:db9::/32"
    t.add(other, {"via": gws[0], "ifindex": 1})
    t.add(prefix, paths(gws[:2]))
    assert t.stats()["nexthops"] == 3                          # gws[0] shared, gws[1], the group
    t.add("12.0.0.0/8" if cls is RouteTable else "2001:dba::/32", paths(gws[:2]))
    assert t.stats()["nexthops"] == 3                          # the same group again
    assert t.get(prefix)["index"] == t.get("12.0.0.0/8" if cls is RouteTable
                                           else "2001:dba::/32")["index"]
    t.add(prefix, {"via": gws[1], "ifindex": 2})               # replaced by a plain route
    t.delete("12.0.0.0/8" if cls is RouteTable else "2001:dba::/32")
    assert t.stats()["nexthops"] == 2                          # the group went, its members stay used
    t.delete(prefix)
    t.delete(other)
    assert t.stats()["nexthops"] == 0


def test_one_path_is_a_plain_route(fam) -> None:
    cls, prefix, _, gws = fam
    t = cls()
    t.add(prefix, paths(gws[:1], [5]))
    r = t.get(prefix)
    assert r["type"] == "forward" and r["via"] == gws[0] and "paths" not in r


def test_a_group_that_does_not_fit_leaves_the_table_as_it_was(fam) -> None:
    cls, prefix, _, gws = fam
    t = cls(nexthops=4)
    t.add(prefix, paths(gws))                                  # 3 members + the group: full
    with pytest.raises(OverflowError, match="next-hop table full"):
        t.add(prefix, paths(gws, [1, 2, 3]))                   # a new group needs a fifth slot
    assert t.stats()["nexthops"] == 4
    assert [p["weight"] for p in t.get(prefix)["paths"]] == [1, 1, 1]


@pytest.mark.parametrize("bad,why", [
    ({"paths": []}, "non-empty list"),
    ({"paths": [{"via": None, "weight": 1}]}, "needs an ifindex"),
    ({"paths": [{"ifindex": 1, "weight": 0}]}, r"weight is 1\.\.256"),
    ({"paths": [{"ifindex": 1, "weight": 257}]}, r"weight is 1\.\.256"),
    ({"paths": [{"ifindex": 1, "mtu": 1}]}, "a path is a dict"),
    ({"type": "blackhole", "paths": [{"ifindex": 1}]}, "a blackhole route has no paths"),
    ({"ifindex": 3, "paths": [{"ifindex": 1}]}, "gateways are in its paths"),
])
def test_bad_paths_are_refused_and_change_nothing(fam, bad, why) -> None:
    cls, prefix, _, _ = fam
    t = cls()
    with pytest.raises(ValueError, match=why):
        t.add(prefix, bad)
    assert len(t) == 0 and t.stats()["nexthops"] == 0


def test_an_ipv6_multipath_route_read_back_re_creates_itself() -> None:
    t, u = Route6Table(), Route6Table()
    t.add("2001:db8::/32", paths(FAMILIES["ipv6"][3], [1, 2, 1]))
    r = t.get("2001:db8::/32")
    u.add(r["prefix"], r)
    assert u.get("2001:db8::/32") == r
