"""Forwarding-path details the other modules do not pin down, each checked on
the wire: fragments (offsets, MF, 8-byte payloads, copied options, TTL),
echo replies and ICMP errors (fields, source address, IDs, rate limiter),
ARP (reply fields, merge rule, aging, request pacing, hold queue order, the
table's backward-shift deletion), Ethernet padding, next-hop choice.
Each test is what kills one or more entries of tests/mutations/dataplane_paths.toml.

h1 (10.1.0.2, 10.11.0.2) --tap1-- router --tap3 (MTU 1280)-- h3 (10.3.0.2)
                                    |--tap2-- h2 (10.2.0.2)

The router has two addresses on tap1 (10.1.0.1/24, 10.11.0.1/24) and a
route 10.20.0.0/16 via h3.  Probes are crafted frames sent from a host's side
of its TAP (tests/wire.py); waits are bounded, absence is a short collect
after a later frame on the same path arrived or a counter showed the probe
was handled, and timing is only ever checked as a lower bound.
"""
from __future__ import annotations

import socket
import threading
import time
from ipaddress import IPv4Address
from typing import Callable, Iterator

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPOption_NOP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import checksum

from forwarder import netns as nn
from tests.routerlab import RunningRouter, router_mac, start_router
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401
from tests.wire import arp_frame, host_mac, sniffers, to_router, udp_socket

pytestmark = requires_netns

ROUTES = [{"prefix": "10.20.0.0/16", "via": "10.3.0.2"}]
SECONDARY = "10.11.0.1/24"          # the router's second address on tap1
H1_SECONDARY = "10.11.0.2/24"
ROUTER_TTL = 77                     # net.inet.ip.ttl while a test checks it
Match = Callable[[Ether], bool]


@pytest.fixture(scope="module")
def lab(topology: nn.Topology) -> RouterLab:  # noqa: F811
    return make_lab(topology, mtus=(1500, 1500, 1280))


@pytest.fixture(scope="module")
def router(lab: RouterLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRouter]:
    r = start_router(lab, tmp_path_factory.mktemp("router"), routes=ROUTES,
                     addresses={"tap1": [SECONDARY]})
    h1 = lab.host("h1")
    nn.configure_host(h1.ifname, h1.netns, [H1_SECONDARY])
    yield r
    code, out = r.stop()
    assert code == 0, out


# --- helpers ---------------------------------------------------------------------------

def arp_entry(router: RunningRouter, ip: str) -> dict | None:
    return next((e for e in router.call("arp.list") if e["ip"] == ip), None)


def cksum_ok(ip: IP) -> bool:
    """The IPv4 header checksum of a received packet is right."""
    return checksum(bytes(ip)[:ip.ihl * 4]) == 0


def icmp_cksum_ok(ip: IP) -> bool:
    """The ICMP checksum (over the datagram's payload) is right."""
    return checksum(bytes(ip)[ip.ihl * 4:ip.len]) == 0


