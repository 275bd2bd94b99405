"""Attached ports on packet sockets (attach_mode "packet", the default).

What only that mode does, on real veths handed over as a container runtime
hands them (tests/test_attach.py runs the behaviour both modes share): the
router makes no device of its own, frames arriving on the veth never reach
the namespace's IP stack (a tc ingress drop after the packet socket's copy),
frames the namespace itself sends there are not read back, a veth deleted
and made again is the same socket bound anew, a link taken down and up
again carries traffic again, ``offload = false`` leaves segmentation to
the dataplane, frames with no buffer for them leave the receive ring
counted once, and what leaves goes one sendmmsg() a burst: every frame
counted, super-frames whole.  h1 (eth1) and h3 (eth3, MTU 1280) are attached with
offloads, h2 (eth2) with ``offload = false``; the namespace's kernel holds
10.99.0.1 on its loopback, an address it would answer ARP and UDP for on
any interface whose frames it saw.
"""
from __future__ import annotations

import re
import socket
import time
from typing import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from forwarder import netns as nn
from forwarder.lab.path import link_stats_at
from forwarder.lab.process import launch
from forwarder.lab.tomlwrite import to_toml
from tests.routerlab import RunningRouter
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401
from tests.wire import Sniffer, arp_frame, host_mac, iperf3

pytestmark = requires_netns

KERNEL_ONLY = "10.99.0.1"           # on the router namespace's loopback
KERNEL_PORT = 5999                  # a UDP socket of that kernel listens there


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, mtus=(1500, 1500, 1280), attach=(1, 2, 3))


@pytest.fixture(scope="module")
def router(lab: RouterLab, tmp_path_factory) -> Iterator[RunningRouter]:
    work = tmp_path_factory.mktemp("attach-packet")
    with nn.iproute(lab.router_ns) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=KERNEL_ONLY,
                 prefixlen=32)
    sock = work / f"{lab.name}.sock"
    doc = lab.config_doc(sock)
    doc["router"]["attach_timeout"] = 30
    next(i for i in doc["interface"] if i["name"] == "eth2")["offload"] = False
    cfg = work / "router.toml"
    cfg.write_text(to_toml(doc))
    r = launch(lab.topo.popen, lab.router_ns, cfg, sock, kind=RunningRouter, lab=lab, wait=False)
    lab.router = r
    try:
        r.waiting = r.cli("health", check=False)
        for h in lab.hosts:
            lab.hand_over(h)
        r.wait_healthy(20)
        lab.configure_hosts()
        # the first frames fill the Packet zone's cache (a bucket of clusters
        # counted as used from then on): before any test takes its measure
        assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
        yield r
    finally:
        code, out = r.stop()
        assert code == 0, out


@pytest.fixture(autouse=True)
def zones_back_at_rest(router: RunningRouter) -> Iterator[None]:
    with router.zones_kept():
        yield


def link_index(lab: RouterLab, name: str) -> int:
    with nn.iproute(lab.router_ns) as ipr:
        return ipr.link_lookup(ifname=name)[0]


def packet_sockets(router: RunningRouter) -> list[int]:
    """The interface indexes the router's packet sockets are bound to, from
    its namespace's /proc/net/packet (sk RefCnt Type Proto Iface ...)."""
    with open(f"/proc/{router.pid}/net/packet", encoding="ascii") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sorted(int(row[4]) for row in rows)


def test_a_packet_port_is_a_socket_on_the_veth_and_no_device(lab: RouterLab,
                                                             router: RunningRouter) -> None:
    assert router.waiting.returncode == 1 and \
        "not ready: waiting for eth1, eth2, eth3 (0 of 3 attached" in router.waiting.stderr
    assert packet_sockets(router) == sorted(link_index(lab, f"eth{k}") for k in (1, 2, 3))
    with nn.iproute(lab.router_ns) as ipr:
        names = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    assert names == {"lo", "eth1", "eth2", "eth3"}, names       # no TAP of the router's
    assert re.search(r"interface eth2 up: 10\.2\.0\.1/24 mtu 1500 mac of "
                     r"eth2 \(packet socket on eth2, offloads off on output\)",
                     router.log_text()), router.log_text()


