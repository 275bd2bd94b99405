"""OSPF through the router with real daemons: FRR's ospfd in the router's
control-plane namespace and FRR's ospfd in host h2 form an adjacency over
the port tap2 -- hellos to 224.0.0.5 are punted to the mirror, the mirror's
kernel's are injected -- and the route h2 advertises reaches the dataplane.
"""
from __future__ import annotations

import time
from typing import Iterator

import pytest

from forwarder import netns as nn
from forwarder.lab.daemons import Frr, frr, have_frr
from tests.routerlab import RunningRouter, start_router
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401

pytestmark = [requires_netns,
              pytest.mark.skipif(not have_frr(), reason="needs frr (scripts/install.sh)")]

LEARNT = "100.99.0.1"                 # h2's loopback address, advertised by its ospfd


def ospfd(router_id: str, ifname: str, extra: str = "") -> str:
    # point-to-point: no DR election to wait for; short timers for a test
    return f"""hostname {router_id}
interface {ifname}
 ip ospf network point-to-point
 ip ospf hello-interval 1
 ip ospf dead-interval 4
 ip ospf area 0
{extra}router ospf
 ospf router-id {router_id}
 timers throttle spf 0 50 500
 redistribute connected
"""


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, n_hosts=2)


@pytest.fixture(scope="module")
def cp(topology) -> str:  # noqa: F811
    return topology.netns("cp")


@pytest.fixture(scope="module")
def router(lab: RouterLab, cp: str, tmp_path_factory) -> Iterator[RunningRouter]:
    r = start_router(lab, tmp_path_factory.mktemp("ospf"), control_plane=cp, protocols=["ospf"])
    yield r
    code, out = r.stop()
    assert code == 0, out


@pytest.fixture(scope="module")
def daemons(lab: RouterLab, cp: str, router: RunningRouter,
            tmp_path_factory) -> Iterator[tuple[Frr, Frr]]:
    work = tmp_path_factory.mktemp("ospfd")
    h2 = lab.host("h2").netns
    with nn.iproute(h2) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=LEARNT, prefixlen=32)
    with frr(cp, work / "cp", ospfd("10.2.0.1", "tap2"), daemons=("ospfd",)) as mine, \
            frr(h2, work / "h2", ospfd("10.2.0.2", "tap2"), daemons=("ospfd",)) as theirs:
        yield mine, theirs


def test_ospf_adjacency_through_the_punt_path_and_a_learnt_route(
        lab: RouterLab, router: RunningRouter, daemons: tuple[Frr, Frr]) -> None:
    mine, _ = daemons
    t0 = time.monotonic()
    while "Full" not in mine.vtysh("show ip ospf neighbor"):
        assert time.monotonic() - t0 < 30, mine.vtysh("show ip ospf neighbor")
        time.sleep(0.3)
    router.wait_for(lambda: any(r["prefix"] == f"{LEARNT}/32" and r.get("origin") == "ospf"
                                for r in router.call("route.list")), 20,
                    what=f"{LEARNT}/32 learnt by OSPF in the dataplane")
    print(f"adjacency and route after {time.monotonic() - t0:.1f} s")
    r = next(r for r in router.call("route.list") if r["prefix"] == f"{LEARNT}/32")
    assert (r["via"], r["interface"]) == ("10.2.0.2", "tap2")
    cp = lab.ping("h1", LEARNT, count=2, wait=2, extra=["-i", "0.2"])
    assert cp.returncode == 0, cp.stdout
    tap2 = router.interface("tap2")
    assert tap2["punted"] > 0 and tap2["injected"] > 0
