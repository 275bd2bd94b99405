"""The router forwards between real kernel hosts as RFC 1812 asks.

h1 (10.1.0.2) --tap1-- router --tap3 (MTU 1280)-- h3 (10.3.0.2)
                         |--tap2-- h2 (10.2.0.2)

Every test runs twice: with the TAPs' offloads on (the default: virtio-net
header, partial checksums and TSO super-frames from the hosts' kernels) and
with `offload = false` on every interface (one frame per MTU, checksums
complete), the way the router ran before offloads.
"""
from __future__ import annotations

import socket
import time

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether

from tests.routerlab import RunningRouter, router_mac, start_router
from tests.topology import make_lab, requires_netns, topology  # noqa: F401
from tests.wire import Sniffer, host_mac, iperf3, to_router, udp_socket

pytestmark = requires_netns

ROUTES = [
    {"prefix": "10.20.0.0/16", "via": "10.2.0.2"},
    {"prefix": "192.0.2.0/24", "type": "blackhole"},
    {"prefix": "198.51.100.0/24", "type": "unreachable"},
    {"prefix": "203.0.113.0/24", "type": "prohibit"},
]


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, mtus=(1500, 1500, 1280))


@pytest.fixture(scope="module", params=[True, False], ids=["offload", "no-offload"])
def router(lab, tmp_path_factory, request):
    r = start_router(lab, tmp_path_factory.mktemp("router"), routes=ROUTES,
                     offload=request.param)
    assert all(i["vnet_hdr"] == request.param for i in r.stats()["interfaces"])
    yield r
    code, out = r.stop()
    assert code == 0, out
    assert "mbuf clusters in use" in out


def drops(r: RunningRouter) -> dict[str, int]:
    return r.stats()["drops"]


def test_first_ping_through_a_cold_router_is_not_lost(lab, router):
    cp = lab.ping("h1", "10.3.0.2", count=1, wait=3)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "1 received" in cp.stdout


def test_ping_between_every_pair_of_hosts(lab, router):
    for src, dst in (("h1", "10.2.0.2"), ("h2", "10.3.0.2"), ("h3", "10.1.0.2")):
        cp = lab.ping(src, dst, count=2, wait=2)
        assert cp.returncode == 0, f"{src} -> {dst}: {cp.stdout}"


def test_echo_to_any_router_address_is_answered_from_that_address(lab, router):
    """Each echo request gets its reply from the address it asked, not from
    the address of the interface it came in on (ping alone does not tell:
    iputils counts a reply from another address as received)."""
    before = router.stats()["delivered_local"]
    with Sniffer(lab.host("h1").netns, "tap1") as s:
        for ident, (asked, size) in enumerate((("10.3.0.1", 56), ("10.2.0.1", 56),
                                               ("10.1.0.1", 1000)), start=0x4d00):
            s.send(to_router(lab, "h1", IP(src="10.1.0.2", dst=asked)
                             / ICMP(type=8, id=ident, seq=1) / (b"e" * size)))
            replies = s.collect(lambda p: ICMP in p and p[ICMP].type == 0 and p[ICMP].id == ident)
            assert replies, f"no echo reply for {asked}"
            ip = replies[0][IP]
            assert (ip.src, ip.dst) == (asked, "10.1.0.2")
            assert bytes(replies[0][ICMP].payload) == b"e" * size
    assert router.stats()["delivered_local"] == before + 3


def test_forwarded_packet_has_ttl_decremented_and_a_valid_checksum(lab, router):
    rx = Sniffer(lab.host("h3").netns, "tap3")
    tx = udp_socket(lab.host("h1").netns)
    try:
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 17)
        tx.sendto(b"ttl-check", ("10.3.0.2", 40001))
        got = rx.collect(lambda p: UDP in p and p[UDP].dport == 40001)
    finally:
        rx.close()
        tx.close()
    assert got, "the datagram did not arrive"
    ip = got[0][IP]
    assert ip.ttl == 16
    sent_sum = ip.chksum
    del ip.chksum
    assert IP(bytes(ip)).chksum == sent_sum
    assert got[0].src == router_mac(3)


