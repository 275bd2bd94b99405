"""The control plane (forwarder/cplane.py): [control_plane] mirrors every port
into a namespace of its own, copies the routes its kernel holds into the
dataplane, and carries the routing daemons' own traffic through the mirrors
(punted to them, injected from them).

Routes are added in that namespace as a routing daemon would add them (over
netlink, with its protocol number); hosts h1 and h2 are real kernels, and
traffic crosses the router along the imported routes.  One test runs a lab of
its own whose first link is attached (a veth handed over, taken away and
handed over again, as a container runtime does) to see a mirror follow a real
link and the routes over it go with it.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from forwarder import netns as nn
from tests.routerlab import RunningRouter, kroute, router_mac, routes, start_router, wait_route
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401
from tests.wire import link_locals

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
                     control_plane=cp)
    yield r
    code, out = r.stop()
    assert code == 0, out


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
        # its link-local address is the port's, and usable (not tentative)
        assert link_locals(cp, f"tap{k}") == [router.interface(f"tap{k}")["link_local"]]


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
    # up again, its addresses are usable at once: no duplicate address detection
    # on a mirror, whose addresses are the port's (bgpd needs the link-local one)
    assert link_locals(cp, "tap2") == [router.interface("tap2")["link_local"]]
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
    since = len(router.log_text())
    t0 = time.monotonic()
    done = subprocess.run(["ip", "-n", cp, "-batch", "-"], input=batch, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    added = time.monotonic() - t0
    # the importer logs a burst once the socket is quiet (no polling meanwhile:
    # each poll is a process of its own, competing for the two cores)
    burst = router.wait_log(r"route import: (\d+) changes in ([\d.]+) s", 60, since=since)
    print(f"{n} routes: in the kernel after {added:.2f} s, in the dataplane after "
          f"{time.monotonic() - t0:.2f} s (the importer: {burst[1]} in {burst[2]} s)")
    router.wait_for(lambda: router.stats()["route_import"]["routes"] >= n, 60,
                    what=f"{n} imported routes")
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


class RouteEvents:
    """The IPv4 route notifications a namespace's kernel sends from now on
    (what the router's importer hears too), as (event, prefix) pairs."""

    def __init__(self, ns: str) -> None:
        with nn.enter_netns(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_IPV4_ROUTE))
        self.sock.setblocking(False)
        self.heard: list[tuple[str, str]] = []
        self._marshal = MarshalRtnl()

    def read(self) -> list[tuple[str, str]]:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return self.heard
            self.heard += [(m["event"], f"{m.get_attr('RTA_DST')}/{m['dst_len']}")
                           for m in self._marshal.parse(data)]

    def close(self) -> None:
        self.sock.close()


def in_kernel(cp: str, prefix: str) -> bool:
    """Whether the control plane's kernel holds a route for ``prefix`` (IPv4, main)."""
    with nn.iproute(cp) as ipr:
        return any(f"{r.get_attr('RTA_DST')}/{r['dst_len']}" == prefix
                   for r in ipr.get_routes(family=socket.AF_INET))


def mirror(cp: str, name: str) -> dict:
    """A mirror as its namespace's kernel sees it."""
    with nn.iproute(cp) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=name)[0])[0]
        return {"up": bool(link["flags"] & nn.IFF_UP), "oper": link.get_attr("IFLA_OPERSTATE"),
                "mac": link.get_attr("IFLA_ADDRESS"), "link_local": link_locals(cp, name)}


def test_an_attached_ports_mirror_follows_its_link_and_the_routes_over_it_go(
        tmp_path: Path) -> None:
    """eth1, an attached port, is deleted (the runtime takes the veth away):
    the port goes down, its mirror too, and the kernel there drops the route
    over it without a delete message; the importer's re-read takes it out of
    the dataplane.  eth1 handed over again: port and mirror up, with the new
    veth's MAC and link-local address; the route stays gone (the kernel does
    not bring back routes it flushed) until the daemon installs it again."""
    with nn.Topology() as topo:
        lab = make_lab(topo, n_hosts=2, attach=(1,), ipv6=True, name="mf")
        lab.attach_delay = 0.3
        cp = topo.netns("cp")
        r = start_router(lab, tmp_path, control_plane=cp)
        try:
            _mirror_follows_the_link(lab, cp, r)
        finally:
            code, out = r.stop()
        assert code == 0, out


