"""Router Advertisements: a Linux host configures itself from the router.

h1 (SLAAC, accept_ra=2) --tap1 (ra = true, 2001:db8:1::1/64)-- router --tap2-- h2 2001:db8:2::2

h1 has no static IPv6 address: it solicits, the router advertises its /64,
h1 forms an address (modified EUI-64) and takes a default route via the
router's link-local address, then pings h2 across.  rdisc6 (ndisc6) reads
an advertisement as an operator would; scapy checks its fields and a
malformed solicitation; stopping the router sends router lifetime 0.
"""
from __future__ import annotations

import socket
import time
from scapy.layers.inet6 import (ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptMTU, ICMPv6NDOptPrefixInfo,
                                ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import Ether

from forwarder import netns as nn
from forwarder.lab.tomlwrite import to_toml
from tests.routerlab import RunningRouter, lab_doc, router_mac
from tests.topology import RouterLab, make_lab, requires_netns
from tests.wire import Sniffer, host_ipv6, host_mac

pytestmark = requires_netns

R1, R2, H2 = "2001:db8:1::1", "2001:db8:2::1", "2001:db8:2::2"
RTPROT_RA = 9


def slaac_host(lab: RouterLab, host: str) -> None:
    """IPv6 on, addresses and routes from advertisements (accept_ra=2 takes
    them even where forwarding is on), no DAD."""
    h = lab.host(host)
    for key, value in (("accept_dad", 0), ("accept_ra", 2), ("autoconf", 1),
                       ("router_solicitations", 3), ("router_solicitation_interval", 1),
                       ("disable_ipv6", 0)):
        nn._write_proc(h.netns, f"/proc/sys/net/ipv6/conf/{h.ifname}/{key}", value)


def global_addresses(lab: RouterLab, host: str) -> list[str]:
    with nn.iproute(lab.host(host).netns) as ipr:
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET6)
                if a["scope"] == 0]


def default_route(lab: RouterLab, host: str) -> tuple[str, int] | None:
    with nn.iproute(lab.host(host).netns) as ipr:
        for r in ipr.get_routes(family=socket.AF_INET6):
            if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY"):
                return r.get_attr("RTA_GATEWAY"), r["proto"]
    return None


def drain(s: Sniffer, errors: int = 3) -> list:
    """Every frame the sniffer still holds, past the link going down."""
    out = []
    while errors:
        try:
            out.append(s.recv())
        except socket.timeout:
            break
        except OSError:
            errors -= 1
    return out


def _ra_router(lab: RouterLab, tmp_path, ra: bool = True) -> RunningRouter:
    doc = lab_doc(lab, tmp_path / f"{lab.name}.sock",
                  addresses={"tap1": [f"{R1}/64"], "tap2": [f"{R2}/64"]})
    doc["interface"][0]["ra"] = ra
    r = lab.start_router(tmp_path, to_toml(doc), kind=RunningRouter)
    assert isinstance(r, RunningRouter)
    return r