def cut(datagram: bytes, sizes: list[int]) -> list[IP]:
    """Fragments of a whole datagram (20-byte header, no options): payload
    pieces of ``sizes`` bytes (multiples of 8 but the last)."""
    ip = IP(datagram)
    payload = datagram[20:]
    out, off = [], 0
    for k, n in enumerate(sizes):
        last = k == len(sizes) - 1
        out.append(IP(bytes(IP(src=ip.src, dst=ip.dst, id=ip.id, ttl=ip.ttl, proto=ip.proto,
                               flags=0 if last else "MF", frag=off // 8)
                            / Raw(payload[off:off + n]))))
        off += n
    assert off == len(payload)
    return out


def reassemble(frags: list[Ether]) -> bytes:
    """The payload of fragments, in offset order, checked to be contiguous."""
    data = b""
    for f in sorted(frags, key=lambda f: f[IP].frag):
        assert f[IP].frag * 8 == len(data), [(g[IP].frag, g[IP].len) for g in frags]
        data += bytes(f[IP])[f[IP].ihl * 4:f[IP].len]
    return data


# --- fragmentation (RFC 791) ------------------------------------------------------------

def test_refragmented_fragments_keep_offsets_mf_and_8_byte_payloads(lab, router):
    """Three fragments from h1 (1480 + 1480 + 100 bytes) are cut again for
    h3's MTU of 1280: five fragments, offsets counted from the original's,
    MF on every one but the very last, payloads a multiple of 8 bytes, the
    TTL decremented once and every header checksum right."""
    payload = bytes((i * 7) & 0xFF for i in range(3060 - 8))
    whole = bytes(IP(src="10.1.0.2", dst="10.3.0.2", id=0x5A01, ttl=30)
                  / UDP(sport=7, dport=40101) / payload)
    frags = cut(whole, [1480, 1480, 100])
    with sniffers(lab, "h1", "h3") as (s1, s3):
        for f in frags:
            s1.send(to_router(lab, "h1", f))
        got = s3.collect(lambda p: IP in p and p[IP].id == 0x5A01 and p[IP].src == "10.1.0.2",
                         timeout=3, want=5)
    layout = sorted((p[IP].frag * 8, p[IP].len - 20, bool(p[IP].flags.MF)) for p in got)
    assert layout == [(0, 1256, True), (1256, 224, True), (1480, 1256, True),
                      (2736, 224, True), (2960, 100, False)], layout
    for p in got:
        assert p[IP].len <= 1280
        assert p[IP].ttl == 29
        assert cksum_ok(p[IP]), p[IP].frag
    assert reassemble(got) == whole[20:]


def test_later_fragments_carry_only_the_copied_options(lab, router):
    """RFC 791: the first fragment keeps every option; the others only those
    with the copied flag (router alert, 0x94), not record route (7), not the
    no-ops, with the header length and padding to match."""
    opts = [IPOption_NOP(), IPOption_RR(pointer=4, routers=["0.0.0.0", "0.0.0.0"]),
            IPOption_Router_Alert()]
    payload = bytes(range(256)) * 5 + b"x" * 120
    sent = IP(bytes(IP(src="10.1.0.2", dst="10.3.0.2", id=0x5A02, ttl=20, options=opts)
                    / UDP(sport=7, dport=40102) / payload))
    hl = sent.ihl * 4
    assert sent.len <= 1500 and hl == 36
    with sniffers(lab, "h1", "h3") as (s1, s3):
        s1.send(to_router(lab, "h1", sent))
        got = s3.collect(lambda p: IP in p and p[IP].id == 0x5A02, timeout=3, want=2)
    assert len(got) == 2, [p.summary() for p in got]
    first, later = sorted(got, key=lambda p: p[IP].frag)
    raw_sent = bytes(sent)
    assert first[IP].frag == 0 and first[IP].ihl * 4 == hl
    assert bytes(first[IP])[20:hl] == raw_sent[20:hl]
    assert later[IP].ihl == 6, later[IP].ihl
    assert bytes(later[IP])[20:24] == bytes.fromhex("94040000")
    for p in got:
        assert cksum_ok(p[IP])
        assert p[IP].len <= 1280
    data = b""
    for p in (first, later):
        assert p[IP].frag * 8 == len(data)
        data += bytes(p[IP])[p[IP].ihl * 4:p[IP].len]
    assert data == raw_sent[hl:]


def test_host_unreachable_for_a_held_fragment_comes_from_its_ingress_address(lab, router):
    """A datagram from h2 cut into fragments for a silent neighbour on h3's
    link: when ARP gives up, the first fragment gets host unreachable from
    the address of the link it came in on (10.2.0.1), the others nothing."""
    probe = IP(src="10.2.0.2", dst="10.3.0.99", id=0x5A03) / UDP(sport=8, dport=40103) / (
        b"h" * 1400)
    unreach: Match = lambda p: (p.src == router_mac(2) and ICMP in p and p[ICMP].type == 3
                                and bytes(p[ICMP].payload)[4:6] == b"\x5a\x03")
    try:
        with router.tunables({"net.link.ether.inet.maxtries": 1}), sniffers(lab, "h2") as (s2,):
            s2.send(to_router(lab, "h2", probe))
            got = s2.collect(unreach, timeout=5, want=1)
            router.wait_for(lambda: arp_entry(router, "10.3.0.99") is None, timeout=3,
                            what="the entry for 10.3.0.99 removed")
            got += s2.collect(unreach, timeout=0.3)
    finally:
        router.forget_arp("10.3.0.99")
    assert len(got) == 1, [p.summary() for p in got]
    assert (got[0][ICMP].type, got[0][ICMP].code) == (3, 1)
    assert (got[0][IP].src, got[0][IP].dst) == ("10.2.0.1", "10.2.0.2")


def test_a_datagram_of_exactly_the_mtu_passes_whole(lab, router):
    """1280 bytes with DF to h3's 1280-byte link: forwarded as is."""
    pkt = IP(src="10.1.0.2", dst="10.3.0.2", id=0x5A04, flags="DF") / UDP(sport=7, dport=40104) / (
        b"m" * (1280 - 28))
    before = router.call("stats")["drops"]["needfrag_df_set"]
    with sniffers(lab, "h1", "h3") as (s1, s3):
        s1.send(to_router(lab, "h1", pkt))
        got = s3.collect(lambda p: UDP in p and p[UDP].dport == 40104, timeout=3)
    assert got, "the 1280-byte datagram did not reach h3"
    assert got[0][IP].len == 1280 and got[0][IP].frag == 0 and not got[0][IP].flags.MF
    assert router.call("stats")["drops"]["needfrag_df_set"] == before


def test_frag_needed_carries_the_next_hops_mtu(lab, router):
    """1400 bytes with DF from h1 (MTU 1500) to h3 (MTU 1280): ICMP 3/4 with
    the next hop's MTU, 1280, from the ingress address."""
    pkt = IP(src="10.1.0.2", dst="10.3.0.2", id=0x5A05, flags="DF") / UDP(sport=7, dport=40105) / (
        b"n" * 1372)
    with sniffers(lab, "h1") as (s1,):
        s1.send(to_router(lab, "h1", pkt))
        got = s1.collect(lambda p: p.src == router_mac(1) and ICMP in p and p[ICMP].type == 3,
                         timeout=3)
    assert got, "no frag needed"
    icmp = got[0][ICMP]
    assert icmp.code == 4
    assert bytes(icmp)[6:8] == (1280).to_bytes(2, "big")
    assert got[0][IP].src == "10.1.0.1"


# --- echo replies ------------------------------------------------------------------------

def test_echo_reply_has_fresh_ttl_clear_flags_and_valid_checksums(lab, router):
    """The reply to an echo request with TTL 5 and DF: TTL net.inet.ip.ttl,
    flags and offset 0, both checksums right, the request's id, seq and data."""
    req = IP(src="10.1.0.2", dst="10.1.0.1", ttl=5, flags="DF", id=0x5A06) / ICMP(
        type=8, id=0x5A06, seq=3) / (b"echo-data" * 7)
    with router.tunables({"net.inet.ip.ttl": ROUTER_TTL}), sniffers(lab, "h1") as (s1,):
        s1.send(to_router(lab, "h1", req))
        got = s1.collect(lambda p: p.src == router_mac(1) and ICMP in p and p[ICMP].type == 0
                         and p[ICMP].id == 0x5A06, timeout=3)
    assert got, "no echo reply"
    ip = got[0][IP]
    assert ip.ttl == ROUTER_TTL
    assert int(ip.flags) == 0 and ip.frag == 0
    assert cksum_ok(ip) and icmp_cksum_ok(ip)
    assert ip[ICMP].seq == 3 and bytes(ip[ICMP].payload) == b"echo-data" * 7


def test_large_echo_reply_to_a_df_request_is_fragmented_via_the_gateway(lab, router):
    """An echo request with DF from 10.20.0.5 (behind h3, link MTU 1280),
    1400 bytes: the reply is fragmented (its DF is clear) and goes to the
    gateway's MAC, data intact."""
    data = bytes((i * 13) & 0xFF for i in range(1372))
    req = IP(src="10.20.0.5", dst="10.1.0.1", flags="DF", id=0x5A07) / ICMP(
        type=8, id=0x5A07, seq=1) / data
    with sniffers(lab, "h1", "h3") as (s1, s3):
        s1.send(to_router(lab, "h1", req))
        got = s3.collect(lambda p: IP in p and p[IP].dst == "10.20.0.5" and p[IP].src == "10.1.0.1",
                         timeout=3, want=2)
    assert len(got) == 2, [p.summary() for p in got]
    assert all(p.dst == host_mac(lab, "h3") for p in got)
    assert all(not p[IP].flags.DF for p in got)
    icmp = reassemble(got)
    assert icmp[0] == 0 and icmp[8:] == data


# --- ICMP errors -------------------------------------------------------------------------

def _errors_at_h1(lab: RouterLab, pkts: list, want: int, timeout: float = 2.0) -> list[Ether]:
    with sniffers(lab, "h1") as (s1,):
        for p in pkts:
            s1.send(to_router(lab, "h1", p))
        return s1.collect(lambda p: p.src == router_mac(1) and ICMP in p
                          and p[ICMP].type in (3, 11), timeout=timeout, want=want)


def test_icmp_error_comes_from_the_ingress_address_in_the_senders_subnet(lab, router):
    """tap1 has 10.1.0.1/24 and 10.11.0.1/24: an error to 10.11.0.2 comes
    from 10.11.0.1, one to 10.1.0.2 from 10.1.0.1."""
    pkts = [IP(src=src, dst="10.99.0.1") / UDP(sport=7, dport=40110) for src in
            ("10.11.0.2", "10.1.0.2")]
    got = _errors_at_h1(lab, pkts, want=2)
    pairs = sorted((p[IP].src, p[IP].dst) for p in got)
    assert pairs == [("10.1.0.1", "10.1.0.2"), ("10.11.0.1", "10.11.0.2")], pairs


def test_no_icmp_error_about_a_broadcast_to_a_connected_subnet(lab, router):
    """RFC 1812 4.3.2.7: TTL 1 to 10.1.0.255 (the link it came in on) or to
    10.3.0.255 (another connected link): no time exceeded; the same to a
    host (the control, sent after them) gets one."""
    pkts = [IP(src="10.1.0.2", dst="10.1.0.255", ttl=1) / UDP(sport=1, dport=40111),
            IP(src="10.1.0.2", dst="10.3.0.255", ttl=1) / UDP(sport=3, dport=40111),
            IP(src="10.1.0.2", dst="10.3.0.2", ttl=1) / UDP(sport=2, dport=40111)]
    got = _errors_at_h1(lab, pkts, want=3, timeout=1.5)
    quoted = [bytes(p[ICMP].payload)[16:20] for p in got]
    assert quoted == [IPv4Address("10.3.0.2").packed], [p.summary() for p in got]


def test_icmp_errors_have_distinct_ids_and_the_routers_ttl(lab, router):
    """Three errors: three IP IDs, each with TTL net.inet.ip.ttl whatever
    the TTL of the datagram they are about."""
    pkts = [IP(src="10.1.0.2", dst="10.99.0.2", ttl=t) / UDP(sport=t, dport=40112)
            for t in (9, 200, 64)]
    with router.tunables({"net.inet.ip.ttl": ROUTER_TTL}):
        got = _errors_at_h1(lab, pkts, want=3)
    assert len(got) == 3
    assert len({p[IP].id for p in got}) == 3, [p[IP].id for p in got]
    assert [p[IP].ttl for p in got] == [ROUTER_TTL] * 3


def test_icmp_bucket_refills_after_a_burst_and_is_capped_while_idle(lab, router):
    """icmplim=5: after three idle seconds a burst still gets at most the
    bucket (5) plus what refills while it is handled -- tokens do not pile
    up.  Then, with the bucket empty, a steady stream of probes gets errors
    again, at no more than 5 a second (the errors' kernel timestamps at h1:
    a lower bound on the time they span)."""
    sock = udp_socket(lab.host("h1").netns)
    errors: Match = lambda p: (p.src == router_mac(1) and ICMP in p and p[ICMP].type == 3
                               and bytes(p[ICMP].payload)[16:19] == bytes([10, 99, 2]))
    try:
        with router.tunables({"net.inet.icmp.icmplim": 5}), sniffers(lab, "h1") as (s1,):
            time.sleep(3.0)                      # idle: a full bucket stays at 5
            before = router.call("stats")["icmp"]
            t0 = time.monotonic()
            for i in range(40):
                sock.sendto(b"burst", ("10.99.1.%d" % (i + 1), 9))
            after = router.wait_icmp_handled(before, 40, timeout=10)
            span = time.monotonic() - t0
            sent = after["errors_sent"] - before["errors_sent"]
            assert 5 <= sent <= 5 + 5 * span + 1, (sent, span)
            # The bucket is empty now: a probe every 20 ms for 1.5 s.
            for i in range(75):
                sock.sendto(b"again", ("10.99.2.%d" % (i + 1), 9))
                time.sleep(0.02)
            got = s1.collect(errors, timeout=1.0, want=100)
    finally:
        sock.close()
    assert len(got) >= 2, f"{len(got)} errors for 1.5 s of probes: the bucket does not refill"
    times = [float(p.time) for p in got]
    # len(got) - 1 tokens were taken after the first error, at most one of
    # them left over from before it: the rest took 1/5 s each to refill.
    assert len(got) - 3 <= 5 * (times[-1] - times[0]), (len(got), times[-1] - times[0])


# --- ARP -----------------------------------------------------------------------------------

FAKE = "02:00:00:00:aa:21"
FAKE2 = "02:00:00:00:aa:22"


def test_arp_reply_fields(lab, router):
    """A request for 10.1.0.1 (broadcast, then unicast) is answered to the
    asker: Ethernet to its MAC from ours; op 2; sender = our MAC and the
    address asked; target = the asker's MAC and address."""
    answer: Match = lambda p: ARP in p and p.src == router_mac(1) and p[ARP].pdst == "10.1.0.60"
    try:
        for dst in ("ff:ff:ff:ff:ff:ff", router_mac(1)):
            with sniffers(lab, "h1") as (s1,):
                s1.send(arp_frame(1, FAKE, "10.1.0.60", "10.1.0.1", dst=dst))
                got = s1.collect(answer, timeout=2)
            assert got, f"request to {dst} not answered"
            p = got[0]
            assert (p.dst, p.src) == (FAKE, router_mac(1))
            a = p[ARP]
            assert a.op == 2
            assert (a.hwsrc, a.psrc) == (router_mac(1), "10.1.0.1")
            assert (a.hwdst, a.pdst) == (FAKE, "10.1.0.60")
    finally:
        router.forget_arp("10.1.0.60")


def test_arp_for_a_secondary_address_and_from_it(lab, router):
    """A request for the second address of tap1 is answered from it; a
    request the router sends for a neighbour in that subnet carries it as
    the sender's address."""
    try:
        with sniffers(lab, "h1") as (s1,):
            s1.send(arp_frame(1, FAKE, "10.11.0.50", "10.11.0.1"))
            got = s1.collect(lambda p: ARP in p and p[ARP].op == 2 and p[ARP].pdst == "10.11.0.50",
                             timeout=2)
        assert got and got[0][ARP].psrc == "10.11.0.1", [p.summary() for p in got]
        with sniffers(lab, "h1", "h2") as (s1, s2):
            s2.send(to_router(lab, "h2", IP(src="10.2.0.2", dst="10.11.0.77") / UDP(dport=40113)))
            asks = s1.collect(lambda p: ARP in p and p[ARP].op == 1 and p[ARP].pdst == "10.11.0.77",
                              timeout=2)
        assert asks, "no ARP request for 10.11.0.77"
        assert (asks[0][ARP].psrc, asks[0][ARP].hwsrc) == ("10.11.0.1", router_mac(1))
    finally:
        router.forget_arp("10.11.0.50", "10.11.0.77")


def test_arp_merge_rule(lab, router):
    """RFC 826: a sender is learned only from ARP for one of our addresses,
    and a known sender's MAC is updated from any ARP it sends."""
    try:
        with sniffers(lab, "h1") as (s1,):
            s1.send(arp_frame(1, FAKE, "10.1.0.61", "10.1.0.200"))     # not for us
            s1.send(arp_frame(1, FAKE, "10.1.0.62", "10.1.0.1"))       # for us: sent after
            router.wait_for(lambda: arp_entry(router, "10.1.0.62"), timeout=3,
                            what="10.1.0.62 learned")
            assert arp_entry(router, "10.1.0.61") is None, "learned from ARP not for us"
            assert arp_entry(router, "10.1.0.62")["mac"] == FAKE
            # The known sender moves to another MAC, in ARP for someone else.
            s1.send(arp_frame(1, FAKE2, "10.1.0.62", "10.1.0.200"))
            router.wait_for(lambda: arp_entry(router, "10.1.0.62")["mac"] == FAKE2, timeout=3,
                            what="10.1.0.62 updated to its new MAC")
    finally:
        router.forget_arp("10.1.0.61", "10.1.0.62")


def test_held_packets_are_sent_in_arrival_order_once_resolved(lab, router):
    """Four packets wait for 10.3.0.66; the reply (from h3's link) sends them,
    oldest first, to the MAC it gave."""
    try:
        with sniffers(lab, "h1", "h3") as (s1, s3):
            for sport in (1, 2, 3, 4):
                s1.send(to_router(lab, "h1", IP(src="10.1.0.2", dst="10.3.0.66")
                              / UDP(sport=sport, dport=40114)))
            router.wait_for(lambda: (arp_entry(router, "10.3.0.66") or {}).get("held") == 4,
                            timeout=3, what="four packets held for 10.3.0.66")
            s3.send(arp_frame(2, FAKE, "10.3.0.66", "10.3.0.1", dst=router_mac(3),
                              hwdst=router_mac(3)))
            got = s3.collect(lambda p: UDP in p and p[UDP].dport == 40114, timeout=3, want=4)
    finally:
        router.forget_arp("10.3.0.66")
    assert [p[UDP].sport for p in got] == [1, 2, 3, 4]
    assert all(p.dst == FAKE for p in got)


def test_a_learned_entry_lives_max_age(lab, router):
    """With max_age=30 an entry learned now expires in (20, 30] seconds."""
    try:
        with router.tunables({"net.link.ether.inet.max_age": 30}), sniffers(lab, "h1") as (s1,):
            s1.send(arp_frame(1, FAKE, "10.1.0.63", "10.1.0.1"))
            e = router.wait_for(lambda: arp_entry(router, "10.1.0.63"), timeout=3,
                                what="10.1.0.63 learned")
        assert 20 < e["expires_in"] <= 30, e
    finally:
        router.forget_arp("10.1.0.63")


def test_arp_requests_at_most_once_a_second_per_neighbour(lab, router):
    """Five packets at once for a silent neighbour: one request, the next at
    least a second later (kernel timestamps; lower bounds only)."""
    try:
        with sniffers(lab, "h1", "h3") as (s1, s3):
            for sport in range(1, 6):
                s1.send(to_router(lab, "h1", IP(src="10.1.0.2", dst="10.3.0.67")
                              / UDP(sport=sport, dport=40115)))
            asks = s3.collect(lambda p: ARP in p and p[ARP].pdst == "10.3.0.67", timeout=3, want=2)
    finally:
        router.forget_arp("10.3.0.67")
    assert asks, "no ARP request"
    times = [float(a.time) for a in asks]
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:])), times