def test_traceroute_lists_the_router(lab, router):
    cp = lab.run("h1", ["traceroute", "-n", "-q", "1", "-w", "2", "-m", "4", "10.3.0.2"], timeout=30)
    lines = [ln.split() for ln in cp.stdout.splitlines()[1:]]
    assert lines[0][:2] == ["1", "10.1.0.1"], cp.stdout
    assert lines[1][:2] == ["2", "10.3.0.2"], cp.stdout


def test_large_ping_is_fragmented_and_reassembled_by_the_far_host(lab, router):
    before = router.stats()["fragments_created"]
    cp = lab.ping("h1", "10.3.0.2", count=2, wait=2, extra=["-s", "3000", "-M", "dont"])
    assert cp.returncode == 0, cp.stdout
    assert "2 received" in cp.stdout
    assert router.stats()["fragments_created"] >= before + 4


def test_fragments_keep_the_payload_intact(lab, router):
    rx = Sniffer(lab.host("h3").netns, "tap3")
    tx = udp_socket(lab.host("h1").netns)
    payload = bytes(range(256)) * 8            # 2048 bytes: h1 fragments, the router again
    try:
        tx.sendto(payload, ("10.3.0.2", 40002))
        frags = rx.collect(lambda p: IP in p and p[IP].src == "10.1.0.2" and p[IP].proto == 17
                           and (p[IP].flags.MF or p[IP].frag), want=3)
    finally:
        rx.close()
        tx.close()
    assert len(frags) >= 2
    assert all(len(f[IP]) <= 1280 for f in frags)
    data = b"".join(bytes(f[IP].payload) for f in sorted(frags, key=lambda f: f[IP].frag))
    assert data[8:8 + len(payload)] == payload        # after the UDP header


# After the fragmentation tests: it teaches h1 the path MTU to h3.
def test_df_set_and_too_big_gets_frag_needed_with_the_mtu(lab, router):
    before = drops(router)["needfrag_df_set"]
    cp = lab.ping("h1", "10.3.0.2", count=1, wait=2, extra=["-M", "do", "-s", "1400"])
    assert cp.returncode != 0
    assert "mtu = 1280" in cp.stdout, cp.stdout
    assert drops(router)["needfrag_df_set"] == before + 1


@pytest.mark.parametrize("dst,text,reason", [
    ("10.99.0.1", "Destination Net Unreachable", "no_route"),
    ("198.51.100.7", "Destination Host Unreachable", "unreachable_route"),
    ("203.0.113.7", "Packet filtered", "prohibited_route"),
])
def test_unroutable_destinations_get_the_right_icmp_error(lab, router, dst, text, reason):
    before = drops(router)[reason]
    cp = lab.ping("h1", dst, count=1, wait=2)
    assert cp.returncode != 0
    assert text in cp.stdout, cp.stdout
    assert "From 10.1.0.1" in cp.stdout
    assert drops(router)[reason] == before + 1


def test_blackhole_route_drops_silently(lab, router):
    before = router.stats()
    cp = lab.ping("h1", "192.0.2.9", count=1, wait=1)
    assert cp.returncode != 0
    assert "From" not in cp.stdout
    after = router.stats()
    assert after["drops"]["blackhole"] == before["drops"]["blackhole"] + 1
    assert after["icmp"]["errors_sent"] == before["icmp"]["errors_sent"]


def test_ttl_expiring_gets_time_exceeded(lab, router):
    before = router.stats()
    cp = lab.ping("h1", "10.3.0.2", count=1, wait=2, extra=["-t", "1"])
    assert cp.returncode != 0
    assert "Time to live exceeded" in cp.stdout, cp.stdout
    assert "From 10.1.0.1" in cp.stdout
    after = router.stats()
    assert after["drops"]["ttl_exceeded"] == before["drops"]["ttl_exceeded"] + 1
    assert after["icmp"]["time_exceeded"] == before["icmp"]["time_exceeded"] + 1
    assert after["forwarded"] == before["forwarded"]