def test_a_linux_host_configures_itself_and_routes_through_the_router(tmp_path) -> None:
    with nn.Topology() as topo:
        lab = make_lab(topo, n_hosts=2)
        r = _ra_router(lab, tmp_path)
        try:
            host_ipv6(lab, "h2", H2, gateway=R2)
            slaac_host(lab, "h1")
            ll = next(i["link_local"] for i in r.stats()["interfaces"] if i["name"] == "tap1")
            r.wait_for(lambda: any(a.startswith("2001:db8:1:") for a in global_addresses(lab, "h1")),
                       timeout=15, what="h1 forms an address from the advertised /64")
            gw = r.wait_for(lambda: default_route(lab, "h1"), timeout=10,
                            what="h1 has a default route from the advertisement")
            assert gw == (ll, RTPROT_RA)                     # via our link-local, from an RA
            cp = lab.run("h1", ["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", H2])
            assert cp.returncode == 0, cp.stdout + cp.stderr
            st = next(i for i in r.stats()["interfaces"] if i["name"] == "tap1")
            assert st["ra"] and st["ra_sent"] >= 1 and st["rs_received"] >= 1

            # rdisc6 reads an advertisement as an operator would
            cp = lab.run("h1", ["rdisc6", "-1", "-w", "4000", "tap1"], timeout=20)
            assert cp.returncode == 0, cp.stdout + cp.stderr
            out = " ".join(cp.stdout.split())
            for want in ("Hop limit : 64", "Router lifetime : 1800 (0x00000708) seconds",
                         "Prefix : 2001:db8:1::/64", "On-link : Yes", "Autonomous address conf.: Yes",
                         "MTU : 1500 bytes (valid)", f"from {ll}",
                         f"Source link-layer address: {router_mac(1).upper()}"):
                assert want in out, (want, cp.stdout)

            # stopping sends router lifetime 0 (then the TAP goes: the socket
            # reports the link down once, and still holds what came before)
            with Sniffer(lab.host("h1").netns, "tap1") as s1:
                code, out = r.stop()
                assert code == 0, out
                last = [p for p in drain(s1) if ICMPv6ND_RA in p]
            assert last and last[-1][ICMPv6ND_RA].routerlifetime == 0
        finally:
            if r.proc.poll() is None:
                r.stop()


def test_advertisement_fields_and_a_malformed_solicitation(tmp_path) -> None:
    """A solicitation with hop limit 255 is answered within ~3 s by an
    advertisement from the link-local address to all-nodes, hop limit 255,
    the prefix /64 (on-link, autonomous, 30 d / 7 d), the MTU and the MAC;
    one with hop limit 254 counts as nd_malformed and is not answered."""
    with nn.Topology() as topo:
        lab = make_lab(topo, n_hosts=2)
        r = _ra_router(lab, tmp_path)
        try:
            ll = next(i["link_local"] for i in r.stats()["interfaces"] if i["name"] == "tap1")
            mac = host_mac(lab, "h1")
            rs = lambda hlim: bytes(Ether(dst="33:33:00:00:00:02", src=mac)  # noqa: E731
                                    / IPv6(src="::", dst="ff02::2", hlim=hlim) / ICMPv6ND_RS())
            d0 = r.stats()["drops"]["nd_malformed"]
            with Sniffer(lab.host("h1").netns, "tap1") as s1:
                time.sleep(0.3)                              # the first unsolicited one goes by
                s1.send(rs(254))
                r.wait_for(lambda: r.stats()["drops"]["nd_malformed"] == d0 + 1, what="nd_malformed")
                before = next(i["rs_received"] for i in r.stats()["interfaces"] if i["name"] == "tap1")
                s1.send(rs(255))
                got = s1.collect(lambda p: ICMPv6ND_RA in p, timeout=5, want=3)
            after = next(i["rs_received"] for i in r.stats()["interfaces"] if i["name"] == "tap1")
            assert after == before + 1
            assert got
            ra = got[-1]
            assert (ra[IPv6].src, ra[IPv6].dst, ra[IPv6].hlim) == (ll, "ff02::1", 255)
            assert ra[Ether].dst == "33:33:00:00:00:01"
            assert ra[ICMPv6ND_RA].routerlifetime == 1800 and ra[ICMPv6ND_RA].chlim == 64
            pi = ra[ICMPv6NDOptPrefixInfo]
            assert (pi.prefix, pi.prefixlen, pi.L, pi.A) == ("2001:db8:1::", 64, 1, 1)
            assert (pi.validlifetime, pi.preferredlifetime) == (2592000, 604800)
            assert ra[ICMPv6NDOptMTU].mtu == 1500
            assert ra[ICMPv6NDOptSrcLLAddr].lladdr == router_mac(1)
        finally:
            code, out = r.stop()
            assert code == 0, out
