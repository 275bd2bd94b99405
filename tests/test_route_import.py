"""Routes from the control plane's kernel: [control_plane] mirrors every port
into a namespace of its own and copies the routes its kernel holds into the
dataplane (forwarder/cplane.py).

Routes are added in that namespace as a routing daemon would add them (over
netlink, with its protocol number); hosts h1 and h2 are real kernels, and
traffic crosses the router along the imported routes.
"""
from __future__ import annotations

import socket
import subprocess
import time
from typing import Iterator

import pytest

from forwarder import netns as nn
from tests.routerlab import RunningRouter, router_mac, start_router
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401

pytestmark = requires_netns

RTPROT_BGP, RTPROT_OSPF = 186, 188


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, n_hosts=2, ipv6=True)


@pytest.fixture(scope="module")
def cp(topology) -> str:  # noqa: F811
    """The control-plane namespace, made before the router starts (as a test or a
    lab must: one the router made under `ip netns exec` would be private to it)."""
    return topology.netns("cp")


@pytest.fixture(scope="module")
def router(lab: RouterLab, cp: str, tmp_path_factory) -> Iterator[RunningRouter]:
    r = start_router(lab, tmp_path_factory.mktemp("import"),
                     routes=[{"prefix": "10.20.0.0/16", "via": "10.2.0.2"}],
                     extra_config=f'\n[control_plane]\nnetns = "{cp}"\n')
    yield r
    code, out = r.stop()
    assert code == 0, out


def kroute(cp: str, op: str, dst: str, **kw) -> None:
    """A route in the control plane's kernel, as a routing daemon installs it."""
    with nn.iproute(cp) as ipr:
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        if "oif" in kw:
            kw["oif"] = ipr.link_lookup(ifname=kw["oif"])[0]
        ipr.route(op, dst=dst, family=family, **kw)


def routes(r: RunningRouter) -> dict[str, dict]:
    return {x["prefix"]: x for x in r.call("route.list")}


def wait_route(r: RunningRouter, prefix: str, present: bool = True, timeout: float = 3.0) -> dict:
    r.wait_for(lambda: (prefix in routes(r)) == present, timeout,
               what=f"{prefix} {'in' if present else 'gone from'} the dataplane")
    return routes(r).get(prefix, {})


def test_every_port_has_a_mirror_in_the_control_plane(lab: RouterLab, cp: str,
                                                      router: RunningRouter) -> None:
    with nn.iproute(cp) as ipr:
        for k in (1, 2):
            idx = ipr.link_lookup(ifname=f"tap{k}")[0]
            link = ipr.get_links(idx)[0]
            assert link.get_attr("IFLA_ADDRESS") == router_mac(k)
            assert link.get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN")
            addrs = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)}
            assert {f"10.{k}.0.1", f"2001:db8:{k}::1"} <= addrs, addrs


def test_a_kernel_route_reaches_the_dataplane_and_leaves_it(lab: RouterLab, cp: str,
                                                           router: RunningRouter) -> None:
    with nn.iproute(lab.host("h2").netns) as ipr:            # h2 answers for 198.51.100.7
        ipr.addr("add", index=ipr.link_lookup(ifname="tap2")[0], address="198.51.100.7",
                 prefixlen=32)
    kroute(cp, "add", "198.51.100.0/24", gateway="10.2.0.2", oif="tap2", proto=RTPROT_BGP)
    r = wait_route(router, "198.51.100.0/24")
    assert (r["via"], r["interface"], r["origin"]) == ("10.2.0.2", "tap2", "bgp")
    assert lab.ping("h1", "198.51.100.7", count=2, wait=2, extra=["-i", "0.2"]).returncode == 0
    assert "198.51.100.0/24     10.2.0.2         tap2        forward     bgp" in \
        router.cli("route", "list").stdout
    kroute(cp, "del", "198.51.100.0/24", gateway="10.2.0.2", oif="tap2", proto=RTPROT_BGP)
    wait_route(router, "198.51.100.0/24", present=False)
    before = router.stats()["drops"]["no_route"]
    assert lab.ping("h1", "198.51.100.7", count=1, wait=1).returncode != 0
    assert router.stats()["drops"]["no_route"] > before
    ri = router.stats()["route_import"]
    assert ri["imported"] >= 1 and ri["removed"] >= 1 and ri["resyncs"] >= 1