def _send_and_collect_errors(lab, frames: list[bytes], timeout: float = 1.0) -> list:
    """Send frames from h1; the ICMP errors the router sent back to h1."""
    with Sniffer(lab.host("h1").netns, "tap1") as s:
        for f in frames:
            s.send(f)
        return s.collect(lambda p: ICMP in p and p[IP].src == "10.1.0.1"
                         and p[ICMP].type in (3, 11), timeout=timeout, want=len(frames) + 1)


def test_icmp_error_quotes_at_most_576_bytes_in_all(lab, router):
    """RFC 1812 4.3.2.3: as much of the offending datagram as fits in 576
    bytes; the quote is the datagram as received, byte for byte."""
    sent = IP(src="10.1.0.2", dst="10.99.0.7", id=0x576) / UDP(sport=5, dport=40010) / bytes(
        i & 0xFF for i in range(1400))
    errors = _send_and_collect_errors(lab, [to_router(lab, "h1", sent)])
    assert len(errors) == 1, errors
    ip = errors[0][IP]
    assert (ip[ICMP].type, ip[ICMP].code) == (3, 0)
    assert ip.len == 576 and len(bytes(ip)) == 576
    assert bytes(ip)[28:] == bytes(sent)[:576 - 28]
    # ... and a short datagram is quoted whole.
    short = IP(src="10.1.0.2", dst="10.99.0.8") / UDP(sport=5, dport=40010) / b"short"
    errors = _send_and_collect_errors(lab, [to_router(lab, "h1", short)])
    assert len(errors) == 1 and bytes(errors[0][IP])[28:] == bytes(short)


ICMP_ERROR_TYPES = {3: "unreachable", 4: "source quench", 5: "redirect", 11: "time exceeded",
                    12: "parameter problem"}


@pytest.mark.parametrize("icmp_type", list(ICMP_ERROR_TYPES), ids=list(ICMP_ERROR_TYPES.values()))
def test_no_icmp_error_about_an_icmp_error(lab, router, icmp_type):
    """RFC 1812 4.3.2.7: an ICMP error is never sent about an ICMP error, while
    an ICMP query on the same path (the control, sent after it) gets one."""
    before = router.stats()
    error = IP(src="10.1.0.2", dst="10.99.0.9") / ICMP(type=icmp_type, code=0) / (
        IP(src="10.99.0.9", dst="10.1.0.2") / UDP(sport=9, dport=7))
    query = IP(src="10.1.0.2", dst="10.99.0.9") / ICMP(type=8, id=0x77, seq=icmp_type)
    errors = _send_and_collect_errors(lab, [to_router(lab, "h1", error), to_router(lab, "h1", query)])
    after = router.stats()
    assert after["drops"]["no_route"] == before["drops"]["no_route"] + 2
    quoted = [bytes(e[ICMP].payload)[20] for e in errors]        # the quoted ICMP type
    assert quoted == [8], quoted
    assert after["icmp"]["errors_sent"] == before["icmp"]["errors_sent"] + 1


def test_no_icmp_error_about_a_non_initial_fragment(lab, router):
    """RFC 1812 4.3.2.7: errors only about the first fragment of a datagram."""
    before = router.stats()
    first = IP(src="10.1.0.2", dst="10.99.0.10", id=0xF1, flags="MF", frag=0) / (b"a" * 64)
    later = IP(src="10.1.0.2", dst="10.99.0.10", id=0xF1, flags="MF", frag=8, proto=17) / (b"b" * 64)
    last = IP(src="10.1.0.2", dst="10.99.0.10", id=0xF1, frag=16, proto=17) / (b"c" * 64)
    errors = _send_and_collect_errors(lab, [to_router(lab, "h1", p) for p in (later, last, first)])
    after = router.stats()
    assert after["drops"]["no_route"] == before["drops"]["no_route"] + 3
    assert len(errors) == 1, [e.summary() for e in errors]
    assert bytes(errors[0][ICMP].payload)[:20] == bytes(first)[:20]
    assert after["icmp"]["errors_sent"] == before["icmp"]["errors_sent"] + 1