def test_ping_traceroute_and_tcp_through_packet_ports(lab: RouterLab,
                                                       router: RunningRouter) -> None:
    for src, dst in (("h1", "10.3.0.2"), ("h1", "10.2.0.2"), ("h3", "10.2.0.2")):
        cp = lab.ping(src, dst, count=2, wait=2, extra=["-i", "0.2"])
        assert cp.returncode == 0, (src, dst, cp.stdout)
    cp = lab.run("h1", ["traceroute", "-n", "-q", "1", "-w", "2", "-m", "4", "10.3.0.2"],
                 timeout=30)
    assert [line.split()[1] for line in cp.stdout.splitlines()[1:]] == \
        ["10.1.0.1", "10.3.0.2"], cp.stdout
    a = {n: router.interface(n) for n in ("eth1", "eth2")}
    doc = iperf3(lab, "h1", "h2", "10.2.0.2", 5411)
    assert doc["end"]["sum_received"]["bits_per_second"] > 100e6
    b = {n: router.interface(n) for n in ("eth1", "eth2")}
    assert b["eth1"]["rx_gso"] - a["eth1"]["rx_gso"] > 100, (a, b)   # super-frames read whole
    # eth2 has offload = false: the router cuts them itself, the kernel is handed none
    assert b["eth2"]["gso_software"] - a["eth2"]["gso_software"] > 100, (a, b)
    assert b["eth2"]["tx_gso"] == a["eth2"]["tx_gso"], (a, b)
    # the segments leave in batches: many a sendmmsg(), every one counted sent
    sent = b["eth2"]["tx_packets"] - a["eth2"]["tx_packets"]
    batches = b["eth2"]["tx_batches"] - a["eth2"]["tx_batches"]
    assert 0 < 2 * batches < sent, (a, b)
    assert b["eth2"]["tx_errors"] == a["eth2"]["tx_errors"], (a, b)


def test_super_frames_leave_whole_in_the_batches(lab: RouterLab, router: RunningRouter) -> None:
    """TCP from h2 to h1: eth2 reads super-frames, eth1 (offloads on) hands
    them to the kernel whole, each a chain of jumbo clusters in the
    sendmmsg() of its burst."""
    a = router.interface("eth1")
    doc = iperf3(lab, "h2", "h1", "10.1.0.2", 5412)
    assert doc["end"]["sum_received"]["bits_per_second"] > 100e6
    b = router.interface("eth1")
    assert b["tx_gso"] - a["tx_gso"] > 100, (a, b)
    assert b["tx_batches"] > a["tx_batches"], (a, b)
    assert b["tx_errors"] == a["tx_errors"], (a, b)


def test_a_burst_leaves_in_batches_every_frame_counted(lab: RouterLab,
                                                       router: RunningRouter) -> None:
    """Frames that pile up in eth1's receive ring while the loop is held
    (debug stall) are read a burst at a time and leave eth2 a sendmmsg() a
    burst: each counted sent, in far fewer calls than frames, and each
    received by h2's end of the veth."""
    n = 600
    assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0     # h2 resolved
    mac, gw_mac = host_mac(lab, "h1"), router.interface("eth1")["mac"]
    frames = [bytes(Ether(dst=gw_mac, src=mac) / IP(src="10.1.0.2", dst="10.2.0.2")
                    / UDP(sport=40000 + i % 64, dport=9) / (b"b" * 18)) for i in range(n)]
    h2 = lab.host("h2").netns
    with nn.iproute(h2) as ipr:
        h2_link = ipr.link_lookup(ifname="eth2")[0]
    a, seen = router.interface("eth2"), link_stats_at(h2, h2_link)
    router.cli("debug", "stall", "20")
    try:
        time.sleep(0.3)
        with Sniffer(lab.host("h1").netns, "eth1") as s:
            for f in frames:
                s.send(f)
    finally:
        router.cli("debug", "resume")

    def out() -> int:
        b = router.interface("eth2")
        return b["tx_packets"] + b["tx_errors"] - a["tx_packets"] - a["tx_errors"]
    router.wait_for(lambda: out() >= n, 10, what=f"{n} frames out of eth2")
    b = router.interface("eth2")
    sent, batches = b["tx_packets"] - a["tx_packets"], b["tx_batches"] - a["tx_batches"]
    assert b["tx_errors"] == a["tx_errors"], (a, b)
    assert n <= sent <= n + 3, (a, b)               # a probe of h2's ARP entry may join them
    assert 0 < batches <= n // 8, (a, b)            # bursts of up to 32 frames, one call each
    assert link_stats_at(h2, h2_link)["rx_packets"] - seen["rx_packets"] >= n


