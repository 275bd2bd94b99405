"""Offloads through the TAPs: virtio-net headers, TSO super-frames, checksum offload.

h1 10.1.0.2 --tap1-- router --tap2-- h2 10.2.0.2
                        |----tap3-- h3 10.3.0.2   the router's MTU here is 1280, the host's
                        |                         link 1500: a narrow hop in the middle of a path
                        |----tap4-- h4 10.4.0.2   offload = false: no virtio-net header

The hosts are kernels in namespaces; with offloads on, their TCP hands the
router super-frames of up to 64 KB (TSO) with partial checksums, and takes
such frames back.  iperf3 shows the mechanism under real TCP; crafted
super-frames -- written by a packet socket with PACKET_VNET_HDR on h1's side
of its TAP, so they reach the router exactly as the kernel's TSO output
does -- show each software leg segment by segment with scapy: segmentation
where the egress cannot take a super-frame, segmentation then fragmentation
where DF is clear and the segments exceed the MTU, frag-needed where DF is
set, checksums completed for an egress without offloads.  Headers the kernel
would never pass (it validates them too) are fed to an in-process Dataplane
over a socketpair.  After every test the zones are back where they were.
"""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
import time
from typing import Iterator

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, defragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from forwarder import netns as nn
from tests.routerlab import RunningRouter, lab_doc, router_mac
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401
from tests.wire import Sniffer, host_mac, udp_socket
from forwarder.lab.tomlwrite import to_toml

pytestmark = requires_netns

SOL_PACKET = 263
PACKET_VNET_HDR = 15
ETH_P_IP = 0x0800
VNET_NEEDS_CSUM = 1
GSO_TCPV4 = 1
GSO_ECN = 0x80                  # the super-frame carries CWR
SOL_UDP = 17
UDP_SEGMENT = 103               # <linux/udp.h>: the socket sends UDP super-frames (USO)
NARROW = 1280                   # the router's MTU on tap3
MSS = 1401                      # segments of the crafted super-frames: 1441-byte datagrams (odd:
                                # cluster boundaries then fall at odd offsets of a segment)


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, n_hosts=4)


@pytest.fixture(scope="module")
def router(lab: RouterLab, tmp_path_factory) -> Iterator[RunningRouter]:
    work = tmp_path_factory.mktemp("offload")
    doc = lab_doc(lab, work / f"{lab.name}.sock", offload={"tap4": False})
    for itf in doc["interface"]:
        if itf["name"] == "tap3":
            itf["mtu"] = NARROW         # the host keeps 1500 on its side (lab.configure_hosts)
    r = lab.start_router(work, to_toml(doc), kind=RunningRouter)
    assert isinstance(r, RunningRouter)
    yield r
    code, out = r.stop()
    assert code == 0, out


@pytest.fixture(autouse=True)
def zones_back_at_rest(router: RunningRouter) -> Iterator[None]:
    """Every mbuf and cluster a test's traffic took is given back (the
    jumbo clusters kept for super-frames are part of the rest state)."""
    with router.zones_kept():
        yield


def itf(r: RunningRouter, name: str) -> dict:
    return next(i for i in r.stats()["interfaces"] if i["name"] == name)


def delta(after: dict, before: dict, *keys: str) -> dict[str, int]:
    return {k: after[k] - before[k] for k in keys}


def iperf3(lab: RouterLab, dst: str, *args: str, port: int = 5201, client: str = "h1") -> dict:
    """iperf3 from ``client`` to ``dst`` (bounded: a few seconds), its JSON result."""
    server = lab.topo.popen(lab.host(dst).netns, ["iperf3", "-s", "-1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        cp = lab.run(client, ["iperf3", "-c", str(lab.host(dst).address.ip), "-p", str(port),
                            "-J", *args], timeout=60)
        doc = json.loads(cp.stdout)
        assert "error" not in doc, doc.get("error")
        return doc
    finally:
        server.wait(10)


def snmp(lab: RouterLab, host: str) -> dict[str, dict[str, int]]:
    """The host kernel's /proc/net/snmp, {"Udp": {"InCsumErrors": n, ...}, ...}."""
    lines = lab.run(host, ["cat", "/proc/net/snmp"]).stdout.splitlines()
    out: dict[str, dict[str, int]] = {}
    for names, values in zip(lines[::2], lines[1::2]):
        proto, *keys = names.split()
        out[proto.rstrip(":")] = dict(zip(keys, map(int, values.split()[1:])))
    return out


