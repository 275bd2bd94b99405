"""Every drop reason of the forwarding path, provoked and checked one by one.

h1 (10.1.0.2) --tap1-- router --tap3-- h3 (10.3.0.2)
                         |--tap2-- h2 (10.2.0.2)

A real router process runs in its own namespace (tests/routerlab.py) with
kernel hosts on TAPs.  Each test crafts frames with scapy and sends them
from h1's side of tap1 through a `Sniffer` (tests/wire.py), then checks
three things:

(a) the named counter in ``stats()["drops"]`` rose by exactly the expected
    amount, and no other drop counter moved;
(b) nothing reached the far host: a sniffer on h3's (or h2's) side of its
    TAP sees no frame carrying the probe's marker (a UDP port of its own,
    or an ICMP id), while a positive control shows that the same path does
    deliver when the drop condition is absent;
(c) the sender got no ICMP error from the router and
    ``stats()["icmp"]["errors_sent"]`` did not move, or -- where one is due
    (TTL expiry, ARP give-up) -- it got exactly the right type and code,
    quoting the packet.

The router is read through its control socket (``router.call("stats")``,
the same data as ``forwarder stats --json``, without a process per read).
Waits are bounded: a counter is awaited with a deadline, and the absence
of a frame is a short collect after the counter showed the packet was
handled.

Two reasons cannot use the shared router: ``runt`` (the kernel does not
send a frame shorter than an Ethernet header through a TAP) runs a
Dataplane in-process on a socketpair, and ``arp_table_full`` fills the
ARP table of a router of its own.
"""
from __future__ import annotations

import socket
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.l2 import ARP, Ether

from forwarder import netns as nn
from forwarder.dataplane import ARP_MAX_ENTRIES as DP_ARP_MAX
from tests.routerlab import RunningRouter, router_mac, start_router, static_gateways
from tests.topology import RouterLab, lab, make_lab, requires_netns, topology  # noqa: F401
from tests.wire import arp_frame, host_mac, sniffers, to_router

pytestmark = requires_netns

# The in-process runt test must give back every mbuf it takes; the other
# tests allocate nothing in this process.
MBUF_LEAK_CHECK = True

# Routes that would carry a packet to h3 if a check before forwarding were
# missing: martian and multicast destinations have a next hop here, so
# their drop is the dataplane's decision, not a missing route.
ROUTES = [
    {"prefix": "0.0.0.0/8", "via": "10.3.0.2"},
    {"prefix": "127.0.0.0/8", "via": "10.3.0.2"},
    {"prefix": "224.0.0.0/4", "via": "10.3.0.2"},
    {"prefix": "240.0.0.0/4", "via": "10.3.0.2"},
]

ROUTER_ADDRESSES = ("10.1.0.1", "10.2.0.1", "10.3.0.1")
QUIET = 0.5                 # seconds of silence that stand for "nothing came"
Match = Callable[[Ether], bool]


@pytest.fixture(scope="module")
def router(lab: RouterLab,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRouter]:
    r = start_router(lab, tmp_path_factory.mktemp("router"), routes=ROUTES)
    static_gateways(lab)        # the hosts' own ARP never adds to what a test counts
    yield r
    code, out = r.stop()
    assert code == 0, out


# --- helpers ---------------------------------------------------------------------------

