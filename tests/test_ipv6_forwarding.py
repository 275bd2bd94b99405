"""IPv6 forwarding between real Linux hosts (RFC 8200, RFC 4443).

h1 2001:db8:1::2 --tap1-- router --tap2-- h2 2001:db8:2::2 (and 2001:db8:20::2 on its lo)
                            |----tap3-- h3 2001:db8:3::2   MTU 1280 on both sides
                            |----tap4-- h4 2001:db8:4::2   offload = false

Each host has its address and a default route via the router's address on
its link.  Routes: 2001:db8:20::/48 via h2, and one of each kind that does
not forward (blackhole, unreachable, prohibit).  ping -6, traceroute -6 and
iperf3 -6 run between the hosts; scapy sends what a host would not
(hop limit 1, a link-local source leaving its link, destinations under the
routes that do not forward) and checks the ICMPv6 errors that come back.
"""
from __future__ import annotations

import socket
import subprocess
import time
from typing import Iterator

import pytest
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest,
                                ICMPv6ParamProblem, ICMPv6TimeExceeded, IPerror6, IPv6,
                                IPv6ExtHdrDestOpt,
                                IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from forwarder import netns as nn
from forwarder.config import link_local_of
from tests.routerlab import RunningRouter, router_mac, start_router
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401
from tests.wire import Sniffer, host_ipv6, host_mac, iperf3

pytestmark = requires_netns

R = {n: f"2001:db8:{n}::1" for n in range(1, 5)}       # the router on link n
H = {n: f"2001:db8:{n}::2" for n in range(1, 5)}       # host n
FAR = "2001:db8:20::2"                                  # behind h2
ROUTES = [{"prefix": "2001:db8:20::/48", "via": H[2]},
          {"prefix": "2001:db8:50::/48", "type": "blackhole"},
          {"prefix": "2001:db8:51::/48", "type": "unreachable"},
          {"prefix": "2001:db8:52::/48", "type": "prohibit"}]


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, n_hosts=4, mtus=(1500, 1500, 1280, 1500))


@pytest.fixture(scope="module")
def router(lab: RouterLab, tmp_path_factory) -> Iterator[RunningRouter]:
    r = start_router(lab, tmp_path_factory.mktemp("ipv6fwd"), routes=ROUTES,
                     addresses={f"tap{n}": [f"{R[n]}/64"] for n in range(1, 5)},
                     offload={"tap4": False})
    for n in range(1, 5):
        host_ipv6(lab, f"h{n}", H[n], gateway=R[n])
    with nn.iproute(lab.host("h2").netns) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=FAR, prefixlen=128)
    yield r
    code, out = r.stop()
    assert code == 0, out


@pytest.fixture(autouse=True)
def zones_back_at_rest(router: RunningRouter) -> Iterator[None]:
    with router.zones_kept():
        yield


def ping6(lab: RouterLab, host: str, dst: str, *args: str) -> subprocess.CompletedProcess:
    return lab.run(host, ["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", *args, dst])


def itf(r: RunningRouter, name: str) -> dict:
    return next(i for i in r.stats()["interfaces"] if i["name"] == name)


def from_h1(lab: RouterLab, pkt) -> bytes:
    return bytes(Ether(dst=router_mac(1), src=host_mac(lab, "h1")) / pkt)


def error_for(lab: RouterLab, router: RunningRouter, pkt, reason: str) -> list:
    """Send pkt from h1; the ICMPv6 errors h1 gets back; ``reason`` counted once."""
    before = router.stats()["drops"][reason]
    with Sniffer(lab.host("h1").netns, "tap1") as s1:
        s1.send(from_h1(lab, pkt))
        router.wait_for(lambda: router.stats()["drops"][reason] > before, what=reason)
        errs = s1.collect(lambda p: IPv6 in p and p[IPv6].nh == 58 and IPerror6 in p,
                          timeout=1.0, want=5)
    assert router.stats()["drops"][reason] == before + 1
    return errs


# --- hosts talking through the router ----------------------------------------------------------

