"""IPv6 to the router itself: Neighbor Discovery, echo, header checks.

h1 2001:db8:1::2/64 --tap1-- router 2001:db8:1::1/64 + fe80::EUI-64
h2 2001:db8:2::2/64 --tap2-- router 2001:db8:2::1/64

The hosts are Linux kernels with IPv6 on (no duplicate address detection,
no router solicitations, so the link carries only what a test makes).  The
router answers Neighbor Solicitations for its addresses, learns the
senders, answers pings to its global and link-local addresses, resolves
neighbours it must answer with its own solicitations (held replies, three
tries), and counts everything it refuses under a drop reason of its own.
Forwarding is tests/test_ipv6_forwarding.py's.
"""
from __future__ import annotations

from typing import Iterator

import pytest
from scapy.layers.inet6 import (ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS,
                                ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from tests.routerlab import RunningRouter, router_mac, start_router
from tests.topology import RouterLab, lab, requires_netns, topology  # noqa: F401
from tests.wire import Sniffer, host_ipv6, host_mac

pytestmark = requires_netns

R1, H1 = "2001:db8:1::1", "2001:db8:1::2"
R2, H2 = "2001:db8:2::1", "2001:db8:2::2"
# Multicast a host may still send on its own (MLD reports on joining a
# group): dropped as not forwarded and not ours, whatever a test does.
BACKGROUND = {"ip_broadcast_destination"}


@pytest.fixture(scope="module")
def router(lab: RouterLab, tmp_path_factory) -> Iterator[RunningRouter]:
    r = start_router(lab, tmp_path_factory.mktemp("ipv6"),
                     addresses={"tap1": [f"{R1}/64"], "tap2": [f"{R2}/64"]})
    host_ipv6(lab, "h1", H1)
    host_ipv6(lab, "h2", H2)
    yield r
    code, out = r.stop()
    assert code == 0, out


@pytest.fixture(autouse=True)
def zones_back_at_rest(router: RunningRouter) -> Iterator[None]:
    with router.zones_kept():
        yield


def link_local(r: RunningRouter, ifname: str) -> str:
    return next(i["link_local"] for i in r.stats()["interfaces"] if i["name"] == ifname)


def moved(before: dict, after: dict) -> dict[str, int]:
    """Drop counters that moved, background multicast left out."""
    return {k: after[k] - before[k] for k in after
            if after[k] != before[k] and k not in BACKGROUND}


def to_router(lab: RouterLab, pkt, dst_mac: str | None = None) -> bytes:
    return bytes(Ether(dst=dst_mac or router_mac(1), src=host_mac(lab, "h1")) / pkt)


def probe(lab: RouterLab, r: RunningRouter, frames: list[bytes], reason: str, n: int,
          listen: float = 0.5) -> list:
    """Send frames from h1's side of tap1; wait for ``reason`` to count n more;
    return what came back to h1 meanwhile (for the router's answers)."""
    before = r.stats()["drops"]
    with Sniffer(lab.host("h1").netns, "tap1") as s1:
        for f in frames:
            s1.send(f)
        r.wait_for(lambda: r.stats()["drops"][reason] - before[reason] >= n, timeout=8,
                   what=f"{reason} +{n}")
        back = s1.collect(lambda p: IPv6 in p and p[IPv6].src in (R1, link_local(r, "tap1")),
                          timeout=listen, want=100)
    assert moved(before, r.stats()["drops"]) == {reason: n}
    return back


# --- ping, the way a host does it ---------------------------------------------------------

def test_ping6_to_the_global_and_the_link_local_address(lab: RouterLab, router: RunningRouter) -> None:
    """Cold caches on both sides: h1 solicits the router, the router answers
    with an advertisement (Router flag, its MAC) and learns h1 from the
    solicitation; then the echo requests are answered."""
    s0 = router.stats()
    assert lab.run("h1", ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", R1]).returncode == 0
    ll = link_local(router, "tap1")
    assert ll == "fe80::ff:fe00:101"        # modified EUI-64 of 02:00:00:00:01:01
    cp = lab.run("h1", ["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", f"{ll}%tap1"])
    assert cp.returncode == 0, cp.stdout + cp.stderr
    s1 = router.stats()
    assert s1["icmp6"]["echo_replies"] - s0["icmp6"]["echo_replies"] == 5
    assert s1["nd6"]["advertisements_sent"] > s0["nd6"]["advertisements_sent"]
    assert s1["nd6"]["entries"] >= 1
    assert lab.run("h2", ["ping", "-6", "-c", "1", "-W", "2", R2]).returncode == 0
    # ndp -a: the hosts, learned from their solicitations, with their MACs:
    # STALE (a solicitation confirms nothing), then DELAY once the first
    # reply went out through the entry (nd6_delay, 5 s, before it is probed)
    table = {(e["ip"], e["interface"]): e for e in router.cli_json("ndp", "-a")}
    assert table[(H1, "tap1")]["mac"] == host_mac(lab, "h1")
    assert table[(H1, "tap1")]["state"] == "delay"
    text = router.cli("ndp", "-a").stdout
    assert any(ln.split()[:3] == [H1, host_mac(lab, "h1"), "tap1"] for ln in text.splitlines())
    # ndp -d forgets it (the next ping learns it again from h1's solicitation)
    assert router.cli("ndp", "-d", H1, "-i", "tap1").stdout == f"{H1} (1 entry) deleted\n"
    assert (H1, "tap1") not in {(e["ip"], e["interface"]) for e in router.cli_json("ndp", "-a")}
    cp = router.cli("ndp", "-d", H1, check=False)
    assert cp.returncode == 1 and f"no neighbour cache entry for {H1}" in cp.stderr
    cp = router.cli("ndp", "-d", "10.1.0.2", check=False)
    assert cp.returncode == 1 and "is not an IPv6 address" in cp.stderr


def test_ndisc6_resolves_the_router(lab: RouterLab, router: RunningRouter) -> None:
    """ndisc6 (the ndisc6 package) solicits the router's address as an
    operator would and prints the link-layer address of its advertisement."""
    cp = lab.run("h1", ["ndisc6", "-1", "-r", "3", "-w", "1000", R1, "tap1"], timeout=15)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "Target link-layer address: " + router_mac(1).upper() in cp.stdout, cp.stdout
    cp = lab.run("h1", ["ndisc6", "-1", "-r", "1", "-w", "500", "2001:db8:1::99", "tap1"],
                 timeout=15)
    assert cp.returncode != 0 and "Target link-layer address" not in cp.stdout, cp.stdout


def test_neighbor_advertisement_is_well_formed(lab: RouterLab, router: RunningRouter) -> None:
    """The answer to a solicitation: from the target, hop limit 255, flags
    R, S and O, the target link-layer option with the router's MAC."""
    ns = (IPv6(src=H1, dst="ff02::1:ff00:1", hlim=255) / ICMPv6ND_NS(tgt=R1)
          / ICMPv6NDOptSrcLLAddr(lladdr=host_mac(lab, "h1")))
    with Sniffer(lab.host("h1").netns, "tap1") as s1:
        s1.send(to_router(lab, ns, dst_mac="33:33:ff:00:00:01"))
        got = s1.collect(lambda p: ICMPv6ND_NA in p and p[ICMPv6ND_NA].tgt == R1, timeout=2)
    assert len(got) == 1
    na = got[0]
    assert (na[IPv6].src, na[IPv6].dst, na[IPv6].hlim) == (R1, H1, 255)
    assert (na[ICMPv6ND_NA].R, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O) == (1, 1, 1)
    assert na[ICMPv6NDOptDstLLAddr].lladdr == router_mac(1)
    assert na[Ether].dst == host_mac(lab, "h1")
    again = IPv6(bytes(na[IPv6]))
    del again[ICMPv6ND_NA].cksum
    assert IPv6(bytes(again))[ICMPv6ND_NA].cksum == na[ICMPv6ND_NA].cksum


# --- the router's own solicitations ---------------------------------------------------------

def test_unknown_neighbour_is_solicited_then_given_up(lab: RouterLab, router: RunningRouter) -> None:
    """Echo requests from an on-link address no host owns: the replies are
    held and the router solicits the address (once a second, three times);
    the 17th request pushes the oldest held reply out (nd6_hold_overflow),
    and when no advertisement ever comes the rest are given up (nd6_timeout)."""
    ghost = "2001:db8:1::99"
    reqs = [to_router(lab, IPv6(src=ghost, dst=R1) / ICMPv6EchoRequest(id=99, seq=i))
            for i in range(17)]
    before = router.stats()
    with Sniffer(lab.host("h1").netns, "tap1") as s1:
        for f in reqs:
            s1.send(f)
        router.wait_for(lambda: router.stats()["drops"]["nd6_timeout"] - before["drops"]["nd6_timeout"] >= 16,
                        timeout=10, what="nd6_timeout +16")
        sols = s1.collect(lambda p: ICMPv6ND_NS in p and p[ICMPv6ND_NS].tgt == ghost,
                          timeout=0.5, want=10)
    after = router.stats()
    assert moved(before["drops"], after["drops"]) == {"nd6_hold_overflow": 1, "nd6_timeout": 16}
    assert len(sols) == 3
    for s in sols:
        assert s[IPv6].dst == "ff02::1:ff00:99" and s[Ether].dst == "33:33:ff:00:00:99"
        assert s[IPv6].hlim == 255 and s[ICMPv6NDOptSrcLLAddr].lladdr == router_mac(1)


# --- what the router refuses, each under its reason ------------------------------------------

def test_nd_malformed_and_not_on_link(lab: RouterLab, router: RunningRouter) -> None:
    """Solicitations with hop limit 254 (forwarded from elsewhere), code 1,
    or an option of length 0 are nd_malformed; from a source outside the
    link's prefixes, nd_not_on_link.  None is answered."""
    mac = host_mac(lab, "h1")
    bad = [
        IPv6(src=H1, dst=R1, hlim=254) / ICMPv6ND_NS(tgt=R1) / ICMPv6NDOptSrcLLAddr(lladdr=mac),
        IPv6(src=H1, dst=R1, hlim=255) / ICMPv6ND_NS(tgt=R1, code=1),
        IPv6(src=H1, dst=R1, hlim=255) / ICMPv6ND_NS(tgt=R1) / Raw(b"\x01\x00" + bytes(6)),
    ]
    back = probe(lab, router, [to_router(lab, p) for p in bad], "nd_malformed", 3)
    assert not [p for p in back if ICMPv6ND_NA in p]
    off = IPv6(src="2001:db8:99::2", dst=R1, hlim=255) / ICMPv6ND_NS(tgt=R1) \
        / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    back = probe(lab, router, [to_router(lab, off)], "nd_not_on_link", 1)
    assert not [p for p in back if ICMPv6ND_NA in p]


def test_ip6_header_checks(lab: RouterLab, router: RunningRouter) -> None:
    mac = host_mac(lab, "h1")
    eth = Ether(dst=router_mac(1), src=mac, type=0x86DD)
    ok = IPv6(src=H1, dst=R1) / ICMPv6EchoRequest(id=7)
    probe(lab, router, [bytes(eth / Raw(bytes(ok)[:30]))], "ip6_too_short", 1)
    wrong = bytearray(bytes(ok))
    wrong[0] = 0x45
    probe(lab, router, [bytes(eth / Raw(bytes(wrong)))], "ip6_bad_version", 1)
    longer = bytearray(bytes(ok))
    longer[4:6] = (200).to_bytes(2, "big")
    probe(lab, router, [bytes(eth / Raw(bytes(longer)))], "ip6_bad_length", 1)
    probe(lab, router, [to_router(lab, IPv6(src="ff02::1", dst=R1) / ICMPv6EchoRequest())],
          "ip6_martian_source", 1)
    probe(lab, router, [to_router(lab, IPv6(src=H1, dst="::1") / ICMPv6EchoRequest())],
          "ip6_martian_destination", 1)


def test_icmp6_checksum_is_checked(lab: RouterLab, router: RunningRouter) -> None:
    pkt = IPv6(src=H1, dst=R1) / ICMPv6EchoRequest(id=8, cksum=0x1234)
    back = probe(lab, router, [to_router(lab, pkt)], "icmp_malformed", 1)
    assert not [p for p in back if ICMPv6EchoReply in p]
    # the same request with its checksum right is answered
    with Sniffer(lab.host("h1").netns, "tap1") as s1:
        s1.send(to_router(lab, IPv6(src=H1, dst=R1) / ICMPv6EchoRequest(id=8)))
        assert s1.collect(lambda p: ICMPv6EchoReply in p and p[ICMPv6EchoReply].id == 8,
                          timeout=2)