def drops(r: RunningRouter) -> dict[str, int]:
    return r.call("stats")["drops"]


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that changed, with their increase."""
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def iface(s: dict, name: str) -> dict:
    return next(i for i in s["interfaces"] if i["name"] == name)


def taken(s: dict, name: str = "tap1") -> int:
    """Frames the router took off a TAP: read, or discarded for want of a buffer."""
    i = iface(s, name)
    return i["rx_packets"] + i["rx_nobuf"]


def udp_probe(dport: int, dst: str = "10.3.0.2", src: str = "10.1.0.2", ttl: int = 64,
              sport: int = 7) -> IP:
    return IP(src=src, dst=dst, ttl=ttl) / UDP(sport=sport, dport=dport) / b"drop-probe"


def echo_request(dst: str, ident: int, src: str = "10.1.0.2") -> IP:
    return IP(src=src, dst=dst) / ICMP(type=8, id=ident, seq=1) / b"drop-probe"


def udp_to(dport: int) -> Match:
    return lambda p: UDP in p and p[UDP].dport == dport


def icmp_from_router(k: int = 1) -> Match:
    """An ICMP message of the router's own (an error or a reply) on link k;
    not one it forwards."""
    return lambda p: (p.src == router_mac(k) and ICMP in p
                      and p[IP].src in ROUTER_ADDRESSES)


def quoted_udp(p: Ether) -> UDPerror:
    """The UDP header an ICMP error quotes."""
    return p[ICMP][IPerror][UDPerror]


def wait_drop(router: RunningRouter, before: dict[str, int], reason: str, n: int,
              timeout: float = 5.0) -> None:
    router.wait_for(lambda: drops(router)[reason] >= before[reason] + n, timeout,
                    what=f"drops[{reason}] += {n}")


@dataclass
class Outcome:
    """What a batch of probe frames did."""
    drops: dict[str, int]           # drop counters that moved, by how much
    errors_sent: int                # ICMP errors the router counted as sent
    at_sender: list[Ether]          # what the sender's match picked up on link 1
    at_far: list[Ether]             # what the far host's match picked up


def probe(lab: RouterLab, router: RunningRouter, frames: Sequence[bytes], *, reason: str,
          expect: int, far_match: Match, far: str = "h3",
          sender_match: Match = icmp_from_router(1), want_at_sender: int = 1,
          quiet: float = QUIET) -> Outcome:
    """Send ``frames`` from h1; once drops[reason] rose by ``expect``, watch
    the sender and the far host for ``quiet`` seconds."""
    with sniffers(lab, "h1", far) as (s1, sf):
        before = router.call("stats")
        for f in frames:
            s1.send(f)
        wait_drop(router, before["drops"], reason, expect)
        at_sender = s1.collect(sender_match, timeout=quiet, want=want_at_sender)
        at_far = sf.collect(far_match, timeout=0.1, want=1)
        after = router.call("stats")
    return Outcome(drops=moved(before["drops"], after["drops"]),
                   errors_sent=after["icmp"]["errors_sent"] - before["icmp"]["errors_sent"],
                   at_sender=at_sender, at_far=at_far)


def assert_silent_drop(out: Outcome, reason: str, n: int) -> None:
    assert out.drops == {reason: n}
    assert not out.at_far, f"reached the far host: {out.at_far[0].summary()}"
    assert out.errors_sent == 0
    assert not out.at_sender, f"the sender got: {out.at_sender[0].summary()}"


def delivered(lab: RouterLab, frame: bytes, match: Match, far: str = "h3",
              timeout: float = 2.0) -> bool:
    """Positive control: does ``frame`` from h1 arrive at ``far``?"""
    with sniffers(lab, "h1", far) as (s1, sf):
        s1.send(frame)
        return bool(sf.collect(match, timeout=timeout))


# --- Ethernet ----------------------------------------------------------------------------

def test_runt() -> None:
    """A 10-byte frame is counted as a runt and goes no further.

    Not through a TAP: AF_PACKET refuses to send a frame shorter than the
    Ethernet header, so the kernel can never hand the router one.  Here a
    Dataplane runs in-process with one end of a SOCK_SEQPACKET socketpair as
    its port, which keeps message boundaries as a TAP does."""
    from forwarder.dataplane import Dataplane
    from forwarder.route import RouteTable

    dp = Dataplane(RouteTable())
    port, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    port.setblocking(False)
    peer.settimeout(0.3)
    dp.add_interface(port.fileno(), "runt0", bytes.fromhex("020000000101"), 1500,
                     [("10.1.0.1", 24)])
    thread = threading.Thread(target=dp.run, name="dataplane-runt", daemon=True)
    thread.start()
    try:
        peer.send(bytes.fromhex("02000000010102000000"))
        deadline = time.monotonic() + 5
        while dp.stats()["drops"]["runt"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(socket.timeout):
            peer.recv(2048)                     # nothing comes back
    finally:
        dp.stop()
        thread.join(5)
        dp.flush()
    try:
        assert not thread.is_alive()
        s = dp.stats()
        assert s["interfaces"][0]["rx_packets"] == 1
        assert s["interfaces"][0]["tx_packets"] == 0
        assert {k: v for k, v in s["drops"].items() if v} == {"runt": 1}
    finally:
        del dp
        port.close()
        peer.close()


def test_not_our_mac(lab: RouterLab, router: RunningRouter) -> None:
    pkt = udp_probe(41002)
    out = probe(lab, router, [to_router(lab, "h1", pkt, dst="02:00:00:00:01:99")],
                reason="not_our_mac", expect=1, far_match=udp_to(41002))
    assert_silent_drop(out, "not_our_mac", 1)
    assert delivered(lab, to_router(lab, "h1", pkt), udp_to(41002))


def test_ethertype(lab: RouterLab, router: RunningRouter) -> None:
    """An IPv4 packet under an unknown EtherType is not taken for IPv4."""
    frame = bytes(Ether(dst=router_mac(1), src=host_mac(lab, "h1"), type=0x88B5)
                  / udp_probe(41003))
    out = probe(lab, router, [frame], reason="ethertype", expect=1, far_match=udp_to(41003))
    assert_silent_drop(out, "ethertype", 1)
    assert delivered(lab, to_router(lab, "h1", udp_probe(41003)), udp_to(41003))


def test_arp_malformed(lab: RouterLab, router: RunningRouter) -> None:
    """Requests for the router's address with a wrong hardware type,
    protocol type, address lengths, or cut short: none answered or learned."""
    sender_ip = "10.1.0.250"
    good = bytes(ARP(op=1, hwsrc="02:00:00:00:aa:01", psrc=sender_ip, pdst="10.1.0.1"))

    def patched(offset: int, value: bytes) -> bytes:
        return good[:offset] + value + good[offset + len(value):]

    bad = [patched(0, b"\x00\x06"), patched(2, b"\x86\xdd"), patched(4, b"\x08"),
           patched(5, b"\x10"), good[:20]]
    eth = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:aa:01", type=0x0806))
    answer = arp_answer_to(sender_ip)
    arp_in = router.call("stats")["arp"]["received"]
    out = probe(lab, router, [eth + b for b in bad], reason="arp_malformed", expect=len(bad),
                far_match=lambda p: ARP in p and p[ARP].psrc == sender_ip, sender_match=answer)
    assert_silent_drop(out, "arp_malformed", len(bad))
    assert router.call("stats")["arp"]["received"] == arp_in
    assert not any(e["ip"] == sender_ip for e in router.call("arp.list"))
    # Control: the well-formed request is answered.
    with sniffers(lab, "h1") as (s1,):
        s1.send(eth + good)
        assert s1.collect(answer), "the well-formed request was not answered"
    router.call("arp.del", ip=sender_ip, interface="tap1")


# --- IPv4 destinations -------------------------------------------------------------------

def test_martian_destination(lab: RouterLab, router: RunningRouter) -> None:
    """0/8, 127/8 and 240/4 (with 255.255.255.255) are not forwarded, even
    with a route to them."""
    dsts = ["0.0.0.7", "127.0.0.1", "240.0.0.1", "255.255.255.255"]
    frames = [to_router(lab, "h1", udp_probe(41005, dst=d)) for d in dsts]
    out = probe(lab, router, frames, reason="martian_destination", expect=len(dsts),
                far_match=udp_to(41005))
    assert_silent_drop(out, "martian_destination", len(dsts))


def test_link_broadcast(lab: RouterLab, router: RunningRouter) -> None:
    """A unicast IP packet in a link-layer broadcast or multicast frame is
    not forwarded (RFC 1812 5.3.4)."""
    pkt = udp_probe(41006)
    frames = [to_router(lab, "h1", pkt, dst="ff:ff:ff:ff:ff:ff"),
              to_router(lab, "h1", pkt, dst="01:00:5e:01:02:03")]
    out = probe(lab, router, frames, reason="link_broadcast", expect=2, far_match=udp_to(41006))
    assert_silent_drop(out, "link_broadcast", 2)
    assert delivered(lab, to_router(lab, "h1", pkt), udp_to(41006))


def test_ip_broadcast_destination(lab: RouterLab, router: RunningRouter) -> None:
    """Multicast (routed to h3 here), and directed broadcasts to the far
    link and to the incoming link, are never forwarded."""
    dsts = ["224.1.2.3", "10.3.0.255", "10.1.0.255"]
    frames = [to_router(lab, "h1", udp_probe(41007, dst=d)) for d in dsts]
    with sniffers(lab, "h3") as (s3,):
        out = probe(lab, router, frames, reason="ip_broadcast_destination", expect=len(dsts),
                    far_match=udp_to(41007))
        asked = s3.collect(lambda p: ARP in p and p[ARP].pdst == "10.3.0.255", timeout=0.1)
    assert_silent_drop(out, "ip_broadcast_destination", len(dsts))
    assert not asked


def test_forwarding_disabled(lab: RouterLab, router: RunningRouter) -> None:
    """With net.inet.ip.forwarding=0 nothing is forwarded, silently; the
    router still answers echo requests to its own addresses."""
    pkt = udp_probe(41008)
    with router.tunables({"net.inet.ip.forwarding": 0}):
        out = probe(lab, router, [to_router(lab, "h1", pkt)], reason="forwarding_disabled", expect=1,
                    far_match=udp_to(41008))
        for addr in ("10.1.0.1", "10.3.0.1"):
            cp = lab.ping("h1", addr, count=1, wait=2)
            assert cp.returncode == 0, cp.stdout + cp.stderr
    assert_silent_drop(out, "forwarding_disabled", 1)
    assert delivered(lab, to_router(lab, "h1", pkt), udp_to(41008))


def test_ttl_exceeded(lab: RouterLab, router: RunningRouter) -> None:
    """TTL 1 and 0: ICMP time exceeded in transit (11/0) from the incoming
    link's address, quoting the datagram; nothing forwarded."""
    frames = [to_router(lab, "h1", udp_probe(41009, ttl=1, sport=1)),
              to_router(lab, "h1", udp_probe(41009, ttl=0, sport=2))]
    errors: Match = lambda p: (p.src == router_mac(1) and ICMP in p and IPerror in p
                               and quoted_udp(p).dport == 41009)
    out = probe(lab, router, frames, reason="ttl_exceeded", expect=2, far_match=udp_to(41009),
                sender_match=errors, want_at_sender=2)
    assert out.drops == {"ttl_exceeded": 2}
    assert out.errors_sent == 2
    assert not out.at_far
    assert sorted(quoted_udp(p).sport for p in out.at_sender) == [1, 2]
    for p in out.at_sender:
        assert (p[ICMP].type, p[ICMP].code) == (11, 0)
        assert (p[IP].src, p[IP].dst) == ("10.1.0.1", "10.1.0.2")
    assert delivered(lab, to_router(lab, "h1", udp_probe(41009, ttl=2)), udp_to(41009))