def test_the_1280_byte_link_takes_fragments_or_says_frag_needed(lab: RouterLab,
                                                                router: RunningRouter) -> None:
    assert router.interface("eth3")["mtu"] == 1280
    made = router.stats()["fragments_created"]
    cp = lab.ping("h1", "10.3.0.2", count=2, wait=2, extra=["-M", "dont", "-s", "1400"])
    assert cp.returncode == 0, cp.stdout
    assert router.stats()["fragments_created"] - made >= 4
    cp = lab.ping("h1", "10.3.0.2", count=1, wait=2, extra=["-M", "do", "-s", "1400"])
    assert cp.returncode != 0 and re.search(r"mtu\s*=\s*1280", cp.stdout + cp.stderr), cp.stdout


def test_the_namespaces_kernel_never_sees_a_frame_of_the_link(lab: RouterLab,
                                                               router: RunningRouter) -> None:
    """Frames for an address the namespace's kernel holds (ARP who-has, a UDP
    datagram to a socket listening there) reach no one but the router: the
    only ARP reply is the router's, for its own address."""
    with nn.enter_netns(lab.router_ns):
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((KERNEL_ONLY, KERNEL_PORT))
    listener.settimeout(0.5)
    mac, gw_mac = host_mac(lab, "h1"), router.interface("eth1")["mac"]
    drops = router.stats()["drops"]
    try:
        with Sniffer(lab.host("h1").netns, "eth1") as s:
            for target in (KERNEL_ONLY, "10.1.0.1"):
                s.send(arp_frame(1, mac, "10.1.0.2", target))
            for k in range(5):
                s.send(bytes(Ether(dst=gw_mac, src=mac) / IP(src="10.1.0.2", dst=KERNEL_ONLY)
                             / UDP(sport=40000 + k, dport=KERNEL_PORT) / b"to the kernel?"))
            replies = s.collect(lambda p: ARP in p and p[ARP].op == 2, timeout=1.5, want=2)
        with pytest.raises(socket.timeout):
            listener.recvfrom(2048)
    finally:
        listener.close()
    assert [(p[ARP].psrc, p[ARP].hwsrc) for p in replies] == [("10.1.0.1", gw_mac)]
    # and the router saw the datagrams: no route to 10.99.0.1 in its table
    assert router.stats()["drops"]["no_route"] - drops["no_route"] >= 5


def test_frames_the_namespace_sends_on_the_link_are_not_read_back(lab: RouterLab,
                                                                  router: RunningRouter) -> None:
    """An ARP request another socket of the namespace sends out of eth1 goes to
    h1 and nowhere else: the router's socket does not take it as received (it
    would learn the sender and answer)."""
    fake_mac, fake_ip = "02:00:00:00:00:77", "10.1.0.77"
    with nn.enter_netns(lab.router_ns):
        out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    out.bind(("eth1", 0))
    try:
        with Sniffer(lab.host("h1").netns, "eth1") as s:
            for _ in range(3):
                out.send(arp_frame(1, fake_mac, fake_ip, "10.1.0.1"))
            seen = s.collect(lambda p: ARP in p and p[ARP].psrc == fake_ip and p[ARP].op == 1,
                             timeout=1.5, want=3)
            answers = s.collect(lambda p: ARP in p and p[ARP].pdst == fake_ip, timeout=1.0)
    finally:
        out.close()
    assert len(seen) == 3                               # they left by eth1 ...
    assert answers == []                                # ... and the router never read them
    assert fake_ip not in {e["ip"] for e in router.cli_json("arp", "-a")}


