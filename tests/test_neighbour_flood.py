"""Neighbour tables that cannot be flooded or poisoned for long (ARP and ND).

h1 10.1.0.2/24 2001:db8:1::2/64 --tap1-- router --tap2-- h2 10.2.0.2/16 2001:db8:2::2/64

h1 pings h2 through the router all along (a raw socket in h1's namespace,
an echo request every PING_INTERVAL s, each reply timed).  Two attacks on
h2's entry in the router's tables:

- A forged ARP reply (or NA) with h2's address and a MAC nobody has,
  injected from h2's side of tap2.  The router takes the new MAC but as
  STALE, probes it by unicast once used, nobody answers, and the next
  packet asks by broadcast (multicast), which h2 answers: h2's pings come
  back within RECOVERY s, with the router's default timers (delay 5 s,
  3 unicast probes).  h2's own entry for the router is pinned (permanent)
  so that h2 never asks the router anything: only the router's own state
  machine can put the right MAC back.
- A flood of packets from h1 to random addresses of h2's connected /16
  (the lab's /64 for IPv6): the unresolved entries stop at max_incomplete,
  h2's entry stays and h2 keeps answering, the packets held stay bounded
  and are all given back afterwards, and the router's broadcast requests
  (multicast solicitations) stay at the ppslimit each second, counted by
  the router and by a sniffer on tap2 alike.
"""
from __future__ import annotations

import random
import socket
import struct
import threading
import time
from ipaddress import IPv4Interface
from typing import Iterator

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from forwarder import netns as nn
from tests.routerlab import RunningRouter, router_mac, start_router
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401
from tests.wire import Sniffer, arp_frame, host_ipv6, host_mac

pytestmark = requires_netns

R1, R2, H1, H2 = "10.1.0.1", "10.2.0.1", "10.1.0.2", "10.2.0.2"
R1_6, R2_6, H1_6, H2_6 = "2001:db8:1::1", "2001:db8:2::1", "2001:db8:1::2", "2001:db8:2::2"
BOGUS = "02:de:ad:00:be:ef"         # the forged MAC: no station has it
RECOVERY = 10.0                     # seconds: the target after a forged reply
PING_INTERVAL = 0.1
PPS = 50                            # request_ppslimit and nd6_ns_ppslimit here
MAX_INCOMPLETE = 64
MAXHOLD = 16                        # net.link.ether.inet.maxhold (default)
FLOOD = 20000                       # frames of one flood
SO_RCVBUFFORCE = 33


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    lab = make_lab(topology, n_hosts=2)
    h2 = lab.host("h2")
    h2.router, h2.address = IPv4Interface(f"{R2}/16"), IPv4Interface(f"{H2}/16")
    return lab


@pytest.fixture(scope="module")
def router(lab: RouterLab, tmp_path_factory) -> Iterator[RunningRouter]:
    r = start_router(lab, tmp_path_factory.mktemp("neighflood"),
                     sysctl={"net.link.ether.inet.request_ppslimit": PPS,
                             "net.inet6.icmp6.nd6_ns_ppslimit": PPS,
                             "net.link.ether.inet.max_incomplete": MAX_INCOMPLETE},
                     addresses={"tap1": [f"{R1_6}/64"], "tap2": [f"{R2_6}/64"]})
    try:
        host_ipv6(lab, "h1", H1_6, gateway=R1_6)
        host_ipv6(lab, "h2", H2_6, gateway=R2_6)
        # h2 never asks the router for its MAC: what h2 sends cannot repair
        # the router's entry for h2 (Linux probes its own STALE entries).
        for ip in (R2, R2_6):
            cp = lab.run("h2", ["ip", "neigh", "replace", ip, "lladdr", router_mac(2),
                                "nud", "permanent", "dev", "tap2"])
            assert cp.returncode == 0, cp.stderr
        yield r
    finally:
        code, out = r.stop()
        assert code == 0, out