# --- ARP: holding, reclaiming, a full table ----------------------------------------------

def test_arp_hold_overflow(lab: RouterLab, router: RunningRouter) -> None:
    """With maxhold=2 only the two newest of five packets for a silent
    neighbour are kept; when ARP gives up those two get ICMP host
    unreachable (3/1), the three oldest nothing."""
    frames = [to_router(lab, "h1", udp_probe(41010, dst="10.3.0.77", sport=i)) for i in range(1, 6)]
    unreach: Match = lambda p: (p.src == router_mac(1) and ICMP in p and IPerror in p
                                and quoted_udp(p).dport == 41010)
    with router.tunables({"net.link.ether.inet.maxhold": 2, "net.link.ether.inet.maxtries": 1}):
        before = router.call("stats")
        out = probe(lab, router, frames, reason="arp_hold_overflow", expect=3,
                    far_match=udp_to(41010), sender_match=unreach, want_at_sender=2, quiet=4.0)
        router.wait_for(lambda: not any(e["ip"] == "10.3.0.77" for e in router.call("arp.list")),
                        timeout=3, what="the entry for 10.3.0.77 removed")
        after = router.call("stats")
    assert moved(before["drops"], after["drops"]) == {"arp_hold_overflow": 3, "arp_timeout": 2}
    assert after["icmp"]["errors_sent"] - before["icmp"]["errors_sent"] == 2
    assert not out.at_far
    assert sorted(quoted_udp(p).sport for p in out.at_sender) == [4, 5]
    for p in out.at_sender:
        assert (p[ICMP].type, p[ICMP].code) == (3, 1)
        assert p[IP].src == "10.1.0.1"