# --- crafted super-frames -------------------------------------------------------------

def pseudo_sum(src: str, dst: str, proto: int, length: int) -> int:
    """The folded (not complemented) pseudo-header sum: what a Linux sender
    leaves in the L4 checksum field of a frame it hands a device with
    checksum offload."""
    words = struct.unpack("!6H", socket.inet_aton(src) + socket.inet_aton(dst)
                          + struct.pack("!BBH", 0, proto, length))
    s = sum(words)
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


def vnet_hdr(flags: int, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0,
             csum_start: int = 0, csum_offset: int = 0) -> bytes:
    return struct.pack("=BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def tcp_super_frame(lab: RouterLab, dst: str, *, df: bool, sport: int, nseg: int = 5,
                    cwr: bool = False) -> tuple[bytes, IP]:
    """A TCP super-frame from h1 as the kernel's TSO would hand it to a
    device: virtio-net header (GSO_TCPV4, gso_size MSS, NEEDS_CSUM at the
    TCP checksum) + frame whose TCP checksum holds the pseudo-header sum.
    Also the same datagram with every checksum complete."""
    src = str(lab.host("h1").address.ip)
    payload = bytes((i * 7 + i // 251) & 0xff for i in range(MSS * nseg))
    full = IP(bytes(IP(src=src, dst=dst, id=0x4242, ttl=64, flags="DF" if df else 0)
                    / TCP(sport=sport, dport=9, seq=1000, ack=1, flags="PAC" if cwr else "PA",
                          window=512)
                    / payload))
    wire = full.copy()
    wire[TCP].chksum = pseudo_sum(src, dst, 6, len(full[TCP]))
    frame = bytes(Ether(dst=router_mac(1), src=host_mac(lab, "h1")) / wire)
    gso = GSO_TCPV4 | (GSO_ECN if cwr else 0)
    return vnet_hdr(VNET_NEEDS_CSUM, gso, 14 + 20 + 20, MSS, 14 + 20, 16) + frame, full


def udp_partial_frame(lab: RouterLab, dst: str, sport: int, size: int,
                      ip_id: int = 1) -> tuple[bytes, IP]:
    """A UDP datagram from h1 whose checksum its kernel left to the device
    (NEEDS_CSUM, not a super-frame), and the same with the checksum done."""
    src = str(lab.host("h1").address.ip)
    full = IP(bytes(IP(src=src, dst=dst, ttl=64, id=ip_id) / UDP(sport=sport, dport=9)
                    / (b"c" * size)))
    wire = full.copy()
    wire[UDP].chksum = pseudo_sum(src, dst, 17, len(full[UDP]))
    frame = bytes(Ether(dst=router_mac(1), src=host_mac(lab, "h1")) / wire)
    return vnet_hdr(VNET_NEEDS_CSUM, csum_start=14 + 20, csum_offset=6) + frame, full


def vnet_send(lab: RouterLab, frame: bytes) -> None:
    """Write one frame with its virtio-net header on h1's side of tap1: the
    host's kernel passes it to the router as its own TSO output."""
    with nn.enter_netns(lab.host("h1").netns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    try:
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        s.bind(("tap1", ETH_P_IP))
        s.send(frame)
    finally:
        s.close()


def checksums_valid(ip: IP) -> bool:
    """The IPv4 header and TCP/UDP checksums of ``ip`` are right."""
    again = IP(bytes(ip))
    del again.chksum
    l4 = TCP if TCP in again else UDP
    del again[l4].chksum
    again = IP(bytes(again))
    return again.chksum == ip.chksum and again[l4].chksum == ip[l4].chksum


def check_segments(segs: list[Packet], full: IP) -> None:
    """The segments of ``full`` (MSS payload bytes each), as TCP cuts them:
    lengths, IP IDs one apart (as Linux numbers TSO segments), sequence
    numbers, data, flags (PSH on the last, CWR on the first only) and
    checksums."""
    data = bytes(full[TCP].payload)
    segs = sorted((IP(bytes(p[IP])) for p in segs), key=lambda p: p[TCP].seq)
    assert len(segs) == len(data) // MSS, [p.summary() for p in segs]
    for i, s in enumerate(segs):
        assert s.len == 40 + MSS
        assert s.ttl == full.ttl - 1
        assert s.id == (full.id + i) & 0xffff
        assert s[TCP].seq == full[TCP].seq + i * MSS
        assert bytes(s[TCP].payload) == data[i * MSS:(i + 1) * MSS]
        want = "PA" if i == len(segs) - 1 else "A"
        if "C" in str(full[TCP].flags) and i == 0:
            want += "C"
        assert str(s[TCP].flags) == want, (i, s[TCP].flags)
        assert checksums_valid(s), s.show(dump=True)


def from_h1(dst: str, sport: int):
    return lambda p: (IP in p and p[IP].src == "10.1.0.2" and p[IP].dst == dst
                      and p[IP].proto == 6 and (p[IP].frag > 0 or p[TCP].sport == sport))


# --- TCP and UDP through the router, real kernels at both ends ----------------------------

def test_tcp_rides_on_super_frames_one_stream_and_four(lab: RouterLab, router: RunningRouter) -> None:
    """iperf3 h1 -> h2: the kernel hands the router super-frames, which it
    forwards whole (no software segmentation, no checksum work)."""
    a1, a2 = itf(router, "tap1"), itf(router, "tap2")
    one = iperf3(lab, "h2", "-t", "2")
    four = iperf3(lab, "h2", "-t", "2", "-P", "4")
    assert one["end"]["sum_received"]["bits_per_second"] > 100e6
    assert four["end"]["sum_received"]["bits_per_second"] > 100e6
    assert len(four["end"]["streams"]) == 4
    b1, b2 = itf(router, "tap1"), itf(router, "tap2")
    rx = delta(b1, a1, "rx_gso", "rx_gso_segments")
    tx = delta(b2, a2, "tx_gso", "tx_gso_segments", "gso_software", "csum_software")
    assert rx["rx_gso"] > 100 and rx["rx_gso_segments"] > 2 * rx["rx_gso"], rx
    assert tx["tx_gso"] >= rx["rx_gso"] * 0.9 and tx["gso_software"] == 0, tx
    assert tx["csum_software"] == 0, tx
    assert b1["offloads"] == nn.tun_flag_names(nn.TUN_F_ALL) and b1["vnet_hdr"]


def test_path_mtu_discovery_shrinks_the_super_frames(lab: RouterLab, router: RunningRouter) -> None:
    """h3 advertises an MSS for its 1500 link, so h1's super-frames carry
    1448-byte segments that do not fit the router's 1280 hop: with DF set
    the router answers frag-needed (MTU 1280), h1 learns the path MTU, and
    the super-frames that follow carry segments that fit and cross whole."""
    a3, d0 = itf(router, "tap3"), router.stats()
    doc = iperf3(lab, "h3", "-t", "2")
    assert doc["end"]["sum_received"]["bits_per_second"] > 100e6
    b3, d1 = itf(router, "tap3"), router.stats()
    assert d1["drops"]["needfrag_df_set"] > d0["drops"]["needfrag_df_set"]
    assert d1["icmp"]["unreachable"] > d0["icmp"]["unreachable"]
    tx = delta(b3, a3, "tx_gso", "tx_gso_segments", "gso_software")
    assert tx["tx_gso"] > 100 and tx["gso_software"] == 0, tx
    with nn.iproute(lab.host("h1").netns) as ipr:
        route = ipr.route("get", dst=str(lab.host("h3").address.ip))[0]
    metrics = dict(route.get_attr("RTA_METRICS")["attrs"])
    assert metrics.get("RTAX_MTU") == NARROW, metrics


def test_udp_4000_byte_datagrams_across_the_narrow_hop(lab: RouterLab, router: RunningRouter) -> None:
    """4000-byte datagrams leave h2 in 1500-byte fragments; the router cuts
    them again for its 1280 hop; h3 reassembles every one, checksums good.
    (From h2: h1 may have learned the path MTU to h3 in another test.)"""
    before, f0 = snmp(lab, "h3"), router.stats()["fragments_created"]
    doc = iperf3(lab, "h3", "-u", "-l", "4000", "-b", "20M", "-t", "2", port=5202, client="h2")
    after, f1 = snmp(lab, "h3"), router.stats()["fragments_created"]
    summary = doc["end"]["sum"]
    assert summary["packets"] > 500 and summary["lost_percent"] < 5, summary
    assert f1 - f0 > summary["packets"] * 3
    assert after["Udp"]["InCsumErrors"] == before["Udp"]["InCsumErrors"]
    assert after["Ip"]["ReasmFails"] == before["Ip"]["ReasmFails"]
    assert after["Ip"]["ReasmOKs"] - before["Ip"]["ReasmOKs"] >= summary["packets"] * 0.95


def test_tcp_to_an_interface_without_offloads(lab: RouterLab, router: RunningRouter) -> None:
    """tap4 has no virtio-net header: super-frames for it are segmented in
    software, partial checksums completed, and TCP still runs."""
    a4 = itf(router, "tap4")
    doc = iperf3(lab, "h4", "-t", "2", port=5203)
    assert doc["end"]["sum_received"]["bits_per_second"] > 100e6
    b4 = itf(router, "tap4")
    d = delta(b4, a4, "gso_software", "tx_gso", "tx_packets")
    assert d["gso_software"] > 100 and d["tx_gso"] == 0, d
    assert d["tx_packets"] > 2 * d["gso_software"], d
    assert not b4["vnet_hdr"] and b4["offloads"] == []


def test_udp_segmentation_offload_whole_and_in_software(lab: RouterLab, router: RunningRouter) -> None:
    """A UDP socket on h1 with UDP_SEGMENT hands its kernel 5 x 1401 bytes to
    send as five 1401-byte datagrams; with USO on tap1 the router gets them
    as one UDP super-frame.  To h2 it goes on whole (h2's kernel cuts it);
    to h4, which has no offloads, the router cuts it into five datagrams,
    each with its own UDP length and checksum.  Both receivers read the five
    datagrams, in order and intact."""
    data = bytes((i * 13) & 0xff for i in range(5 * MSS))
    a = {n: itf(router, n) for n in ("tap1", "tap2", "tap4")}
    for dst, port in (("h2", 43010), ("h4", 43011)):
        rx = udp_socket(lab.host(dst).netns)
        tx = udp_socket(lab.host("h1").netns)
        try:
            rx.bind((str(lab.host(dst).address.ip), port))
            rx.settimeout(2)
            tx.setsockopt(SOL_UDP, UDP_SEGMENT, MSS)
            tx.sendto(data, (str(lab.host(dst).address.ip), port))
            got = [rx.recv(65536) for _ in range(5)]
        finally:
            rx.close()
            tx.close()
        assert got == [data[i * MSS:(i + 1) * MSS] for i in range(5)], dst
    b = {n: itf(router, n) for n in ("tap1", "tap2", "tap4")}
    assert b["tap1"]["rx_gso"] - a["tap1"]["rx_gso"] == 2
    assert b["tap1"]["rx_gso_segments"] - a["tap1"]["rx_gso_segments"] == 10
    assert b["tap2"]["tx_gso"] - a["tap2"]["tx_gso"] == 1
    assert b["tap4"]["gso_software"] - a["tap4"]["gso_software"] == 1


# --- crafted super-frames: each software leg, segment by segment -----------------------------

def test_super_frame_to_an_interface_without_offloads_arrives_as_valid_segments(
        lab: RouterLab, router: RunningRouter) -> None:
    frame, full = tcp_super_frame(lab, "10.4.0.2", df=True, sport=43001, cwr=True)
    a4 = itf(router, "tap4")
    with Sniffer(lab.host("h4").netns, "tap4") as s4:
        vnet_send(lab, frame)
        segs = s4.collect(from_h1("10.4.0.2", 43001), timeout=3, want=5)
    check_segments(segs, full)
    d = delta(itf(router, "tap4"), a4, "gso_software", "tx_gso")
    assert d == {"gso_software": 1, "tx_gso": 0}


def test_super_frame_with_df_clear_is_segmented_then_fragmented(
        lab: RouterLab, router: RunningRouter) -> None:
    """1441-byte segments do not fit the 1280 hop and DF is clear: cut into
    segments, each segment into two fragments; h3's sniffer reassembles
    them and finds the five segments TCP would have sent."""
    frame, full = tcp_super_frame(lab, "10.3.0.2", df=False, sport=43002)
    a3, f0 = itf(router, "tap3"), router.stats()["fragments_created"]
    with Sniffer(lab.host("h3").netns, "tap3") as s3:
        vnet_send(lab, frame)
        frags = s3.collect(from_h1("10.3.0.2", 43002), timeout=3, want=10)
    assert len(frags) == 10 and all(len(p[IP]) <= NARROW for p in frags)
    check_segments(defragment([p[IP] for p in frags]), full)
    assert itf(router, "tap3")["gso_software"] - a3["gso_software"] == 1
    assert router.stats()["fragments_created"] - f0 == 10


def test_super_frame_with_df_set_gets_frag_needed_quoting_a_well_formed_packet(
        lab: RouterLab, router: RunningRouter) -> None:
    """DF set, segments too big for the 1280 hop: frag-needed carrying 1280,
    quoting the datagram as it came -- with its TCP checksum completed, so
    the quote is of a well-formed packet, not of a half-done one."""
    frame, full = tcp_super_frame(lab, "10.3.0.2", df=True, sport=43003)
    with Sniffer(lab.host("h1").netns, "tap1") as s1, \
            Sniffer(lab.host("h3").netns, "tap3") as s3:
        vnet_send(lab, frame)
        errs = s1.collect(lambda p: ICMP in p and p[ICMP].type == 3, timeout=3)
        leaked = s3.collect(from_h1("10.3.0.2", 43003), timeout=0.5)
    assert leaked == []
    assert len(errs) == 1
    ic = errs[0][ICMP]
    assert (ic.code, ic.nexthopmtu) == (4, NARROW)
    quoted = ic[IPerror]
    assert (quoted.len, quoted.ttl, quoted.id) == (full.len, 64, full.id)
    assert quoted[TCPerror].chksum == full[TCP].chksum       # the full datagram's checksum


def test_partial_checksum_to_an_interface_without_offloads_is_completed(
        lab: RouterLab, router: RunningRouter) -> None:
    """A UDP datagram whose checksum h1's kernel left to the device
    (NEEDS_CSUM, not a super-frame) leaves by tap4 with the checksum done."""
    frame, full = udp_partial_frame(lab, "10.4.0.2", 43004, 999)
    a4 = itf(router, "tap4")
    with Sniffer(lab.host("h4").netns, "tap4") as s4:
        vnet_send(lab, frame)
        got = s4.collect(lambda p: UDP in p and p[UDP].sport == 43004, timeout=3)
    assert len(got) == 1
    assert got[0][UDP].chksum == full[UDP].chksum and checksums_valid(got[0][IP])
    assert itf(router, "tap4")["csum_software"] - a4["csum_software"] == 1


def test_partial_checksum_is_completed_before_fragmenting(
        lab: RouterLab, router: RunningRouter) -> None:
    """A 1400-byte UDP datagram with its checksum left open (DF clear) must
    be cut for the 1280 hop: the checksum is completed first, since
    fragments carry no offload; h3 reassembles a datagram that checks."""
    frame, _ = udp_partial_frame(lab, "10.3.0.2", 43005, 1372, ip_id=0x5151)
    before = snmp(lab, "h3")
    with Sniffer(lab.host("h3").netns, "tap3") as s3:
        vnet_send(lab, frame)
        frags = s3.collect(lambda p: IP in p and p[IP].id == 0x5151, timeout=3, want=2)
    assert len(frags) == 2
    (whole,) = defragment([p[IP] for p in frags])
    assert checksums_valid(IP(bytes(whole)))
    router.wait_for(lambda: snmp(lab, "h3")["Ip"]["ReasmOKs"] > before["Ip"]["ReasmOKs"],
                    what="h3 reassembled the datagram")
    assert snmp(lab, "h3")["Udp"]["InCsumErrors"] == before["Udp"]["InCsumErrors"]


# --- headers no kernel would pass: an in-process Dataplane on a socketpair ---------------------

def test_vnet_hdr_invalid_and_a_checksum_completed_where_the_device_said() -> None:
    """Virtio-net headers at odds with their frames are dropped and counted
    (a kernel on the other side validates its own, so they are written here
    to a Dataplane's port directly); a partial checksum somewhere else than
    TCP/UDP (an ICMP echo) is completed where the header says, and answered."""
    from forwarder.dataplane import Dataplane
    from forwarder.route import RouteTable

    me, peer_mac = "02:00:00:00:01:01", "02:00:00:00:01:02"
    routes = RouteTable()
    routes.add("10.1.0.0/24", ifindex=0)
    routes.add("10.1.0.1/32", type="local")
    dp = Dataplane(routes)
    port, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    port.setblocking(False)
    peer.settimeout(1.0)
    dp.add_interface(port.fileno(), "vnet0", bytes.fromhex(me.replace(":", "")), 1500,
                     [("10.1.0.1", 24)], vnet_hdr=True,
                     offloads=nn.TUN_F_CSUM | nn.TUN_F_TSO4 | nn.TUN_F_TSO6)
    thread = threading.Thread(target=dp.run, name="dataplane-vnet", daemon=True)
    thread.start()
    eth = Ether(dst=me, src=peer_mac)
    tcp = bytes(eth / IP(src="10.1.0.2", dst="10.9.0.9") / TCP(sport=1, dport=2) / (b"t" * 3000))
    udp = bytes(eth / IP(src="10.1.0.2", dst="10.9.0.9") / UDP(sport=1, dport=2) / (b"u" * 3000))
    bogus = [
        vnet_hdr(VNET_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 34, 6) + tcp,    # TCP with UDP's offset
        vnet_hdr(VNET_NEEDS_CSUM, 0, 0, 0, 34 + 3020, 16) + tcp,         # checksum past the end
        vnet_hdr(VNET_NEEDS_CSUM, GSO_TCPV4, 54, 0, 34, 16) + tcp,       # gso_size 0
        vnet_hdr(0, GSO_TCPV4, 54, 1000) + tcp,                         # GSO, checksum not partial
        vnet_hdr(VNET_NEEDS_CSUM, GSO_TCPV4, 42, 1000, 34, 6) + udp,     # TCP segmentation of UDP
        vnet_hdr(VNET_NEEDS_CSUM, 0, 0, 0, 20, 16) + tcp,                # starts inside the IP header
    ]
    echo = IP(bytes(IP(src="10.1.0.2", dst="10.1.0.1") / ICMP(id=77, seq=1) / (b"e" * 56)))
    wire = echo.copy()
    wire[ICMP].chksum = 0                       # left to the device, no pseudo-header for ICMP
    try:
        for frame in bogus:
            peer.send(frame)
        # learn the peer (an ARP request for us), then the echo with its checksum open
        peer.send(bytes(10) + bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=peer_mac)
                                    / ARP(op=1, hwsrc=peer_mac, psrc="10.1.0.2", pdst="10.1.0.1")))
        assert ARP in Ether(peer.recv(4096)[10:])
        peer.send(vnet_hdr(VNET_NEEDS_CSUM, csum_start=34, csum_offset=2) + bytes(eth / wire))
        reply = peer.recv(4096)
        assert reply[:10] == bytes(10)          # nothing left open in what the router sends
        pkt = Ether(reply[10:])
        assert pkt[ICMP].type == 0 and pkt[ICMP].id == 77
        again = ICMP(bytes(pkt[ICMP]))
        del again.chksum
        assert ICMP(bytes(again)).chksum == pkt[ICMP].chksum
    finally:
        dp.stop()
        thread.join(5)
        dp.flush()
    try:
        s = dp.stats()
        assert {k: v for k, v in s["drops"].items() if v} == {"vnet_hdr_invalid": len(bogus)}
        assert s["interfaces"][0]["csum_software"] == 1
        assert s["interfaces"][0]["rx_packets"] == len(bogus) + 2
    finally:
        del dp
        port.close()
        peer.close()


def test_offloads_are_shown_per_interface(lab: RouterLab, router: RunningRouter) -> None:
    """`forwarder stats` has a line per interface with what the kernel
    accepted and the offload counters; the log says it once at start."""
    text = router.cli("stats").stdout
    table = text.split("offloads", 1)[1].splitlines()
    rows = {ln.split()[0]: ln.split()[1:] for ln in table[1:5]}
    assert rows["tap1"][0] == "csum,tso4,tso6,tso_ecn,uso4,uso6"
    assert rows["tap4"][0] == "off"
    s = router.stats()
    for name, row in rows.items():
        i = next(i for i in s["interfaces"] if i["name"] == name)
        keys = ("rx_gso", "rx_gso_segments", "tx_gso", "tx_gso_segments", "gso_software",
                "csum_software")
        # counters only grow, and the table was printed before stats() was read
        assert all(int(v) <= i[k] for v, k in zip(row[1:], keys)), (name, row)
    assert int(rows["tap4"][5]) > 0            # tap4's super-frames were cut here
    log = router.log_text()
    assert "interface tap4 up" in log and "offloads off" in log
    assert "offloads csum, tso4, tso6, tso_ecn, uso4, uso6" in log