def bad_headers() -> dict[str, tuple[str, bytes]]:
    """Malformed IPv4 headers, each with the drop counter it must raise."""
    good = IP(src="10.1.0.2", dst="10.3.0.2", ttl=9) / UDP(sport=1, dport=9) / (b"x" * 20)
    raw = bytearray(bytes(good))

    def fix_sum(b: bytearray, hl: int = 20) -> bytes:
        b[10:12] = b"\0\0"
        s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, hl, 2))
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        b[10:12] = (~s & 0xFFFF).to_bytes(2, "big")
        return bytes(b)

    v6 = bytearray(raw)
    v6[0] = 0x65
    short_ihl = bytearray(raw)
    short_ihl[0] = 0x44
    long_ihl = bytearray(raw)
    long_ihl[0] = 0x4F
    badsum = bytearray(raw)
    badsum[10] ^= 0xFF
    too_long = bytearray(raw)
    too_long[2:4] = (len(raw) + 100).to_bytes(2, "big")
    too_short = bytearray(raw)
    too_short[2:4] = (12).to_bytes(2, "big")
    return {
        "version": ("ip_bad_version", fix_sum(v6)),
        "ihl<5": ("ip_bad_header_length", fix_sum(short_ihl, 16)),
        "ihl>frame": ("ip_bad_header_length", bytes(long_ihl)),
        "checksum": ("ip_bad_checksum", bytes(badsum)),
        "total>frame": ("ip_bad_total_length", fix_sum(too_long)),
        "total<header": ("ip_bad_total_length", fix_sum(too_short)),
        "runt": ("ip_too_short", bytes(raw[:12])),
    }


@pytest.mark.parametrize("case", list(bad_headers()))
def test_malformed_headers_are_dropped_counted_and_never_answered(lab, router, case):
    reason, ip = bad_headers()[case]
    frame = bytes(Ether(dst=router_mac(1), src=host_mac(lab, "h1"), type=0x0800)) + ip
    s1 = Sniffer(lab.host("h1").netns, "tap1")
    s3 = Sniffer(lab.host("h3").netns, "tap3")
    try:
        before = router.stats()
        s1.send(frame)
        icmp = s1.collect(lambda p: ICMP in p and p[IP].src.startswith("10.1.0.1"), timeout=0.7)
        fwd = s3.collect(lambda p: UDP in p and p[UDP].dport == 9, timeout=0.1)
        after = router.stats()
    finally:
        s1.close()
        s3.close()
    assert after["drops"][reason] == before["drops"][reason] + 1
    assert after["icmp"]["errors_sent"] == before["icmp"]["errors_sent"]
    assert not icmp and not fwd


def test_martian_sources_are_not_forwarded(lab, router):
    """Counted and dropped: nothing from a martian source reaches h3, and
    nobody is told (no ICMP error)."""
    martians = ("127.0.0.9", "0.1.2.3", "240.0.0.1", "224.0.0.5", "255.255.255.255")
    before = router.stats()
    with Sniffer(lab.host("h1").netns, "tap1") as s1, \
            Sniffer(lab.host("h3").netns, "tap3") as s3:
        for src in martians:
            pkt = IP(src=src, dst="10.3.0.2") / UDP(sport=1, dport=40009)
            s1.send(to_router(lab, "h1", pkt))
        router.wait_for(lambda: drops(router)["martian_source"]
                        >= before["drops"]["martian_source"] + len(martians),
                        what="martians counted")
        # A positive control on the same path, sent last: once it is at h3,
        # the martians before it would have been too.
        s1.send(to_router(lab, "h1", IP(src="10.1.0.2", dst="10.3.0.2")
                          / UDP(sport=1, dport=40009)))
        got = s3.collect(lambda p: UDP in p and p[UDP].dport == 40009, timeout=2, want=2)
        icmp = s1.collect(lambda p: ICMP in p and p[IP].src == "10.1.0.1", timeout=0.2)
    after = router.stats()
    assert [p[IP].src for p in got] == ["10.1.0.2"], [p[IP].src for p in got]
    assert after["drops"]["martian_source"] == before["drops"]["martian_source"] + len(martians)
    assert not icmp and after["icmp"]["errors_sent"] == before["icmp"]["errors_sent"]