def test_arp_hold_reclaimed(lab: RouterLab, router: RunningRouter) -> None:
    """Packets held for 32 silent neighbours pin clusters; when the pool
    (kern.ipc.nmbclusters=256) runs dry every held packet is freed and
    counted, the router keeps reading, and a ping passes right after.

    Frames go one at a time, each read before the next is sent, so every
    frame read is accounted for: either freed by the reclaim or still held
    (the one that found no buffer, read once the pool was refilled).  No
    ICMP for any of them; nothing reaches h3."""
    neighbours = [f"10.3.0.{100 + i}" for i in range(32)]
    frames = [to_router(lab, "h1", udp_probe(41011, dst=neighbours[i % 32], sport=i + 1))
              for i in range(600)]
    router.forget_arp(incomplete=True)
    with ExitStack() as stack:
        stack.callback(router.forget_arp, incomplete=True)
        stack.enter_context(router.tunables({"net.link.ether.inet.maxtries": 100}))
        s1, s3 = stack.enter_context(sniffers(lab, "h1", "h3"))
        stack.enter_context(router.tunables({"kern.ipc.nmbclusters": 256},
                                     restore={"kern.ipc.nmbclusters": 0}))
        before = router.call("stats")
        seen = taken(before)
        sent = 0
        for frame in frames:
            s1.send(frame)
            sent += 1
            deadline = time.monotonic() + 2
            while True:
                after = router.call("stats")
                if taken(after) > seen or time.monotonic() > deadline:
                    break
            assert taken(after) == seen + 1, f"frame {sent} did not leave the TAP queue"
            seen += 1
            if after["drops"]["arp_hold_reclaimed"] != before["drops"]["arp_hold_reclaimed"]:
                break
        in_hold = sum(e["held"] for e in router.call("arp.list") if e["ip"] in neighbours)
        icmp = s1.collect(icmp_from_router(1), timeout=QUIET)
        far = s3.collect(udp_to(41011), timeout=0.1)
        after = router.call("stats")
    assert in_hold <= 1
    assert sent - in_hold > 0
    assert moved(before["drops"], after["drops"]) == {"arp_hold_reclaimed": sent - in_hold}
    assert after["icmp"]["errors_sent"] == before["icmp"]["errors_sent"]
    assert not icmp and not far
    assert router.proc.poll() is None
    cp = lab.ping("h1", "10.3.0.2", count=1, wait=2)
    assert cp.returncode == 0, cp.stdout