def test_ping6_across_the_router_with_cold_neighbour_caches(lab: RouterLab,
                                                           router: RunningRouter) -> None:
    s0 = router.stats()
    cp = ping6(lab, "h1", H[2])
    assert cp.returncode == 0, cp.stdout + cp.stderr
    s1 = router.stats()
    assert s1["forwarded"] - s0["forwarded"] >= 4          # two requests, two replies
    assert s1["nd6"]["solicitations_sent"] > s0["nd6"]["solicitations_sent"]
    table = {(e["ip"], e["interface"]) for e in router.cli_json("ndp", "-a")}
    assert {(H[1], "tap1"), (H[2], "tap2")} <= table
    assert ping6(lab, "h1", FAR).returncode == 0            # the static route via h2
    assert ping6(lab, "h4", H[3]).returncode == 0


def test_traceroute6_shows_the_router_then_the_host(lab: RouterLab, router: RunningRouter) -> None:
    """Hop limit 1 at the router: time exceeded from its address on h1's
    link; then h2 itself (port unreachable ends it)."""
    cp = lab.run("h1", ["traceroute", "-6", "-n", "-q", "1", "-w", "2", "-m", "5", FAR],
                 timeout=30)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    hops = [ln.split()[1] for ln in cp.stdout.splitlines()[1:]]
    assert hops == [R[1], FAR], cp.stdout


def test_tcp_over_ipv6_whole_super_frames_and_segmented_in_software(
        lab: RouterLab, router: RunningRouter) -> None:
    """iperf3 -6 h1 -> h2 rides on TSO6 super-frames forwarded whole; h1 ->
    h4 (no offloads there) has them cut in software, IPv6 segments."""
    for dst, port in ((2, 5301), (4, 5302)):
        a = itf(router, f"tap{dst}")
        doc = iperf3(lab, "h1", f"h{dst}", H[dst], port, "-6")
        assert doc["end"]["sum_received"]["bits_per_second"] > 100e6
        b = itf(router, f"tap{dst}")
        if dst == 2:
            assert b["tx_gso"] - a["tx_gso"] > 100 and b["gso_software"] == a["gso_software"]
        else:
            assert b["gso_software"] - a["gso_software"] > 100 and b["tx_gso"] == 0


def test_packet_too_big_then_path_mtu_discovery(lab: RouterLab, router: RunningRouter) -> None:
    """1400-byte pings to h3 do not fit the 1280 link: packet too big with
    MTU 1280 comes back (the router never fragments IPv6), h1 learns the
    path MTU and fragments its next pings itself, which then pass."""
    d0 = router.stats()
    cp = lab.run("h1", ["ping", "-6", "-c", "1", "-W", "2", "-s", "1400", "-M", "do", H[3]])
    assert cp.returncode != 0
    d1 = router.stats()
    assert d1["drops"]["ip6_too_big"] > d0["drops"]["ip6_too_big"]
    assert d1["icmp6"]["packet_too_big"] > d0["icmp6"]["packet_too_big"]
    with nn.iproute(lab.host("h1").netns) as ipr:
        route = ipr.route("get", dst=H[3], family=socket.AF_INET6)[0]
    assert dict(route.get_attr("RTA_METRICS")["attrs"]).get("RTAX_MTU") == 1280
    assert ping6(lab, "h1", H[3], "-s", "1400").returncode == 0


def test_tcp_across_the_1280_link_finds_its_path_mtu(lab: RouterLab,
                                                    router: RunningRouter) -> None:
    """iperf3 -6 h1 -> h3 with h3 on a 1500-byte interface behind the router's
    1280-byte link: both ends agree on 1440-byte segments, which the link
    cannot take; the router answers packet too big (per segment, never
    fragmenting), h1's TCP shrinks its segments, and the data flows."""
    h3, fresh = lab.host("h3"), "2001:db8:3::3"      # an address no path MTU was learned for
    nn.configure_host_ipv6(h3.ifname, h3.netns, [f"{fresh}/64"])
    nn.link_set(h3.ifname, h3.netns, mtu=1500)        # h3 advertises MSS 1440
    p0 = router.stats()["icmp6"]["packet_too_big"]
    try:
        doc = iperf3(lab, "h1", "h3", fresh, 5303, "-6")
        assert doc["end"]["sum_received"]["bits_per_second"] > 50e6
    finally:
        nn.link_set(h3.ifname, h3.netns, mtu=1280)
    assert router.stats()["icmp6"]["packet_too_big"] > p0
    with nn.iproute(lab.host("h1").netns) as ipr:
        route = ipr.route("get", dst=fresh, family=socket.AF_INET6)[0]
    assert dict(route.get_attr("RTA_METRICS")["attrs"]).get("RTAX_MTU") == 1280