def test_icmp_errors_are_rate_limited_under_a_burst(lab, router):
    """icmplim=5: the bucket (5, full when set) plus what refills at 5/s
    while the burst is handled; every other error is counted as limited."""
    router.sysctl("net.inet.icmp.icmplim=5")
    tx = udp_socket(lab.host("h1").netns)
    try:
        before = router.stats()["icmp"]
        t0 = time.monotonic()
        for i in range(200):
            tx.sendto(b"burst", ("10.99.0.%d" % (i % 250 + 1), 9))
        after = router.wait_icmp_handled(before, 200, timeout=20)
        span = time.monotonic() - t0     # bounds the time the router spent on the burst
    finally:
        tx.close()
        router.sysctl("net.inet.icmp.icmplim=200")
    sent = after["errors_sent"] - before["errors_sent"]
    limited = after["ratelimited"] - before["ratelimited"]
    assert sent + limited == 200
    assert 5 <= sent <= 5 + 5 * span + 1, (sent, span)


def test_iperf3_tcp_and_udp_cross_the_router(lab, router):
    tcp = iperf3(lab, "h1", "h3", "10.3.0.2", 5201)
    assert tcp["end"]["sum_received"]["bits_per_second"] > 10e6
    udp = iperf3(lab, "h1", "h3", "10.3.0.2", 5202, "-u", "-b", "20M")
    assert udp["end"]["sum"]["lost_percent"] < 5
    assert udp["end"]["sum"]["packets"] > 1000


def test_flood_with_few_clusters_is_denied_counted_and_recovers(lab, router):
    """Packets held for 150 neighbours that never answer ARP pin clusters;
    with kern.ipc.nmbclusters small the rest is denied and counted, and the
    router keeps serving: a ping works again right after the flood."""
    router.sysctl("kern.ipc.nmbclusters=256")
    s1 = Sniffer(lab.host("h1").netns, "tap1")
    src_mac = host_mac(lab, "h1")
    frames = [bytes(Ether(dst=router_mac(1), src=src_mac)
                    / IP(src="10.1.0.2", dst=f"10.3.0.{100 + i}") / UDP(sport=7, dport=9) / (b"f" * 18))
              for i in range(150)]
    try:
        z0 = router.zones()
        deadline = time.monotonic() + 3
        n = 0
        while n < 40_000 and time.monotonic() < deadline:
            s1.send(frames[n % 150])
            n += 1
        z1 = router.zones()
        denied = sum(z1[k]["fails"] - z0[k]["fails"] for k in z1)
        assert denied > 0, "no allocation was denied"
        assert drops(router)["no_buffer"] > 0
        netstat = router.cli("netstat", "-m").stdout
        assert "requests for mbufs denied" in netstat
        # It keeps serving: a ping gets through, promptly (a few tries at most).
        for _ in range(5):
            cp = lab.ping("h1", "10.2.0.2", count=1, wait=1)
            if cp.returncode == 0:
                break
        assert cp.returncode == 0, cp.stdout
    finally:
        s1.close()
        router.sysctl("kern.ipc.nmbclusters=0")
        # The 150 unresolved neighbours would go on asking for 3 s, taking
        # tap3's share of ARP requests (request_ppslimit) from the next test.
        router.forget_arp(incomplete=True)
    assert router.proc.poll() is None