def test_arp_table_full(tmp_path: Path) -> None:
    """Requests for the router's address from DP_ARP_MAX distinct senders
    fill its table; then a new sender is still answered but not learned, and
    a packet for an unknown neighbour is dropped without asking for it.
    A router (and namespaces) of its own: a full table would break others.
    Link 1 is a /20 so that every sender is on the link (a router learns
    neighbours from its connected prefixes only)."""
    with nn.Topology() as topo:
        lab = make_lab(topo, n_hosts=2)
        h1 = lab.host("h1")
        h1.router, h1.address = IPv4Interface("10.1.0.1/20"), IPv4Interface("10.1.0.2/20")
        # Every entry may sit on link 1: the per-interface cap is the table's size.
        router = start_router(lab, tmp_path / "full",
                              sysctl={"net.link.ether.inet.max_per_if": DP_ARP_MAX})
        try:
            arp_table_full_on(lab, router)
        finally:
            code, out = router.stop()
        assert code == 0, out


def arp_table_full_on(lab: RouterLab, router: RunningRouter) -> None:
    cp = lab.ping("h1", "10.2.0.2", count=1, wait=2)       # both hosts known
    assert cp.returncode == 0, cp.stdout
    start = router.call("stats")["arp"]["entries"]
    mac = "02:00:00:00:bb:01"

    def request(n: int) -> bytes:
        return arp_frame(1, mac, f"10.1.{n >> 8}.{n & 255}", "10.1.0.1")

    first = 16                                      # 10.1.0.16 on: past the hosts
    fill = [request(n) for n in range(first, first + DP_ARP_MAX - start)]
    with sniffers(lab, "h1") as (s1,):
        for k in range(0, len(fill), 200):          # paced below the TAP queue
            chunk = fill[k:k + 200]
            target = start + k + len(chunk)
            for _attempt in range(5):               # repeats only refresh entries
                for f in chunk:
                    s1.send(f)
                try:
                    router.wait_for(lambda: router.call("stats")["arp"]["entries"] >= target,
                                    timeout=1, what=f"{target} ARP entries")
                    break
                except AssertionError:
                    continue
    before = router.call("stats")
    assert before["arp"]["entries"] == DP_ARP_MAX
    assert before["drops"]["arp_table_full"] == 0

    newcomer = "10.1.15.1"
    with sniffers(lab, "h1") as (s1,):
        s1.send(arp_frame(1, mac, newcomer, "10.1.0.1"))
        answered = s1.collect(arp_answer_to(newcomer))
    wait_drop(router, before["drops"], "arp_table_full", 1)
    assert answered, "a request for our address went unanswered with the table full"
    assert router.call("stats")["arp"]["entries"] == DP_ARP_MAX

    with sniffers(lab, "h2") as (s2,):
        mid = router.call("stats")
        out = probe(lab, router, [to_router(lab, "h1", udp_probe(41012, dst="10.2.0.77"))],
                    reason="arp_table_full", expect=1, far="h2", far_match=udp_to(41012))
        asked = s2.collect(lambda p: ARP in p and p[ARP].pdst == "10.2.0.77", timeout=0.1)
    assert_silent_drop(out, "arp_table_full", 1)
    assert not asked, "an ARP request went out with the table full"
    assert router.call("stats")["arp"]["requests_sent"] == mid["arp"]["requests_sent"]