def test_route_types_ipv6_and_what_is_not_imported(lab: RouterLab, cp: str,
                                                   router: RunningRouter) -> None:
    kroute(cp, "add", "192.0.2.0/24", type="blackhole", proto=RTPROT_OSPF)
    kroute(cp, "add", "203.0.113.0/24", type="prohibit", proto=RTPROT_BGP)
    kroute(cp, "add", "2001:db8:77::/48", gateway="2001:db8:2::2", oif="tap2", proto=RTPROT_BGP)
    kroute(cp, "add", "2001:db8:78::/48", gateway="fe80::2", oif="tap1",
           proto=RTPROT_BGP)                                   # a link-local next hop
    kroute(cp, "add", "100.64.0.0/10", oif="lo", proto=RTPROT_BGP)     # not over a mirror
    try:
        assert (wait_route(router, "192.0.2.0/24")["type"], routes(router)["192.0.2.0/24"]
                ["origin"]) == ("blackhole", "ospf")
        assert wait_route(router, "203.0.113.0/24")["type"] == "prohibit"
        r6 = wait_route(router, "2001:db8:77::/48")
        assert (r6["via"], r6["interface"]) == ("2001:db8:2::2", "tap2")
        assert wait_route(router, "2001:db8:78::/48")["interface"] == "tap1"
        time.sleep(0.3)
        assert "100.64.0.0/10" not in routes(router)
        assert router.stats()["route_import"]["skipped"].get("not_a_mirror", 0) >= 1
        # the kernel's own connected routes and fe80::/64 stay the config's
        assert routes(router)["10.1.0.0/24"]["origin"] == "connected"
        assert "fe80::/64" not in routes(router)
        # a blackhole drops in silence
        assert lab.ping("h1", "192.0.2.1", count=1, wait=1).returncode != 0
    finally:
        kroute(cp, "del", "192.0.2.0/24", type="blackhole", proto=RTPROT_OSPF)
        kroute(cp, "del", "203.0.113.0/24", type="prohibit", proto=RTPROT_BGP)
        kroute(cp, "del", "2001:db8:77::/48", gateway="2001:db8:2::2", oif="tap2",
               proto=RTPROT_BGP)
        kroute(cp, "del", "2001:db8:78::/48", gateway="fe80::2", oif="tap1",
               proto=RTPROT_BGP)
        kroute(cp, "del", "100.64.0.0/10", oif="lo", proto=RTPROT_BGP)
    for p in ("192.0.2.0/24", "203.0.113.0/24", "2001:db8:77::/48", "2001:db8:78::/48"):
        wait_route(router, p, present=False)


def test_config_routes_win_and_the_imported_one_waits_behind(lab: RouterLab, cp: str,
                                                             router: RunningRouter) -> None:
    kroute(cp, "add", "10.20.0.0/16", gateway="10.1.0.2", oif="tap1", proto=RTPROT_BGP)
    try:
        router.wait_for(lambda: routes(router)["10.20.0.0/16"].get("shadows") == "bgp", 3,
                        what="the bgp route behind the static one")
        r = routes(router)["10.20.0.0/16"]
        assert (r["via"], r["origin"]) == ("10.2.0.2", "static")
        assert "static (over bgp)" in router.cli("route", "list").stdout
        router.cli("route", "del", "10.20.0.0/16")      # the static one goes: bgp's takes over
        r = routes(router)["10.20.0.0/16"]
        assert (r["via"], r["interface"], r["origin"]) == ("10.1.0.2", "tap1", "bgp")
    finally:
        kroute(cp, "del", "10.20.0.0/16", gateway="10.1.0.2", oif="tap1", proto=RTPROT_BGP)
    wait_route(router, "10.20.0.0/16", present=False)


def test_routes_over_a_downed_link_go_although_the_kernel_sends_no_delete(
        lab: RouterLab, cp: str, router: RunningRouter) -> None:
    kroute(cp, "add", "198.18.0.0/15", gateway="10.2.0.2", oif="tap2", proto=RTPROT_BGP)
    wait_route(router, "198.18.0.0/15")
    resyncs = router.stats()["route_import"]["resyncs"]
    nn.link_set("tap2", cp, up=False)                  # the kernel drops its routes silently
    try:
        wait_route(router, "198.18.0.0/15", present=False)
        assert router.stats()["route_import"]["resyncs"] > resyncs
    finally:
        nn.link_set("tap2", cp, up=True)
    with nn.iproute(cp) as ipr:                        # the connected routes come back with it
        idx = ipr.link_lookup(ifname="tap2")[0]
        assert any(r.get_attr("RTA_DST") == "10.2.0.0" for r in ipr.get_routes(oif=idx))


def test_twenty_thousand_imported_routes_converge(lab: RouterLab, cp: str,
                                                  router: RunningRouter) -> None:
    """A daemon's burst (`ip -batch`, as fast as the kernel takes them): all in
    the dataplane; prints how long the import took (bounded, not timed)."""
    n = 20_000
    prefixes = [f"100.{64 + i // 4096}.{(i // 16) % 256}.{(i % 16) * 16}/28" for i in range(n)]
    batch = "".join(f"route add {p} via 10.2.0.2 dev tap2 proto bgp\n" for p in prefixes)
    t0 = time.monotonic()
    done = subprocess.run(["ip", "-n", cp, "-batch", "-"], input=batch, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    added = time.monotonic() - t0
    router.wait_for(lambda: router.stats()["route_import"]["routes"] >= n, 60,
                    what=f"{n} imported routes")
    print(f"{n} routes: in the kernel after {added:.2f} s, in the dataplane after "
          f"{time.monotonic() - t0:.2f} s")
    table = routes(router)
    assert all((table[p]["origin"], table[p]["via"]) == ("bgp", "10.2.0.2")
               for p in prefixes[::997])
    assert router.stats()["route_import"]["overruns"] == 0
    assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
    done = subprocess.run(["ip", "-n", cp, "-batch", "-"], text=True, capture_output=True,
                          timeout=60, input=batch.replace("route add", "route del"))
    assert done.returncode == 0, done.stderr[-2000:]
    router.wait_for(lambda: router.stats()["route_import"]["routes"] == 0, 60,
                    what="all imported routes withdrawn")