def test_a_link_taken_down_and_up_carries_traffic_again(lab: RouterLab,
                                                        router: RunningRouter) -> None:
    assert lab.ping("h2", "10.1.0.2", count=1, wait=2).returncode == 0
    before = router.interface("eth1")
    errors, tx_drops = before["rx_errors"], router.stats()["drops"]["tx_error"]
    nn.link_set("eth1", lab.router_ns, up=False)       # the socket reads ENETDOWN once
    try:
        assert lab.ping("h2", "10.1.0.2", count=1, wait=1).returncode != 0
        # the echo request is refused on its way out (ENETDOWN), counted once
        down = router.interface("eth1")
        assert down["tx_errors"] - before["tx_errors"] >= 1, (before, down)
        assert router.stats()["drops"]["tx_error"] - tx_drops == \
            down["tx_errors"] - before["tx_errors"]
        assert down["tx_batches"] == before["tx_batches"]
    finally:
        nn.link_set("eth1", lab.router_ns, up=True)
    router.wait_for(lambda: lab.ping("h2", "10.1.0.2", count=1, wait=1).returncode == 0, 10,
                    what="h1 reachable after eth1 came up")
    assert router.interface("eth1")["rx_errors"] - errors == 1
    assert router.interface("eth1")["link"] == "up"


def test_a_veth_made_again_is_the_same_socket_bound_anew(lab: RouterLab,
                                                        router: RunningRouter) -> None:
    h1 = lab.host("h1")
    old = link_index(lab, "eth1")
    with nn.iproute(lab.router_ns) as ipr:
        ipr.link("del", index=old)
    router.wait_for(lambda: router.interface("eth1")["link"] == "down", 5, what="eth1 down")
    down = router.stats()["drops"]["interface_down"]
    assert lab.ping("h2", "10.1.0.2", count=1, wait=1).returncode != 0
    assert router.stats()["drops"]["interface_down"] > down
    lab.hand_over(h1)
    lab.configure_host(h1)
    router.wait_for(lambda: lab.ping("h2", "10.1.0.2", count=1, wait=1).returncode == 0, 10,
                    what="h1 reachable again")
    new = link_index(lab, "eth1")
    assert new != old
    assert packet_sockets(router) == sorted([new, link_index(lab, "eth2"),
                                             link_index(lab, "eth3")])
    cp = lab.run("h1", ["traceroute", "-n", "-q", "1", "-w", "2", "-m", "4", "10.3.0.2"],
                 timeout=30)
    assert [line.split()[1] for line in cp.stdout.splitlines()[1:]] == \
        ["10.1.0.1", "10.3.0.2"], cp.stdout
    assert re.search(r"port eth1: attached to eth1 .* again", router.log_text())


def test_frames_with_no_buffer_leave_the_ring_counted(lab: RouterLab,
                                                      router: RunningRouter) -> None:
    """Clusters denied (kern.ipc.nmbclusters lowered while held packets pin
    them): the frames of the ring the router has no buffer for are dropped and
    counted, their slots given back, and the port forwards again once the
    limit is raised."""
    mac, gw_mac = host_mac(lab, "h1"), router.interface("eth1")["mac"]
    frames = [bytes(Ether(dst=gw_mac, src=mac) / IP(src="10.1.0.2", dst=f"10.3.0.{100 + i}")
                    / UDP(sport=7, dport=9) / (b"f" * 18)) for i in range(150)]
    original = router.call("sysctl.get", names=["kern.ipc.nmbclusters"])[0]["value"]
    before, seen = router.stats(), link_stats_at(lab.router_ns, link_index(lab, "eth1"))
    try:
        router.sysctl("kern.ipc.nmbclusters=256")
        with Sniffer(lab.host("h1").netns, "eth1") as s:
            for k in range(6000):        # 150 neighbours that never answer hold 16 each
                s.send(frames[k % 150])
        router.wait_for(lambda: router.interface("eth1")["rx_nobuf"] > before["interfaces"][0]
                        ["rx_nobuf"], 5, what="frames dropped for want of a buffer")
    finally:
        router.call("sysctl.set", assignments={"kern.ipc.nmbclusters": original})
        router.forget_arp(incomplete=True)
    router.wait_for(lambda: router.cli("health").returncode == 0, 5, what="healthy")
    after = router.stats()
    assert after["drops"]["no_buffer"] > before["drops"]["no_buffer"]
    # each frame counted once, read or dropped: never more than eth1 received
    # (fewer when the ring overflowed while the router could not keep up)
    taken = sum(after["interfaces"][0][k] - before["interfaces"][0][k]
                for k in ("rx_packets", "rx_nobuf"))
    received = link_stats_at(lab.router_ns, link_index(lab, "eth1"))["rx_packets"] - \
        seen["rx_packets"]
    assert 0 < taken <= received, (taken, received)
    assert lab.ping("h1", "10.3.0.2", count=1, wait=2).returncode == 0