ASKER = "02:00:00:00:cc:01"          # the MAC ARP requests come from below


def arp_request_frame(sender_ip: str, target: str, mac: str = ASKER) -> bytes:
    return arp_frame(1, mac, sender_ip, target)


def arp_answer_to(sender_ip: str, k: int = 1) -> Match:
    return lambda p: p.src == router_mac(k) and ARP in p and p[ARP].pdst == sender_ip


def test_arp_not_on_link(lab: RouterLab, router: RunningRouter) -> None:
    """Requests for the router's address on link 1 (10.1.0.0/24) from senders
    outside that prefix -- one from nowhere, one from link 2's prefix -- are
    neither answered nor learned; an on-link sender is both."""
    strangers = ("10.9.9.9", "10.2.0.77")
    frames = [arp_request_frame(ip, "10.1.0.1") for ip in strangers]
    arp_in = router.call("stats")["arp"]["received"]
    out = probe(lab, router, frames, reason="arp_not_on_link", expect=len(frames),
                far_match=lambda p: ARP in p and p[ARP].psrc in strangers,
                sender_match=lambda p: p.src == router_mac(1) and ARP in p
                and p[ARP].pdst in strangers)
    assert_silent_drop(out, "arp_not_on_link", len(frames))
    assert router.call("stats")["arp"]["received"] == arp_in      # dropped, not also handled
    learned = {e["ip"] for e in router.call("arp.list")}
    assert not learned & set(strangers), learned
    # Control: the same request from a sender inside 10.1.0.0/24.
    with sniffers(lab, "h1") as (s1,):
        s1.send(arp_request_frame("10.1.0.77", "10.1.0.1"))
        assert s1.collect(arp_answer_to("10.1.0.77")), "an on-link sender was not answered"
    assert any(e["ip"] == "10.1.0.77" and e["interface"] == "tap1"
               for e in router.call("arp.list"))
    router.forget_arp("10.1.0.77")
    # A prefix routed straight out of tap1 (no gateway) is on that link too;
    # the same prefix routed out of tap2 is not on tap1's.
    for out_if, answered in (("tap1", True), ("tap2", False)):
        router.call("route.add", prefix="10.77.0.0/16", interface=out_if)
        try:
            before = drops(router)["arp_not_on_link"]
            with sniffers(lab, "h1") as (s1,):
                s1.send(arp_request_frame("10.77.0.5", "10.1.0.1"))
                got = s1.collect(arp_answer_to("10.77.0.5"), timeout=QUIET if not answered else 2.0)
            assert bool(got) is answered, out_if
            learned = any(e["ip"] == "10.77.0.5" for e in router.call("arp.list"))
            assert learned is answered, out_if
            assert drops(router)["arp_not_on_link"] == before + (0 if answered else 1)
        finally:
            router.call("route.del", prefix="10.77.0.0/16")
            router.forget_arp("10.77.0.5")