# --- h1 pings h2 -----------------------------------------------------------------------

def icmp_checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class Pinger:
    """Echo requests from a host's namespace every PING_INTERVAL s, on a
    thread of their own: when each was sent and when (if) it was answered,
    on one monotonic clock.  At most ``seconds`` long."""

    def __init__(self, ns: str, dst: str, seconds: float) -> None:
        self.v6 = ":" in dst
        with nn.enter_netns(ns):
            self.s = (socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
                      if self.v6 else
                      socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
        self.s.settimeout(0.02)
        self.dst, self.seconds = dst, seconds
        self.ident = random.randrange(1, 0xFFFF)
        self.sent: dict[int, float] = {}
        self.answered: dict[int, float] = {}
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _request(self, seq: int) -> bytes:
        head = struct.pack("!BBHHH", 128 if self.v6 else 8, 0, 0, self.ident, seq)
        body = b"nbr-flood" * 4
        if self.v6:                     # the kernel fills in ICMPv6 checksums
            return head + body
        c = icmp_checksum(head + body)
        return head[:2] + struct.pack("!H", c) + head[4:] + body

    def _reply_seq(self, data: bytes) -> int | None:
        if not self.v6:
            data = data[(data[0] & 0x0F) * 4:]
        if len(data) < 8:
            return None
        typ, _code, _sum, ident, seq = struct.unpack("!BBHHH", data[:8])
        if typ != (129 if self.v6 else 0) or ident != self.ident:
            return None
        return seq

    def _run(self) -> None:
        start = time.monotonic()
        seq, next_at = 0, start
        while not self.stopping and time.monotonic() - start < self.seconds:
            now = time.monotonic()
            if now >= next_at:
                seq += 1
                self.sent[seq] = now
                self.s.sendto(self._request(seq), (self.dst, 0))
                next_at += PING_INTERVAL
            try:
                data = self.s.recv(2048)
            except socket.timeout:
                continue
            got = self._reply_seq(data)
            if got is not None and got in self.sent:
                self.answered.setdefault(got, time.monotonic())

    def __enter__(self) -> "Pinger":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.s.close()

    def answers_since(self, t: float) -> list[float]:
        """When the requests sent after t were answered, in order."""
        return sorted(self.answered[q] for q, at in self.sent.items()
                      if at > t and q in self.answered)

    def lost_between(self, t0: float, t1: float) -> list[int]:
        """Requests sent in [t0, t1) (older than a second now) never answered."""
        old = time.monotonic() - 1
        return [q for q, at in self.sent.items()
                if t0 <= at < t1 and at < old and q not in self.answered]

    def wait_answers(self, n: int, since: float, timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.answers_since(since)
            if len(got) >= n:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{self.dst}: {n} echo replies since t={since:.2f}: "
                             f"{len(self.answers_since(since))} within {timeout} s")


# --- the tables ---------------------------------------------------------------------------

def entry(r: RunningRouter, table: str, ip: str) -> dict | None:
    return next((e for e in r.call(f"{table}.list") if e["ip"] == ip), None)


def resolved(r: RunningRouter, table: str, ip: str, mac: str) -> None:
    """ip's entry has mac (and ip answers pings through the router)."""
    r.wait_for(lambda: (e := entry(r, table, ip)) is not None and e["mac"] == mac,
               timeout=3, what=f"{ip} at {mac} (now {entry(r, table, ip)})")


def forged_recovery(lab: RouterLab, router: RunningRouter, table: str, dst: str,
                    forged: bytes) -> tuple[float, str, list[Ether]]:
    """Ping dst from h1; inject ``forged`` on tap2 (a message giving dst the
    MAC BOGUS); the seconds until dst answered again, the state the forged
    MAC was taken in, and what was sent on tap2 meanwhile."""
    h2 = lab.host("h2")
    mac = host_mac(lab, "h2")
    with Pinger(lab.host("h1").netns, dst, seconds=RECOVERY + 8) as ping, \
            Sniffer(h2.netns, "tap2") as s2:
        s2.s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        ping.wait_answers(5, since=0, timeout=5)
        resolved(router, table, dst, mac)
        t_forged = time.monotonic()
        s2.send(forged)
        e = router.wait_for(lambda: (x := entry(router, table, dst)) and x["mac"] == BOGUS and x,
                            timeout=2, what=f"{dst} at {BOGUS}")
        t_taken = time.monotonic()
        back = ping.wait_answers(1, since=t_taken, timeout=RECOVERY + 5)[0]
        time.sleep(1)
        ping.stop()
        lost = ping.lost_between(t_taken, back - 0.5)
        frames = []
        while True:
            try:
                frames.append(s2.recv())
            except socket.timeout:
                break
    assert lost, "no echo request was lost after the forged message: the forge did nothing"
    resolved(router, table, dst, mac)
    return back - t_forged, e["state"], frames


# --- a forged ARP reply, a forged NA --------------------------------------------------------

def test_a_forged_arp_reply_is_re_resolved_within_10_s(lab: RouterLab,
                                                       router: RunningRouter) -> None:
    """A unicast ARP reply to the router giving h2's address the MAC BOGUS
    (Linux would take it as REACHABLE) makes the entry STALE at BOGUS; h1's
    pings make it DELAY, 5 s later the router asks BOGUS by unicast, 3
    times a second apart, nobody answers, the entry is freed and the next
    packet asks by broadcast: h2 answers and h1's pings come back, within
    10 s of the forged reply."""
    before = router.stats()["arp"]
    forged = arp_frame(2, BOGUS, H2, R2, dst=router_mac(2), hwdst=router_mac(2))
    took, taken_as, frames = forged_recovery(lab, router, "arp", H2, forged)
    print(f"ARP: h2 answers again {took:.2f} s after the forged reply")
    assert took < RECOVERY, f"h2 answered again only {took:.1f} s after the forged reply"
    assert taken_as in ("stale", "delay")           # taken, but not as confirmed
    asks = [p for p in frames if ARP in p and p[ARP].op == 1 and p[ARP].pdst == H2
            and p.src == router_mac(2)]
    probes = [p for p in asks if p.dst == BOGUS]
    assert len(probes) == 3, [(p.dst, p.time) for p in asks]
    assert all(0.85 <= b.time - a.time <= 1.3 for a, b in zip(probes, probes[1:]))
    assert any(p.dst == "ff:ff:ff:ff:ff:ff" and p.time > probes[-1].time for p in asks)
    forwarded_to_bogus = [p for p in frames if p.dst == BOGUS and ARP not in p]
    assert forwarded_to_bogus, "no echo request went to the forged MAC"
    after = router.stats()["arp"]
    assert after["probes_sent"] - before["probes_sent"] >= 3


def test_a_forged_neighbor_advertisement_is_re_resolved_within_10_s(
        lab: RouterLab, router: RunningRouter) -> None:
    """The same with a Neighbor Advertisement for h2's IPv6 address to the
    router, Solicited and Override set, target link-layer address BOGUS --
    the router had not asked: the new MAC is taken as STALE, not as
    confirmed -- and h1's pings over IPv6."""
    forged = bytes(Ether(dst=router_mac(2), src=BOGUS)
                   / IPv6(src=H2_6, dst=R2_6, hlim=255)
                   / ICMPv6ND_NA(tgt=H2_6, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=BOGUS))
    took, taken_as, frames = forged_recovery(lab, router, "ndp", H2_6, forged)
    print(f"ND: h2 answers again {took:.2f} s after the forged advertisement")
    assert took < RECOVERY, f"h2 answered again only {took:.1f} s after the forged NA"
    assert taken_as in ("stale", "delay")
    asks = [p for p in frames if ICMPv6ND_NS in p and p[ICMPv6ND_NS].tgt == H2_6]
    probes = [p for p in asks if p.dst == BOGUS]
    assert len(probes) == 3, [(p.dst, p.time) for p in asks]
    assert any(p[IPv6].dst == "ff02::1:ff00:2" and p.time > probes[-1].time for p in asks)


# --- floods -------------------------------------------------------------------------------

def ipv4_udp(src_mac: bytes, dst_mac: bytes, src: str, dst: bytes, ident: int) -> bytes:
    udp = struct.pack("!HHHH", 40999, 9, 26, 0) + b"flood-4-" * 2 + b"xx"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0, 64, 17, 0,
                     socket.inet_aton(src), dst)
    ip = ip[:10] + struct.pack("!H", icmp_checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def ipv6_udp(src_mac: bytes, dst_mac: bytes, src: str, dst: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40999, 9, 24, 0) + b"flood-6-" * 2
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64,
                     socket.inet_pton(socket.AF_INET6, src), dst)
    return dst_mac + src_mac + b"\x86\xdd" + ip + udp


