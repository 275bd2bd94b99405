"""Multipath routes (ECMP) and next-hop objects, from the control plane's kernel
to the wire.

A routing daemon installs an ECMP route as one route with several next hops
(RTA_MULTIPATH), or, as FRR does by default, as a route naming a next-hop
object (RTA_NH_ID) that may be a weighted group (ip-nexthop(8)).  The router
imports both into one multipath next hop and picks a member per flow
(route.pxd: next-hop groups).  Here the routes are made in the control plane's
kernel as a daemon makes them; h1 sends UDP flows through the router towards
a prefix reached over h2 and h3, and what arrives on h2's and h3's links is
read off the wire: which flow took which path.
"""
from __future__ import annotations

import socket
import subprocess
import time
from typing import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from tests.routerlab import RunningRouter, kroute, routes, start_router, wait_route
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401
from tests.wire import sniffers, to_router
from forwarder import netns as nn

pytestmark = requires_netns

RTPROT_BGP = 186
FLOWS = 64              # distinct source ports per run
DST4, DST6 = "198.51.100.1", "2001:db8:ff::1"


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, n_hosts=3, ipv6=True)


@pytest.fixture(scope="module")
def cp(topology) -> str:  # noqa: F811
    return topology.netns("cp")


@pytest.fixture(scope="module")
def router(lab: RouterLab, cp: str, tmp_path_factory) -> Iterator[RunningRouter]:
    r = start_router(lab, tmp_path_factory.mktemp("ecmp"), control_plane=cp)
    for k in (2, 3):                        # the neighbours resolved before any flow is counted
        for addr in (f"10.{k}.0.2", f"2001:db8:{k}::2"):
            assert lab.ping("h1", addr, count=1, wait=2).returncode == 0, addr
    yield r
    code, out = r.stop()
    assert code == 0, out


def ip_nexthop(cp: str, *args: str) -> None:
    """ip-nexthop(8) in the control plane (pyroute2 0.9 has no next-hop objects)."""
    subprocess.run(["ip", "-n", cp, "nexthop", *args], check=True,
                   capture_output=True, timeout=10)


def multipath(cp: str, dst: str, hops: list[tuple[str, str, int]]) -> None:
    """An ECMP route as a daemon adds it: one RTM_NEWROUTE with RTA_MULTIPATH."""
    with nn.iproute(cp) as ipr:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        ipr.route("replace", dst=dst, family=family, proto=RTPROT_BGP,
                  multipath=[{"gateway": gw, "oif": ipr.link_lookup(ifname=dev)[0],
                              "hops": weight - 1} for gw, dev, weight in hops])


def paths_taken(lab: RouterLab, dst: str, sports: list[int]) -> dict[int, set[str]]:
    """Send one UDP datagram per source port from h1 to dst; which of h2 and
    h3 each source port reached (read off their links)."""
    ip = IPv6(src="2001:db8:1::2", dst=dst) if ":" in dst else IP(src="10.1.0.2", dst=dst)
    seen: dict[int, set[str]] = {p: set() for p in sports}
    with sniffers(lab, "h1", "h2", "h3") as (s1, s2, s3):
        for p in sports:
            s1.send(to_router(lab, "h1", ip / UDP(sport=p, dport=9) / b"ecmp"))
        got, deadline = 0, time.monotonic() + 2.0
        # both links read in turns until every datagram is in (or the deadline:
        # then the assertions say which flows went missing)
        while got < len(sports) and time.monotonic() < deadline:
            for name, s in (("h2", s2), ("h3", s3)):
                for pkt in s.collect(lambda f: UDP in f and f[UDP].dport == 9 and
                                     f[UDP].sport in seen and f[ip.__class__].dst == dst,
                                     timeout=0.05, want=len(sports) - got):
                    seen[pkt[UDP].sport].add(name)
                    got += 1
    return seen


def split(seen: dict[int, set[str]]) -> dict[str, int]:
    return {h: sum(1 for s in seen.values() if s == {h}) for h in ("h2", "h3")}


@pytest.mark.parametrize("dst,prefix,gws", [
    (DST4, "198.51.100.0/24", ("10.2.0.2", "10.3.0.2")),
    (DST6, "2001:db8:ff::/48", ("2001:db8:2::2", "2001:db8:3::2")),
], ids=["ipv4", "ipv6"])
def test_an_ecmp_route_spreads_flows_and_keeps_each_on_one_path(
        lab: RouterLab, cp: str, router: RunningRouter, dst: str, prefix: str,
        gws: tuple[str, str]) -> None:
    multipath(cp, prefix, [(gws[0], "tap2", 1), (gws[1], "tap3", 1)])
    try:
        r = router.wait_for(lambda: (routes(router).get(prefix) or {}).get("paths"), 3,
                            what=f"{prefix} multipath in the dataplane") and routes(router)[prefix]
        assert r["type"] == "multipath" and r["origin"] == "bgp"
        assert [(p["via"], p["interface"], p["weight"]) for p in r["paths"]] == \
            [(gws[0], "tap2", 1), (gws[1], "tap3", 1)]
        text = router.cli("route", "list").stdout
        assert f"{gws[1]:<17}tap3" in text, text
        sports = list(range(20000, 20000 + FLOWS))
        first = paths_taken(lab, dst, sports)
        assert all(len(s) == 1 for s in first.values()), first   # every flow arrived, once
        n = split(first)
        # fair hashing: fewer than 16 of 64 on one side has probability < 1e-4
        assert n["h2"] >= 16 and n["h3"] >= 16, n
        again = paths_taken(lab, dst, sports)
        assert again == first                   # a flow keeps its path
    finally:
        kroute(cp, "del", prefix)
    wait_route(router, prefix, present=False)


