"""BGP through the router with real daemons: FRR's bgpd in the router's
control-plane namespace peers with BIRD in host h2, over the dataplane port
tap2 (the session's packets are punted to the mirror and injected from it);
BIRD announces 1000 prefixes, FRR installs them in its kernel, and the router
imports them (forwarder/cplane.py).  h1, on the other port, pings into one.
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
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401

pytestmark = [requires_netns,
              pytest.mark.skipif(not (have_frr() and have_bird()),
                                 reason="needs frr and bird2 (scripts/install.sh installs them)")]

N = 1000
PREFIXES = [f"100.{64 + i // 256}.{i % 256}.0/24" for i in range(N)]
TARGET = "100.66.7.1"                      # inside PREFIXES[2 * 256 + 7], owned by h2



@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, n_hosts=2)


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
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=TARGET, prefixlen=32)
    with frr(cp, work, bgpd_conf("10.2.0.1", 65001, "10.2.0.2", 65002)) as f, \
            bird(lab.host("h2").netns, work,
                 bird_bgp_conf("10.2.0.2", 65002, "10.2.0.1", 65001, PREFIXES)) as b:
        yield f, b


def imported(r: RunningRouter) -> set[str]:
    return {x["prefix"] for x in r.call("route.list") if x.get("origin") == "bgp"}


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