def test_arp_interface_full(lab: RouterLab, router: RunningRouter) -> None:
    """With net.link.ether.inet.max_per_if entries on link 1, a new sender
    there is answered but not learned (arp_interface_full), while link 2
    still learns its own neighbours."""
    on_tap1 = sum(e["interface"] == "tap1" for e in router.call("arp.list"))
    cap = on_tap1 + 3
    fill = [f"10.1.0.{n}" for n in range(100, 103)]
    with router.tunables({"net.link.ether.inet.max_per_if": cap}):
        try:
            with sniffers(lab, "h1") as (s1,):
                for ip in fill:
                    s1.send(arp_request_frame(ip, "10.1.0.1"))
            router.wait_for(lambda: sum(e["interface"] == "tap1"
                                        for e in router.call("arp.list")) == cap,
                            what=f"{cap} ARP entries on tap1")
            newcomer = "10.1.0.110"
            out = probe(lab, router, [arp_request_frame(newcomer, "10.1.0.1")],
                        reason="arp_interface_full", expect=1,
                        far_match=lambda p: ARP in p and p[ARP].psrc == newcomer,
                        sender_match=arp_answer_to(newcomer))
            assert out.drops == {"arp_interface_full": 1}
            assert out.at_sender, "a request for our address went unanswered at the cap"
            assert not out.at_far and out.errors_sent == 0
            entries = router.call("arp.list")
            assert not any(e["ip"] == newcomer for e in entries)
            assert sum(e["interface"] == "tap1" for e in entries) == cap
            # Link 2 is not held back by link 1's share.
            with sniffers(lab, "h2") as (s2,):
                s2.send(arp_request_frame("10.2.0.110", "10.2.0.1", mac="02:00:00:00:cc:02"))
                assert s2.collect(arp_answer_to("10.2.0.110", 2))
            router.wait_for(lambda: any(e["ip"] == "10.2.0.110" for e in router.call("arp.list")),
                            what="10.2.0.110 learned on tap2")
        finally:
            router.forget_arp(*fill, "10.2.0.110")


# --- delivered to the router -------------------------------------------------------------

def test_local_not_echo(lab: RouterLab, router: RunningRouter) -> None:
    """UDP, an ICMP timestamp request, an echo reply and a fragment of an
    echo request to the router's addresses: dropped, nothing answered."""
    ok = to_router(lab, "h1", echo_request("10.1.0.1", ident=4113))
    with sniffers(lab, "h1") as (s1,):
        s1.send(ok)
        assert s1.collect(icmp_from_router(1)), "control: the echo request was not answered"
    frag = IP(bytes(echo_request("10.1.0.1", ident=4113)))
    frag.flags = "MF"
    del frag.chksum
    pkts = [udp_probe(41013, dst="10.3.0.1"),
            IP(src="10.1.0.2", dst="10.1.0.1") / ICMP(type=13, id=4113) / (b"\0" * 12),
            IP(src="10.1.0.2", dst="10.1.0.1") / ICMP(type=0, id=4113, seq=1) / b"drop-probe",
            frag]
    local = router.call("stats")["delivered_local"]
    out = probe(lab, router, [to_router(lab, "h1", p) for p in pkts], reason="local_not_echo",
                expect=len(pkts), far_match=udp_to(41013))
    assert_silent_drop(out, "local_not_echo", len(pkts))
    assert router.call("stats")["delivered_local"] == local