def test_weights_share_the_flows_in_proportion(lab: RouterLab, cp: str,
                                               router: RunningRouter) -> None:
    prefix = "198.51.100.0/24"
    multipath(cp, prefix, [("10.2.0.2", "tap2", 3), ("10.3.0.2", "tap3", 1)])
    try:
        wait_route(router, prefix)
        router.wait_for(lambda: [p["weight"] for p in routes(router)[prefix].get("paths", [])]
                        == [3, 1], 3, what="weights 3 and 1")
        n = split(paths_taken(lab, DST4, list(range(21000, 21000 + FLOWS))))
        assert n["h2"] + n["h3"] == FLOWS
        # expected 48 : 16; h2 below 36 (p = 0.75) has probability < 1e-3
        assert n["h2"] >= 36 and n["h3"] >= 4, n
    finally:
        kroute(cp, "del", prefix)
    wait_route(router, prefix, present=False)


def test_one_next_hop_of_an_ipv6_ecmp_route_deleted_leaves_the_other(
        lab: RouterLab, cp: str, router: RunningRouter) -> None:
    """IPv6 keeps an ECMP route as sibling routes, and deleting one sends a
    delete for that sibling alone: the other must stay in the dataplane."""
    prefix = "2001:db8:ff::/48"
    multipath(cp, prefix, [("2001:db8:2::2", "tap2", 1), ("2001:db8:3::2", "tap3", 1)])
    try:
        router.wait_for(lambda: len((routes(router).get(prefix) or {}).get("paths", [])) == 2,
                        3, what=f"{prefix} over two paths")
        kroute(cp, "del", prefix, gateway="2001:db8:3::2", oif="tap3", proto=RTPROT_BGP)
        router.wait_for(lambda: (routes(router).get(prefix) or {}).get("type") == "forward",
                        3, what=f"{prefix} over the one path left")
        r = routes(router)[prefix]
        assert (r["via"], r["interface"]) == ("2001:db8:2::2", "tap2"), r
        seen = paths_taken(lab, DST6, list(range(22000, 22016)))
        assert all(s == {"h2"} for s in seen.values()), seen
    finally:
        kroute(cp, "del", prefix)
    wait_route(router, prefix, present=False)


def test_routes_over_nexthop_objects_follow_the_objects(lab: RouterLab, cp: str,
                                                        router: RunningRouter) -> None:
    """With net.ipv4.nexthop_compat_mode 0 a route names only its next-hop
    object (RTA_NH_ID), and a changed object sends no route message: the
    importer follows the objects themselves."""
    prefix = "198.51.100.0/24"
    nn._write_proc(cp, "/proc/sys/net/ipv4/nexthop_compat_mode", 0)
    try:
        ip_nexthop(cp, "add", "id", "102", "via", "10.2.0.2", "dev", "tap2", "proto", "bgp")
        ip_nexthop(cp, "add", "id", "103", "via", "10.3.0.2", "dev", "tap3", "proto", "bgp")
        ip_nexthop(cp, "add", "id", "110", "group", "102/103", "proto", "bgp")
        subprocess.run(["ip", "-n", cp, "route", "add", prefix, "nhid", "110",
                        "proto", "bgp"], check=True, capture_output=True, timeout=10)
        router.wait_for(lambda: len((routes(router).get(prefix) or {}).get("paths", [])) == 2,
                        3, what=f"{prefix} over the group's two next hops")
        # a link event makes the importer read everything again: the objects
        # first, or the route (an id and nothing else) would be lost
        resyncs = router.stats()["route_import"]["resyncs"]
        with nn.iproute(cp) as ipr:
            ipr.link("add", ifname="poke0", kind="veth", peer="poke1")
            ipr.link("del", ifname="poke0")
        router.wait_for(lambda: router.stats()["route_import"]["resyncs"] > resyncs, 3,
                        what="a full read after the link event")
        assert len(routes(router)[prefix].get("paths", [])) == 2, routes(router)[prefix]
        n = split(paths_taken(lab, DST4, list(range(23000, 23000 + FLOWS))))
        assert n["h2"] >= 16 and n["h3"] >= 16, n
        # the group loses a member: no RTM_NEWROUTE, only RTM_NEWNEXTHOP
        ip_nexthop(cp, "replace", "id", "110", "group", "103", "proto", "bgp")
        router.wait_for(lambda: (routes(router).get(prefix) or {}).get("via") == "10.3.0.2",
                        3, what=f"{prefix} via the group's one member")
        seen = paths_taken(lab, DST4, list(range(23100, 23116)))
        assert all(s == {"h3"} for s in seen.values()), seen
        # the member goes: the kernel takes the route with it
        ip_nexthop(cp, "del", "id", "103")
        wait_route(router, prefix, present=False)
        assert router.stats()["route_import"]["skipped"].get("nexthop_unknown", 0) == 0
    finally:
        for nhid in ("110", "103", "102"):
            subprocess.run(["ip", "-n", cp, "nexthop", "del", "id", nhid],
                           capture_output=True, timeout=10)
        nn._write_proc(cp, "/proc/sys/net/ipv4/nexthop_compat_mode", 1)
    wait_route(router, prefix, present=False)