def test_extension_headers_pass_through_untouched(lab: RouterLab, router: RunningRouter) -> None:
    """Hop-by-Hop, Destination Options, Routing (segments left 0) and
    Fragment headers are not the router's business (RFC 8200 4): the
    packet reaches h2 byte for byte, hop limit one less."""
    pkt = (IPv6(src=H[1], dst=H[2], hlim=9) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
           / IPv6ExtHdrRouting(segleft=0) / IPv6ExtHdrFragment(id=0x77, m=0, offset=0)
           / ICMPv6EchoRequest(id=37, data=b"e" * 40))
    with Sniffer(lab.host("h2").netns, "tap2") as s2:
        with Sniffer(lab.host("h1").netns, "tap1") as s1:
            s1.send(from_h1(lab, pkt))
        got = s2.collect(lambda p: IPv6 in p and p[IPv6].src == H[1] and IPv6ExtHdrFragment in p
                         and p[IPv6ExtHdrFragment].id == 0x77)
    assert len(got) == 1
    sent, seen = bytearray(bytes(IPv6(bytes(pkt)))), bytearray(bytes(got[0][IPv6]))
    assert seen[7] == 8
    seen[7] = sent[7]
    assert seen == sent


# --- what is not forwarded, and the error that says so ---------------------------------------------

def test_hop_limit_1_gets_time_exceeded_but_the_router_answers_for_itself(
        lab: RouterLab, router: RunningRouter) -> None:
    errs = error_for(lab, router, IPv6(src=H[1], dst=H[2], hlim=1) / ICMPv6EchoRequest(id=31),
                     "ttl_exceeded")
    assert len(errs) == 1 and ICMPv6TimeExceeded in errs[0]
    e = errs[0]
    assert (e[IPv6].src, e[IPv6].dst, e[ICMPv6TimeExceeded].code) == (R[1], H[1], 0)
    assert (e[IPerror6].dst, e[IPerror6].hlim) == (H[2], 1)      # quoted as received
    with Sniffer(lab.host("h1").netns, "tap1") as s1:
        s1.send(from_h1(lab, IPv6(src=H[1], dst=R[2], hlim=1) / ICMPv6EchoRequest(id=32)))
        assert s1.collect(lambda p: ICMPv6EchoReply in p and p[ICMPv6EchoReply].id == 32)
    # forwarded: one less, exactly once
    with Sniffer(lab.host("h2").netns, "tap2") as s2:
        with Sniffer(lab.host("h1").netns, "tap1") as s1:
            s1.send(from_h1(lab, IPv6(src=H[1], dst=H[2], hlim=5) / ICMPv6EchoRequest(id=36)))
        got = s2.collect(lambda p: ICMPv6EchoRequest in p and p[ICMPv6EchoRequest].id == 36)
    assert len(got) == 1 and got[0][IPv6].hlim == 4


@pytest.mark.parametrize("dst,reason,code", [
    ("2001:db8:51::1", "unreachable_route", 0),
    ("2001:db8:52::1", "prohibited_route", 1),
    ("2001:db8:99::1", "no_route", 0),
])
def test_routes_that_do_not_forward_answer_destination_unreachable(
        lab: RouterLab, router: RunningRouter, dst: str, reason: str, code: int) -> None:
    errs = error_for(lab, router, IPv6(src=H[1], dst=dst) / ICMPv6EchoRequest(id=33), reason)
    assert len(errs) == 1 and errs[0][ICMPv6DestUnreach].code == code
    assert errs[0][IPerror6].dst == dst