def flood_frames(lab: RouterLab, v6: bool) -> list[bytes]:
    """FLOOD frames from h1 to distinct random addresses of h2's link: its
    /16 (but the router's and h2's), or its /64."""
    rnd = random.Random(6583)
    smac = bytes.fromhex(host_mac(lab, "h1").replace(":", ""))
    dmac = bytes.fromhex(router_mac(1).replace(":", ""))
    out, seen = [], {socket.inet_aton(R2), socket.inet_aton(H2),
                     socket.inet_pton(socket.AF_INET6, R2_6), socket.inet_pton(socket.AF_INET6, H2_6)}
    while len(out) < FLOOD:
        dst = (socket.inet_pton(socket.AF_INET6, "2001:db8:2::") [:8] + rnd.randbytes(8)
               if v6 else bytes([10, 2, rnd.randrange(256), rnd.randrange(1, 255)]))
        if dst in seen:
            continue
        seen.add(dst)
        out.append(ipv6_udp(smac, dmac, H1_6, dst) if v6 else
                   ipv4_udp(smac, dmac, H1, dst, len(out)))
    return out


def per_second(times: list[float]) -> list[int]:
    """How many of times fall in each second from the first."""
    if not times:
        return []
    bins = [0] * (int(times[-1] - times[0]) + 1)
    for t in times:
        bins[int(t - times[0])] += 1
    return bins