def _mirror_follows_the_link(lab: RouterLab, cp: str, r: RunningRouter) -> None:
    h1 = lab.host("h1")
    with nn.iproute(h1.netns) as ipr:                # h1 answers for 198.51.100.7
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address="198.51.100.7",
                 prefixlen=32)
    port = r.interface("eth1")
    assert (port["link"], mirror(cp, "eth1")) == ("up", {
        "up": True, "oper": "UNKNOWN", "mac": port["mac"], "link_local": [port["link_local"]]})
    kroute(cp, "add", "198.51.100.0/24", gateway="10.1.0.2", oif="eth1", proto=RTPROT_BGP)
    wait_route(r, "198.51.100.0/24")
    assert lab.ping("h2", "198.51.100.7", count=1, wait=2).returncode == 0
    events, old_mac = RouteEvents(cp), port["mac"]
    try:
        with nn.iproute(lab.router_ns) as ipr:       # the runtime takes eth1 away
            ipr.link("del", index=ipr.link_lookup(ifname="eth1")[0])
        r.wait_for(lambda: r.interface("eth1")["link"] == "down", 5, what="port eth1 down")
        r.wait_for(lambda: not mirror(cp, "eth1")["up"], 5, what="mirror eth1 down")
        assert mirror(cp, "eth1")["oper"] == "DOWN"
        wait_route(r, "198.51.100.0/24", present=False)
        assert not in_kernel(cp, "198.51.100.0/24")
        assert ("RTM_DELROUTE", "198.51.100.0/24") not in events.read(), events.heard
    finally:
        events.close()
    resyncs = r.stats()["route_import"]["resyncs"]
    lab.hand_over(h1)                                # a new veth, a new MAC
    lab.configure_host(h1)
    r.wait_for(lambda: r.interface("eth1")["link"] == "up", 5, what="port eth1 up again")
    r.wait_for(lambda: mirror(cp, "eth1")["up"], 5, what="mirror eth1 up again")
    port = r.interface("eth1")
    assert port["mac"] != old_mac
    # at once its link-local address is there and usable (no duplicate address
    # detection on a mirror: its addresses are the port's)
    assert mirror(cp, "eth1") == {"up": True, "oper": "UNKNOWN", "mac": port["mac"],
                                  "link_local": [port["link_local"]]}
    r.wait_for(lambda: r.stats()["route_import"]["resyncs"] > resyncs, 5,
               what="the table read again after the link came back")
    assert not in_kernel(cp, "198.51.100.0/24")
    assert "198.51.100.0/24" not in routes(r)
    kroute(cp, "add", "198.51.100.0/24", gateway="10.1.0.2", oif="eth1", proto=RTPROT_BGP)
    wait_route(r, "198.51.100.0/24")
    assert lab.ping("h2", "198.51.100.7", count=1, wait=2).returncode == 0


# --- punt and inject: the daemons' own traffic ------------------------------------------------

ECHO_SERVER = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4)
print("listening", flush=True)
for _ in range(int(sys.argv[3])):
    c, _ = s.accept()
    c.sendall(b"mirror says " + c.recv(100))
    c.close()
"""


def tcp_ask(ns: str, addr: str, port: int, text: bytes) -> bytes:
    """A TCP exchange from a host's namespace, as a BGP peer would open one."""
    with nn.enter_netns(ns):
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        s.connect((addr, port))
        s.sendall(text)
        return s.recv(100)
    finally:
        s.close()


def test_tcp_to_the_router_reaches_the_control_plane_and_its_answers_come_back(
        lab: RouterLab, cp: str, router: RunningRouter) -> None:
    """TCP to the router's addresses (BGP's way in) is punted to the mirror;
    the control plane's kernel answers through it, resolving the host with
    ARP and ND of its own (the dataplane copies the replies to it)."""
    server = lab.topo.popen(cp, [sys.executable, "-c", ECHO_SERVER, "::", "1790", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        a = router.interface("tap2")
        assert tcp_ask(lab.host("h2").netns, "10.2.0.1", 1790, b"hello") == b"mirror says hello"
        assert tcp_ask(lab.host("h2").netns, "2001:db8:2::1", 1790, b"six") == b"mirror says six"
        b = router.interface("tap2")
        assert b["punted"] - a["punted"] >= 6 and b["injected"] - a["injected"] >= 6, (a, b)
        assert b["punt_errors"] == a["punt_errors"]
    finally:
        server.wait(10)
    with nn.iproute(cp) as ipr:                     # its kernel learned h2 from the copies
        learned = {n.get_attr("NDA_DST") for n in ipr.get_neighbours(
            ifindex=ipr.link_lookup(ifname="tap2")[0]) if n.get_attr("NDA_LLADDR")}
    assert {"10.2.0.2", "2001:db8:2::2"} <= learned, learned
    # echo requests stay the dataplane's: answered, not punted
    time.sleep(0.5)                                 # (the connections' last segments first)
    a = router.interface("tap2")
    e0 = router.stats()["icmp"]["echo_replies"]
    assert lab.ping("h2", "10.2.0.1", count=2, wait=2, extra=["-i", "0.2"]).returncode == 0
    assert router.stats()["icmp"]["echo_replies"] - e0 == 2
    assert router.interface("tap2")["punted"] == a["punted"]


def test_link_local_multicast_goes_to_the_control_plane(lab: RouterLab, cp: str,
                                                       router: RunningRouter) -> None:
    """OSPF's 224.0.0.5 and ff02::5 (IP protocol 89), as a neighbour sends them."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from tests.wire import Sniffer, host_mac
    src = host_mac(lab, "h2")
    frames = [Ether(src=src, dst="01:00:5e:00:00:05") / IP(src="10.2.0.2", dst="224.0.0.5", ttl=1,
                                                           proto=89) / Raw(b"ospf hello v2"),
              Ether(src=src, dst="33:33:00:00:00:05") / IPv6(src="fe80::2", dst="ff02::5",
                                                             hlim=1, nh=89) / Raw(b"v3")]
    with Sniffer(cp, "tap2") as mirror, Sniffer(lab.host("h2").netns, "tap2") as h2:
        for f in frames:
            h2.send(bytes(f))
        got = mirror.collect(lambda p: Raw in p and p[Raw].load in (b"ospf hello v2", b"v3"),
                             timeout=2, want=2)
    assert sorted(p[Raw].load for p in got) == [b"ospf hello v2", b"v3"]