def _arp_hash(ip: int, ifindex: int = 0) -> int:
    """forwarder/netinet/if_ether.pxi arp_hash (DP_ARP_SIZE 4096)."""
    return (((ip * 2654435761) & 0xFFFFFFFF) ^ (ifindex * 40503)) & 4095


def _colliding(home: int, n: int) -> list[str]:
    """n addresses in 10.0.0.0/8 whose ARP slot (on interface 0) is ``home``."""
    out = []
    a = int(IPv4Address("10.0.0.2"))
    while len(out) < n:
        if _arp_hash(a) == home:
            out.append(str(IPv4Address(a)))
        a += 1
    return out


@pytest.mark.parametrize("home", [100, 4095], ids=["run", "wrapping-run"])
def test_arp_delete_keeps_every_other_entry_reachable(home):
    """Three neighbours that hash to one slot (at the end of the table: the
    probe run wraps to slot 0); deleting the first must leave the others
    findable (arp -d finds each exactly once) and a request from one of them
    must refresh its entry, not add a second one.  In-process: a Dataplane on
    a socketpair, so the table holds only these entries."""
    from forwarder.dataplane import Dataplane
    from forwarder.route import RouteTable

    mac = bytes.fromhex("020000000101")
    dp = Dataplane(RouteTable())
    port, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    port.setblocking(False)
    peer.settimeout(2)
    dp.add_interface(port.fileno(), "arp0", mac, 1500, [("10.0.0.1", 8)])
    thread = threading.Thread(target=dp.run, name="dataplane-arp", daemon=True)
    thread.start()
    a, b, c = _colliding(home, 3)

    def ask(ip: str) -> None:
        peer.send(arp_frame(1, FAKE, ip, "10.0.0.1"))
        peer.recv(2048)                              # the reply: handled

    def count(ip: str) -> int:
        return sum(e["ip"] == ip for e in dp.arp_entries())

    try:
        for ip in (a, b, c):
            ask(ip)
        assert [count(ip) for ip in (a, b, c)] == [1, 1, 1]
        assert dp.arp_delete(a) == 1
        assert [count(ip) for ip in (a, b, c)] == [0, 1, 1], dp.arp_entries()
        ask(b)                                       # known: refreshed in place
        assert dp.stats()["arp"]["entries"] == 2
        assert [count(ip) for ip in (a, b, c)] == [0, 1, 1], dp.arp_entries()
        assert dp.arp_delete(c) == 1
        assert dp.arp_delete(b) == 1
        assert dp.stats()["arp"]["entries"] == 0 and dp.arp_entries() == []
    finally:
        dp.stop()
        thread.join(5)
        dp.flush()
        assert not thread.is_alive()
        del dp
        port.close()
        peer.close()