def test_unanswered_arp_is_retried_once_a_second_then_host_unreachable(lab, router):
    """Three requests, at least a second apart, for a neighbour that never
    answers; a second after the last, ICMP host unreachable (code 1) for what
    was held, and the entry is gone.  Gaps are read from the kernel's receive
    timestamps, so a slow test process cannot shrink them; only lower bounds
    are asserted (a loaded machine makes them longer, never shorter)."""
    before = drops(router)["arp_timeout"]
    with Sniffer(lab.host("h3").netns, "tap3") as s3, \
            Sniffer(lab.host("h1").netns, "tap1") as s1:
        cp = lab.ping("h1", "10.3.0.99", count=1, wait=15)
        unreach = s1.collect(lambda p: ICMP in p and p[ICMP].type == 3 and p[IP].src == "10.1.0.1",
                             timeout=1)
        asks = s3.collect(lambda p: p.type == 0x0806 and p.pdst == "10.3.0.99", timeout=1.5, want=10)
    assert "Destination Host Unreachable" in cp.stdout, cp.stdout
    assert "From 10.1.0.1" in cp.stdout
    assert [(u[ICMP].type, u[ICMP].code) for u in unreach] == [(3, 1)]
    assert len(asks) == 3, [a.time for a in asks]
    times = [float(a.time) for a in asks]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= 0.9 for g in gaps), gaps
    assert float(unreach[0].time) - times[-1] >= 0.9
    assert drops(router)["arp_timeout"] == before + 1
    entries = router.cli_json("arp", "-a")
    assert not any(e["ip"] == "10.3.0.99" for e in entries)


def test_ip_options_are_passed_through_unchanged(lab, router):
    from scapy.layers.inet import IPOption_NOP, IPOption_RR
    rx = Sniffer(lab.host("h3").netns, "tap3")
    s1 = Sniffer(lab.host("h1").netns, "tap1")
    opts = [IPOption_NOP(), IPOption_RR(pointer=4, routers=["0.0.0.0", "0.0.0.0"])]
    sent = IP(src="10.1.0.2", dst="10.3.0.2", ttl=20, options=opts) / UDP(sport=5, dport=40003) / b"opt"
    try:
        s1.send(bytes(Ether(dst=router_mac(1), src=host_mac(lab, "h1")) / sent))
        got = rx.collect(lambda p: UDP in p and p[UDP].dport == 40003)
    finally:
        rx.close()
        s1.close()
    assert got, "the datagram with options did not arrive"
    ip = got[0][IP]
    assert ip.ihl == IP(bytes(sent)).ihl
    assert bytes(ip)[20:ip.ihl * 4] == bytes(IP(bytes(sent)))[20:ip.ihl * 4]
    assert ip.ttl == 19
    chk = ip.chksum
    del ip.chksum
    assert IP(bytes(ip)).chksum == chk


def test_arp_entries_age_out_after_max_age(lab, router):
    """An answered neighbour is REACHABLE for 0.5..1.5 x basereachable, then
    STALE; unused for max_age it is freed, and the next packet asks again."""
    settings = {"net.link.ether.inet.max_age": 1, "net.link.ether.inet.basereachable": 1000}
    with router.tunables(settings):     # max_age applies to entries going STALE from now on
        router.cli("arp", "-d", "10.2.0.2", check=False)
        assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
        entry = next(e for e in router.cli_json("arp", "-a") if e["ip"] == "10.2.0.2")
        assert entry["state"] == "reachable" and entry["expires_in"] <= 1.5
        # h2 asks the router for itself ~5 s after the ping (its own DELAY):
        # by then the entry is gone (1.5 s REACHABLE + 1 s STALE at most).
        deadline = time.monotonic() + 4
        states = set()
        while time.monotonic() < deadline:
            entry = next((e for e in router.call("arp.list") if e["ip"] == "10.2.0.2"), None)
            if entry is None:
                break
            states.add(entry["state"])
            time.sleep(0.05)
        assert entry is None and "stale" in states, (entry, states)
        asked = router.stats()["arp"]["requests_sent"]
        assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
        assert router.stats()["arp"]["requests_sent"] > asked    # asked again, not reused