def at_rest(r: RunningRouter) -> tuple:
    """What held packets pin: mbufs and Packet-zone items in use, and the
    clusters in use (netstat -m's current: the Packet zone's cached items
    keep theirs, as FreeBSD's do)."""
    z = {x["name"]: x for x in r.call("zones")}
    return (z["mbuf"]["used"], z["mbuf_packet"]["used"],
            z["mbuf_cluster"]["used"] - z["mbuf_packet"]["free"])


def flood(lab: RouterLab, router: RunningRouter, v6: bool) -> None:
    table, key = ("ndp", "nd6") if v6 else ("arp", "arp")
    sent_key, limited_key = (("solicitations_sent", "solicitations_ratelimited") if v6 else
                             ("requests_sent", "requests_ratelimited"))
    dst, mac = (H2_6 if v6 else H2), host_mac(lab, "h2")
    frames = flood_frames(lab, v6)
    h1, h2 = lab.host("h1"), lab.host("h2")

    def is_ask(p: Ether) -> bool:        # a broadcast request / multicast solicitation
        if p.src != router_mac(2):
            return False
        if v6:
            return ICMPv6ND_NS in p and p[IPv6].dst.startswith("ff02::1:ff")
        return ARP in p and p[ARP].op == 1 and p.dst == "ff:ff:ff:ff:ff:ff"

    with Pinger(h1.netns, dst, seconds=25) as ping, Sniffer(h2.netns, "tap2") as s2, \
            Sniffer(h1.netns, "tap1") as s1:
        s2.s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        ping.wait_answers(3, since=0, timeout=5)
        resolved(router, table, dst, mac)
        rest = at_rest(router)
        before = router.stats()
        t0 = time.monotonic()
        for f in frames:
            s1.send(f)
        t_sent = time.monotonic()
        # While the entries are unresolved: bounded, and h2's still there.
        worst_held, worst_incomplete, samples = 0, 0, 0
        while time.monotonic() - t_sent < 2.5:
            rows = [e for e in router.call(f"{table}.list") if e["interface"] == "tap2"]
            mine = next((e for e in rows if e["ip"] == dst), None)
            assert mine is not None and mine["mac"] == mac, f"{dst} evicted or changed: {mine}"
            worst_incomplete = max(worst_incomplete, sum(e["state"] == "incomplete" for e in rows))
            worst_held = max(worst_held, sum(e["held"] for e in rows))
            samples += 1
        mid = router.stats()
        # Everything given up (maxtries 3 s), the holds given back.
        router.wait_for(lambda: not any(e["state"] == "incomplete"
                                        for e in router.call(f"{table}.list")),
                        timeout=6, what="every flooded entry given up")
        router.wait_for(lambda: at_rest(router) == rest, timeout=5,
                        what=f"buffers back at {rest} (now {at_rest(router)})")
        after = router.stats()
        lost = ping.lost_between(t0, time.monotonic() - 1)
        answered_during = ping.answers_since(t0)
        asks = [float(p.time) for p in s2.collect(is_ask, timeout=0.5, want=10 ** 6)]
    sent = (after[key][sent_key] - after[key]["probes_sent"]) \
        - (before[key][sent_key] - before[key]["probes_sent"])
    limited = after[key][limited_key] - before[key][limited_key]
    print(f"{table}: {sent} asked, {limited} rate-limited; on the wire per second:"
          f" {per_second(asks)}; at most {worst_incomplete} unresolved, {worst_held} held")
    # The flood reached the router and filled what it may fill, no more.
    assert samples >= 3 and worst_incomplete == MAX_INCOMPLETE, (samples, worst_incomplete)
    assert 0 < worst_held <= MAX_INCOMPLETE * MAXHOLD
    assert mid[key]["entries"] <= before[key]["entries"] + MAX_INCOMPLETE
    assert after["drops"]["arp_incomplete_full"] - before["drops"]["arp_incomplete_full"] \
        > FLOOD // 2
    # h2 answered all along.
    assert not lost, f"echo requests to {dst} lost during the flood: {lost}"
    assert len(answered_during) >= 20
    # The requests: at most PPS a second, on the wire as the router counts them.
    assert asks and max(per_second(asks)) <= PPS, per_second(asks)
    assert len(asks) == sent
    assert sent <= PPS * (int(asks[-1] - asks[0]) + 1)
    assert limited > 0


def test_a_flood_to_a_connected_16_leaves_the_neighbours_in_use_alone(
        lab: RouterLab, router: RunningRouter) -> None:
    """FLOOD packets from h1 to random addresses of h2's /16, as fast as h1
    sends them: at most max_incomplete entries go unresolved on tap2 (the
    rest are dropped as arp_incomplete_full), h2's entry stays and h2
    answers every ping meanwhile, at most max_incomplete x maxhold packets
    are held and all are given back once ARP gives up, and the broadcast
    requests stay at request_ppslimit a second (requests_ratelimited counts
    the rest)."""
    flood(lab, router, v6=False)


def test_a_flood_to_the_connected_64_leaves_the_neighbours_in_use_alone(
        lab: RouterLab, router: RunningRouter) -> None:
    """The same for IPv6: random addresses of h2's /64, multicast
    solicitations at nd6_ns_ppslimit a second (solicitations_ratelimited),
    and the same cap on unresolved entries (arp_incomplete_full)."""
    flood(lab, router, v6=True)
