"""BGP through the router with real daemons: FRR's bgpd in the router's
control-plane namespace peers with BIRD in host h2, over the dataplane port
tap2 (the session's packets are punted to the mirror and injected from it);
BIRD announces 1000 prefixes, FRR installs them in its kernel, and the router
imports them (forwarder/cplane.py).  h1, on the other port, pings into one.

IPv6 runs as dual-stack peerings usually do: a second session between the
link's global addresses (2001:db8:2::1 and ::2) carrying IPv6 unicast only
(forwarder/lab/daemons.py says why), and 1000 IPv6 prefixes over it.  As a
directly connected eBGP peer BIRD sends its link-local address beside the
global next hop, and FRR installs the routes via that link-local address
(``via fe80::... dev tap2``): the dataplane forwards them to h2 resolving its
link-local address with Neighbor Discovery.
"""
from __future__ import annotations

import time
from typing import Iterator

import pytest

from forwarder import netns as nn
from forwarder.lab.path import host_path
from forwarder.lab.run import run_load
from forwarder.lab.spec import LoadSpec
from forwarder.lab.daemons import (Bird, Frr, bgpd_conf, bird, bird_bgp_conf, frr, have_bird,
                                   have_frr)
from tests.routerlab import RunningRouter, start_router
from tests.wire import link_local
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401

pytestmark = [requires_netns,
              pytest.mark.skipif(not (have_frr() and have_bird()),
                                 reason="needs frr and bird2 (scripts/install.sh installs them)")]

N = 1000
PREFIXES = [f"100.{64 + i // 256}.{i % 256}.0/24" for i in range(N)]
TARGET = "100.66.7.1"                      # inside PREFIXES[2 * 256 + 7], owned by h2
PREFIXES6 = [f"2001:db8:{0x8000 + i:x}::/48" for i in range(N)]
TARGET6 = "2001:db8:8207::1"               # inside PREFIXES6[0x207], owned by h2



@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, n_hosts=2, ipv6=True)


@pytest.fixture(scope="module")
def cp(topology) -> str:  # noqa: F811
    return topology.netns("cp")


@pytest.fixture(scope="module")
def router(lab: RouterLab, cp: str, tmp_path_factory) -> Iterator[RunningRouter]:
    r = start_router(lab, tmp_path_factory.mktemp("bgp"), control_plane=cp, protocols=["bgp"])
    yield r
    code, out = r.stop()
    assert code == 0, out


@pytest.fixture(scope="module")
def daemons(lab: RouterLab, cp: str, router: RunningRouter,
            tmp_path_factory) -> Iterator[tuple[Frr, Bird]]:
    work = tmp_path_factory.mktemp("daemons")
    with nn.iproute(lab.host("h2").netns) as ipr:          # h2 owns one announced address
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.addr("add", index=lo, address=TARGET, prefixlen=32)
        ipr.addr("add", index=lo, address=TARGET6, prefixlen=128)
    # BIRD sends its link-local next hop beside the global one once it has one
    # (RFC 2545): h2's link is up for good first, as a neighbour's would be
    router.wait_for(lambda: link_local(lab.host("h2").netns, "tap2"), 5,
                    what="h2's link-local address usable")
    with frr(cp, work, bgpd_conf("10.2.0.1", 65001, "10.2.0.2", 65002,
                                 neighbor6="2001:db8:2::2")) as f, \
            bird(lab.host("h2").netns, work,
                 bird_bgp_conf("10.2.0.2", 65002, "10.2.0.1", 65001, PREFIXES,
                               local6="2001:db8:2::2", neighbor6="2001:db8:2::1",
                               prefixes6=PREFIXES6)) as b:
        yield f, b


def imported(r: RunningRouter, family: int = 4) -> set[str]:
    """The dataplane's BGP routes of one address family."""
    return {x["prefix"] for x in r.call("route.list") if x.get("origin") == "bgp"
            and (":" in x["prefix"]) == (family == 6)}