# --- Ethernet, next hop --------------------------------------------------------------------

def test_ethernet_padding_is_trimmed(lab, router):
    """Bytes after the IP datagram in the frame (padding) are not forwarded,
    and not taken into an echo request's checksum."""
    pad = b"\xa5" * 30
    udp = IP(src="10.1.0.2", dst="10.3.0.2") / UDP(sport=7, dport=40116) / b"pad"
    echo = IP(src="10.1.0.2", dst="10.1.0.1") / ICMP(type=8, id=0x5A16, seq=1) / b"pad"
    with sniffers(lab, "h1", "h3") as (s1, s3):
        s1.send(to_router(lab, "h1", udp) + pad)
        s1.send(to_router(lab, "h1", echo) + pad)
        got = s3.collect(lambda p: UDP in p and p[UDP].dport == 40116, timeout=3)
        reply = s1.collect(lambda p: p.src == router_mac(1) and ICMP in p and p[ICMP].type == 0
                           and p[ICMP].id == 0x5A16, timeout=3)
    assert got, "the padded datagram did not reach h3"
    assert len(bytes(got[0])) == 14 + got[0][IP].len == 14 + len(bytes(udp))
    assert reply, "the padded echo request was not answered"
    assert len(bytes(reply[0])) == 14 + len(bytes(echo))


def test_a_gateway_route_is_sent_to_the_gateways_mac(lab, router):
    """10.20.0.0/16 via 10.3.0.2: a datagram to 10.20.0.5 goes to h3's MAC,
    and nobody is asked for 10.20.0.5."""
    pkt = IP(src="10.1.0.2", dst="10.20.0.5", ttl=9) / UDP(sport=7, dport=40117)
    with sniffers(lab, "h1", "h3") as (s1, s3):
        s1.send(to_router(lab, "h1", pkt))
        got = s3.collect(lambda p: (UDP in p and p[UDP].dport == 40117)
                         or (ARP in p and p[ARP].pdst == "10.20.0.5"), timeout=3)
    router.forget_arp("10.20.0.5")
    assert got and UDP in got[0], [p.summary() for p in got]
    assert got[0].dst == host_mac(lab, "h3") and got[0][IP].ttl == 8