def test_icmp_malformed(lab: RouterLab, router: RunningRouter) -> None:
    """An echo request to the router with a wrong ICMP checksum: not answered."""
    good = IP(bytes(echo_request("10.1.0.1", ident=4114)))
    bad = good.copy()
    bad[ICMP].chksum ^= 0x5A5A
    local = router.call("stats")["delivered_local"]
    out = probe(lab, router, [to_router(lab, "h1", bad)], reason="icmp_malformed", expect=1,
                far_match=lambda p: ICMP in p and p[ICMP].id == 4114)
    assert_silent_drop(out, "icmp_malformed", 1)
    assert router.call("stats")["delivered_local"] == local
    with sniffers(lab, "h1") as (s1,):
        s1.send(to_router(lab, "h1", good))
        assert s1.collect(icmp_from_router(1)), "control: the good echo was not answered"


# --- output ------------------------------------------------------------------------------

def test_tx_error(lab: RouterLab, router: RunningRouter) -> None:
    """With h3's side of tap3 down the router's write fails (EIO): counted
    on the interface and as a drop, no ICMP; once the link is up and h3
    configured again, traffic passes and the failed packet never shows up."""
    h3 = lab.host("h3")
    cp = lab.ping("h1", "10.3.0.2", count=1, wait=2)   # h3's MAC is known: one write only
    assert cp.returncode == 0, cp.stdout
    pkt = to_router(lab, "h1", udp_probe(41015))
    before = router.call("stats")
    nn.link_set(h3.ifname, h3.netns, up=False)
    try:
        with sniffers(lab, "h1") as (s1,):
            s1.send(pkt)
            wait_drop(router, before["drops"], "tx_error", 1)
            icmp = s1.collect(icmp_from_router(1), timeout=QUIET)
        after = router.call("stats")
    finally:
        nn.link_set(h3.ifname, h3.netns, up=True)
        nn.configure_host(h3.ifname, h3.netns, [], gateway=h3.router.ip)
    assert moved(before["drops"], after["drops"]) == {"tx_error": 1}
    assert iface(after, "tap3")["tx_errors"] == iface(before, "tap3")["tx_errors"] + 1
    assert iface(after, "tap3")["tx_packets"] == iface(before, "tap3")["tx_packets"]
    assert after["icmp"]["errors_sent"] == before["icmp"]["errors_sent"]
    assert not icmp
    with sniffers(lab, "h3") as (s3,):
        cp = lab.ping("h1", "10.3.0.2", count=1, wait=2)
        assert cp.returncode == 0, cp.stdout
        assert not s3.collect(udp_to(41015), timeout=0.3)


def test_output_no_route(lab: RouterLab, router: RunningRouter) -> None:
    """An echo request from 10.77.0.5, which has no route back: delivered,
    but the reply has nowhere to go and is dropped; nothing is sent."""
    local = router.call("stats")["delivered_local"]
    reply: Match = lambda p: ICMP in p and p[IP].dst == "10.77.0.5"
    with sniffers(lab, "h2") as (s2,):
        out = probe(lab, router, [to_router(lab, "h1", echo_request("10.1.0.1", 4116, src="10.77.0.5"))],
                    reason="output_no_route", expect=1, far_match=reply, sender_match=reply)
        at_h2 = s2.collect(reply, timeout=0.1)
    assert_silent_drop(out, "output_no_route", 1)
    assert not at_h2
    assert router.call("stats")["delivered_local"] == local + 1


# --- every reason has its test -----------------------------------------------------------

def test_every_drop_reason_is_provoked_by_some_test() -> None:
    """Each public drop reason is named in a function of a test module (this
    module, or another for the reasons that live there: header checks,
    routes, ARP timeout, no buffer...).  A reason added without a test that
    provokes it fails here."""
    import ast

    from forwarder.dataplane import DROP_REASONS

    named: set[str] = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):          # tests and their helpers
                named |= {c.value for c in ast.walk(node)
                          if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    missing = [r for r in DROP_REASONS if r not in named]
    assert not missing, f"drop reasons no test provokes by name: {missing}"