def test_bgp_session_over_the_punt_path_fills_the_table(lab: RouterLab, router: RunningRouter,
                                                        daemons: tuple[Frr, Bird]) -> None:
    f, b = daemons
    t0 = time.monotonic()
    took = b.wait_established("up", timeout=30)
    router.wait_for(lambda: len(imported(router)) >= N, 30 - took, what=f"{N} BGP routes")
    print(f"session up after {took:.1f} s, {N} prefixes in the dataplane after "
          f"{time.monotonic() - t0:.1f} s")
    assert imported(router) == set(PREFIXES)
    row = next(x for x in router.call("route.list") if x["prefix"] == PREFIXES[0])
    assert (row["via"], row["interface"]) == ("10.2.0.2", "tap2")
    tap2 = router.interface("tap2")
    assert tap2["punted"] > 0 and tap2["injected"] > 0       # the session's own packets
    cp = lab.ping("h1", TARGET, count=3, wait=2, extra=["-i", "0.2"])
    assert cp.returncode == 0, cp.stdout


def test_the_session_survives_a_flood_through_the_router(lab: RouterLab, router: RunningRouter,
                                                         daemons: tuple[Frr, Bird]) -> None:
    f, b = daemons
    b.wait_established("up", timeout=30)
    since = b.birdc("show", "protocols", "up").split()
    r = run_load(LoadSpec(proto="udp", sizes="64", flows=8, duration=3.0),
                 host_path(lab, "h1", "h2"))
    assert r["received"]["packets"] > 10_000
    assert "Established" in b.state("up")
    assert b.birdc("show", "protocols", "up").split() == since   # the same session, no flap
    assert len(imported(router)) == N


def test_withdrawn_prefixes_leave_the_dataplane(lab: RouterLab, router: RunningRouter,
                                                daemons: tuple[Frr, Bird]) -> None:
    f, b = daemons
    b.wait_established("up", timeout=30)
    router.wait_for(lambda: len(imported(router)) >= N, 30, what=f"{N} BGP routes")
    t0 = time.monotonic()
    b.birdc("disable", "announced")
    router.wait_for(lambda: not imported(router), 5, what="the withdrawn prefixes gone")
    print(f"{N} prefixes withdrawn from the dataplane in {time.monotonic() - t0:.1f} s")
    assert lab.ping("h1", TARGET, count=1, wait=1).returncode != 0
    b.birdc("enable", "announced")
    router.wait_for(lambda: len(imported(router)) >= N, 30, what="the prefixes back")


def test_ipv6_bgp_session_fills_the_ipv6_table(lab: RouterLab, router: RunningRouter,
                                               daemons: tuple[Frr, Bird]) -> None:
    f, b = daemons
    b.wait_established("up6", timeout=30)
    router.wait_for(lambda: len(imported(router, 6)) >= N, 30, what=f"{N} IPv6 BGP routes")
    assert imported(router, 6) == set(PREFIXES6)
    row = next(x for x in router.call("route.list") if x["prefix"] == PREFIXES6[0x207])
    # FRR keeps the link-local next hop of a directly connected peer
    assert (row["via"], row["interface"]) == (link_local(lab.host("h2").netns, "tap2"),
                                              "tap2"), row
    cp = lab.ping("h1", TARGET6, count=3, wait=2, extra=["-6", "-i", "0.2"])
    assert cp.returncode == 0, cp.stdout
    assert imported(router) == set(PREFIXES)           # the IPv4 session's, untouched


def test_withdrawn_ipv6_prefixes_leave_the_dataplane(lab: RouterLab, router: RunningRouter,
                                                     daemons: tuple[Frr, Bird]) -> None:
    f, b = daemons
    b.wait_established("up6", timeout=30)
    router.wait_for(lambda: len(imported(router, 6)) >= N, 30, what=f"{N} IPv6 BGP routes")
    t0 = time.monotonic()
    b.birdc("disable", "announced6")
    router.wait_for(lambda: not imported(router, 6), 5, what="the withdrawn IPv6 prefixes gone")
    gone = time.monotonic() - t0
    assert lab.ping("h1", TARGET6, count=1, wait=1, extra=["-6"]).returncode != 0
    assert len(imported(router)) == N                  # IPv4's stay
    t0 = time.monotonic()
    b.birdc("enable", "announced6")
    router.wait_for(lambda: len(imported(router, 6)) >= N, 30, what="the IPv6 prefixes back")
    print(f"{N} IPv6 prefixes withdrawn from the dataplane in {gone:.1f} s, announced again "
          f"and all in it after {time.monotonic() - t0:.1f} s")
    assert lab.ping("h1", TARGET6, count=1, wait=2, extra=["-6"]).returncode == 0