def test_a_neighbour_that_never_answers_gets_address_unreachable(
        lab: RouterLab, router: RunningRouter) -> None:
    """To an address of h2's link nobody owns: the router solicits it three
    times, then gives up on the held packet with destination unreachable
    code 3 (RFC 4861 7.2.2)."""
    ghost = "2001:db8:2::99"
    before = router.stats()["drops"]["nd6_timeout"]
    with Sniffer(lab.host("h1").netns, "tap1") as s1:
        s1.send(from_h1(lab, IPv6(src=H[1], dst=ghost) / ICMPv6EchoRequest(id=38)))
        errs = s1.collect(lambda p: ICMPv6DestUnreach in p and p[IPerror6].dst == ghost,
                          timeout=8)
    assert len(errs) == 1 and errs[0][ICMPv6DestUnreach].code == 3
    assert errs[0][IPv6].src == R[1]
    assert router.stats()["drops"]["nd6_timeout"] == before + 1


def test_blackhole_is_silent(lab: RouterLab, router: RunningRouter) -> None:
    assert error_for(lab, router, IPv6(src=H[1], dst="2001:db8:50::1") / ICMPv6EchoRequest(),
                     "blackhole") == []


def test_link_local_source_is_beyond_scope(lab: RouterLab, router: RunningRouter) -> None:
    """A link-local source may not leave its link (RFC 4007 9): destination
    unreachable code 2, to the link-local sender, from the router's
    link-local address."""
    src = str(link_local_of(host_mac(lab, "h1")).ip)        # h1's own: it answers ND for it
    errs = error_for(lab, router, IPv6(src=src, dst=H[2]) / ICMPv6EchoRequest(id=34),
                     "ip6_beyond_scope")
    assert len(errs) == 1
    e = errs[0]
    assert e[ICMPv6DestUnreach].code == 2 and e[IPv6].dst == src
    assert e[IPv6].src == itf(router, "tap1")["link_local"]


def test_udp_to_the_router_port_unreachable_unknown_next_header_parameter_problem(
        lab: RouterLab, router: RunningRouter) -> None:
    """traceroute -6 to the router ends at the router (port unreachable for
    its UDP probe); a next header nobody knows gets parameter problem code
    1 with the pointer at the next header field (RFC 8200 4)."""
    cp = lab.run("h1", ["traceroute", "-6", "-n", "-q", "1", "-w", "2", "-m", "3", R[2]],
                 timeout=30)
    assert cp.returncode == 0 and [ln.split()[1] for ln in cp.stdout.splitlines()[1:]] == [R[2]], \
        cp.stdout
    errs = error_for(lab, router, IPv6(src=H[1], dst=R[1], nh=253) / Raw(b"x" * 8),
                     "local_not_echo")
    assert len(errs) == 1
    pp = errs[0][ICMPv6ParamProblem]
    assert (pp.code, pp.ptr) == (1, 6) and errs[0][IPerror6].nh == 253


def test_errors_are_rate_limited(lab: RouterLab, router: RunningRouter) -> None:
    """net.inet6.icmp6.errppslimit = 5: of 100 packets to an unreachable
    route, about five are answered in the burst; the rest are counted."""
    router.sysctl("net.inet6.icmp6.errppslimit=5")
    try:
        time.sleep(1.1)                                  # a full bucket
        before = router.stats()["icmp6"]
        with Sniffer(lab.host("h1").netns, "tap1") as s1:
            for i in range(100):
                s1.send(from_h1(lab, IPv6(src=H[1], dst="2001:db8:51::7")
                                / ICMPv6EchoRequest(id=35, seq=i)))
            router.wait_for(lambda: router.stats()["drops"]["unreachable_route"] >= 100,
                            what="all 100 handled")
        after = router.stats()["icmp6"]
        sent = after["unreachable"] - before["unreachable"]
        limited = after["ratelimited"] - before["ratelimited"]
        assert sent + limited == 100 and 5 <= sent <= 8, (sent, limited)
    finally:
        router.sysctl("net.inet6.icmp6.errppslimit=100")
