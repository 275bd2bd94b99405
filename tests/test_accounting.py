"""Nothing is silently lost: every frame the router reads is forwarded,
delivered to it, handled as ARP, or dropped with a counted reason -- also
for garbage.  And garbage never crashes it.

Random garbage almost never gets past the IPv4 header checksum, so it is
mixed with frames that are valid up to ONE chosen defect (checksums fixed
after the defect), one family of them per stage of the path: Ethernet,
ARP, the IPv4 header checks, martians, local delivery, forwarding (route,
TTL, broadcast, MTU/DF, fragments).  Each family must show up under the
counter of the stage it targets.

h1 (10.1.0.2) --tap1-- router --tap2-- h2 (10.2.0.2)
                         |----tap3 (MTU 1280)-- h3 (10.3.0.2)
"""
from __future__ import annotations

import random
import struct
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet
from scapy.utils import checksum

from forwarder.router import mac_bytes
from tests.routerlab import RunningRouter, router_mac, start_router
from tests.topology import RouterLab, make_lab, requires_netns, topology  # noqa: F401
from tests.wire import Sniffer, host_mac

pytestmark = requires_netns

SMALL_MTU = 1280
H1, H2, H3 = "10.1.0.2", "10.2.0.2", "10.3.0.2"
ROUTER_H1_SIDE, ROUTER_H2_SIDE = "10.1.0.1", "10.2.0.1"
IP_OFF = 14                  # the IPv4 header's offset in an Ethernet frame
N_JUNK, N_CRAFTED = 1600, 1600
JUNK_SEED, CRAFT_SEED = 1812, 791


@pytest.fixture(scope="module")
def lab(topology):  # noqa: F811
    return make_lab(topology, n_hosts=3, mtus=(1500, 1500, SMALL_MTU))


@pytest.fixture(scope="module")
def router(lab, tmp_path_factory):
    r = start_router(lab, tmp_path_factory.mktemp("router"))
    yield r
    code, out = r.stop()
    assert code == 0, out


# --- garbage --------------------------------------------------------------------------

def junk_frames(n: int, ours: bytes, src: bytes, seed: int = JUNK_SEED) -> list[bytes]:
    """Frames of every shape a broken or hostile host could send: random
    ethertypes, IPv4 and ARP with random contents, random destinations,
    bare headers."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 6
        dst = ours if kind != 5 else rnd.choice([b"\xff" * 6, b"\x01\x00\x5e\x00\x00\x01",
                                                 bytes(rnd.getrandbits(8) for _ in range(6))])
        body = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 120)))
        if kind == 0:
            etype = rnd.getrandbits(16)
        elif kind in (1, 5):
            etype = 0x0800
            body = bytes([0x40 | rnd.randint(0, 15)]) + body       # IPv4-looking first byte
        elif kind == 2:
            etype = 0x0806
        elif kind == 3:                                             # ARP with the right shape
            etype = 0x0806
            body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, rnd.choice([1, 2, 7])) + body[:20].ljust(20, b"\0")
        else:                      # a bare header (AF_PACKET refuses anything shorter)
            etype, body = rnd.choice([0x0800, 0x0806]), b""
        out.append(dst + src + struct.pack("!H", etype) + body)
    return out


def passes_ip_header_checks(frame: bytes, ours: bytes) -> bool:
    """Whether the router's ip_input would take ``frame`` past its header
    checks (version, IHL, checksum) -- how garbage could reach the deeper
    counters.  A model of ether_input/ip_input's first legs."""
    if len(frame) < IP_OFF + 20 or frame[12:14] != b"\x08\x00":
        return False
    if not (frame[0] & 1) and frame[:6] != ours:
        return False
    ip = frame[IP_OFF:]
    hlen = (ip[0] & 0xf) * 4
    return ip[0] >> 4 == 4 and 20 <= hlen <= len(ip) and checksum(ip[:hlen]) == 0


# --- frames valid up to one defect -------------------------------------------------------

@dataclass(frozen=True)
class Wire:
    """The link-layer addresses of crafted frames on h1's link."""
    ours: str          # the router's MAC on tap1
    src: str           # h1's MAC


Maker = Callable[[Wire, random.Random], bytes]


@dataclass(frozen=True)
class Defect:
    """One family of crafted frames and the counter its frames must land in:
    a drop reason, or "forwarded", "delivered_local" or "arp_received"."""
    name: str
    counter: str
    make: Maker


def transport(rnd: random.Random) -> Packet:
    """A UDP datagram, an ICMP echo request or a TCP SYN with a little data."""
    data = rnd.randbytes(rnd.randint(0, 48))
    kind = rnd.randrange(3)
    if kind == 0:
        return UDP(sport=rnd.randint(1024, 65535), dport=rnd.randint(1, 65535)) / data
    if kind == 1:
        return ICMP(type=8, id=rnd.getrandbits(16), seq=rnd.getrandbits(16)) / data
    return TCP(sport=rnd.randint(1024, 65535), dport=rnd.randint(1, 65535), flags="S",
               seq=rnd.getrandbits(32)) / data


def ipv4(w: Wire, rnd: random.Random, dst: str, payload: Packet | bytes | None = None, *,
         src: str = H1, mac: str | None = None, **fields: object) -> bytearray:
    """A correct Ethernet/IPv4 frame from h1 (every checksum right)."""
    body = transport(rnd) if payload is None else payload
    pkt = (Ether(dst=mac or w.ours, src=w.src)
           / IP(src=src, dst=dst, id=rnd.getrandbits(16), **fields) / body)
    return bytearray(bytes(pkt))


def fix_ip_checksum(f: bytearray, hlen: int = 20) -> bytes:
    """Recompute the header checksum over ``hlen`` bytes (or what there is)."""
    hlen = min(hlen, len(f) - IP_OFF)
    f[IP_OFF + 10:IP_OFF + 12] = b"\0\0"
    f[IP_OFF + 10:IP_OFF + 12] = struct.pack("!H", checksum(bytes(f[IP_OFF:IP_OFF + hlen])))
    return bytes(f)


def flip_bit(f: bytearray, off: int, rnd: random.Random) -> bytes:
    """Flip one bit of the 16-bit checksum at ``off``: a one-bit change is
    never equivalent in ones' complement (unlike 0x0000 <-> 0xffff)."""
    v = struct.unpack_from("!H", f, off)[0] ^ (1 << rnd.randrange(16))
    struct.pack_into("!H", f, off, v)
    return bytes(f)


def set_total_length(f: bytearray, value: int) -> bytes:
    """Claim ``value`` bytes in the total length; the header checksum stays right."""
    struct.pack_into("!H", f, IP_OFF + 2, value)
    return fix_ip_checksum(f)


def arp(w: Wire, op: int, pdst: str, **fields: object) -> bytes:
    """An ARP packet from h1 (10.1.0.2 at its MAC), broadcast."""
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=w.src)
                 / ARP(op=op, hwsrc=w.src, psrc=H1, pdst=pdst, **fields))


def rand_host(rnd: random.Random, prefix: str) -> str:
    """A random host under a /16 ``prefix`` ("10.99" -> "10.99.x.y")."""
    return f"{prefix}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"


def bad_version(w: Wire, rnd: random.Random) -> bytes:
    f = ipv4(w, rnd, H2)
    f[IP_OFF] = (rnd.choice([0, 1, 2, 3, 5, 6, 7, 15]) << 4) | (f[IP_OFF] & 0xf)
    return fix_ip_checksum(f)


def ihl_below_5(w: Wire, rnd: random.Random) -> bytes:
    f = ipv4(w, rnd, H2)
    f[IP_OFF] = 0x40 | rnd.randint(0, 4)
    return fix_ip_checksum(f)


def ihl_beyond_frame(w: Wire, rnd: random.Random) -> bytes:
    """A short datagram (28..36 bytes) whose IHL claims more than that."""
    f = ipv4(w, rnd, H2, UDP(sport=rnd.randint(1024, 65535), dport=9) / rnd.randbytes(rnd.randint(0, 8)))
    ihl = rnd.randint((len(f) - IP_OFF) // 4 + 1, 15)
    f[IP_OFF] = 0x40 | ihl
    return fix_ip_checksum(f, ihl * 4)


def bad_header_checksum(w: Wire, rnd: random.Random) -> bytes:
    return flip_bit(ipv4(w, rnd, H2), IP_OFF + 10, rnd)


def total_length_too_long(w: Wire, rnd: random.Random) -> bytes:
    f = ipv4(w, rnd, H2)
    return set_total_length(f, len(f) - IP_OFF + rnd.randint(1, 300))


def total_length_below_header(w: Wire, rnd: random.Random) -> bytes:
    return set_total_length(ipv4(w, rnd, H2), rnd.randint(0, 19))


def padded_to_h2(w: Wire, rnd: random.Random) -> bytes:
    """Valid: Ethernet padding after the datagram is trimmed, then forwarded."""
    return bytes(ipv4(w, rnd, H2)) + bytes(rnd.randint(1, 40))


def padded_echo_to_router(w: Wire, rnd: random.Random) -> bytes:
    echo = ICMP(type=8, id=rnd.getrandbits(16), seq=1) / rnd.randbytes(rnd.randint(0, 32))
    return bytes(ipv4(w, rnd, ROUTER_H1_SIDE, echo)) + bytes(rnd.randint(1, 40))


def martian_source(w: Wire, rnd: random.Random) -> bytes:
    src = rnd.choice([rand_host(rnd, "0.0"), rand_host(rnd, "127.0"), rand_host(rnd, "224.0"),
                      rand_host(rnd, "240.0"), "255.255.255.255"])
    return bytes(ipv4(w, rnd, H2, src=src))


def martian_destination(w: Wire, rnd: random.Random) -> bytes:
    dst = rnd.choice([rand_host(rnd, "0.1"), rand_host(rnd, "127.0"), rand_host(rnd, "250.9"),
                      "255.255.255.255", "0.0.0.0"])
    return bytes(ipv4(w, rnd, dst))


def multicast_destination(w: Wire, rnd: random.Random) -> bytes:
    return bytes(ipv4(w, rnd, f"{rnd.randint(224, 239)}.{rnd.randint(0, 255)}.0.{rnd.randint(1, 254)}"))


def directed_broadcast(w: Wire, rnd: random.Random) -> bytes:
    return bytes(ipv4(w, rnd, rnd.choice(["10.2.0.255", "10.3.0.255", "10.1.0.255"])))


def link_group_to_unicast_ip(w: Wire, rnd: random.Random) -> bytes:
    mac = rnd.choice(["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb", "33:33:00:00:00:01"])
    return bytes(ipv4(w, rnd, H2, mac=mac))


def other_station(w: Wire, rnd: random.Random) -> bytes:
    mac = rnd.choice([router_mac(2), "02:aa:bb:cc:dd:ee", w.src])
    return bytes(ipv4(w, rnd, H2, mac=mac))


def unknown_ethertype(w: Wire, rnd: random.Random) -> bytes:
    f = ipv4(w, rnd, H2)
    f[12:14] = struct.pack("!H", rnd.choice([0x86dd, 0x8100, 0x88cc, 0x88b5, 0x0801, 0x0805]))
    return bytes(f)


def ttl(value: int) -> Maker:
    """A valid packet for h2 with TTL ``value``."""
    def make(w: Wire, rnd: random.Random) -> bytes:
        return bytes(ipv4(w, rnd, H2, ttl=value))
    return make


def no_route(w: Wire, rnd: random.Random) -> bytes:
    return bytes(ipv4(w, rnd, rand_host(rnd, "10.99")))


def fragment_no_route(initial: bool) -> Maker:
    """A fragment (offset 0 with MF, or a later one) for 10.99.x.x."""
    def make(w: Wire, rnd: random.Random) -> bytes:
        data = rnd.randbytes(8 * rnd.randint(1, 6))
        if initial:
            return bytes(ipv4(w, rnd, rand_host(rnd, "10.99"), data, proto=17, flags="MF"))
        return bytes(ipv4(w, rnd, rand_host(rnd, "10.99"), data, proto=17,
                          flags=rnd.choice(["MF", 0]), frag=rnd.randint(1, 100)))
    return make


def echo_bad_icmp_checksum(w: Wire, rnd: random.Random) -> bytes:
    echo = ICMP(type=8, id=rnd.getrandbits(16), seq=2) / rnd.randbytes(rnd.randint(0, 32))
    return flip_bit(ipv4(w, rnd, ROUTER_H1_SIDE, echo), IP_OFF + 20 + 2, rnd)


def to_router_not_echo(w: Wire, rnd: random.Random) -> bytes:
    """UDP, TCP, ICMP timestamp request or an echo fragment for the router."""
    kind = rnd.randrange(4)
    if kind == 0:
        return bytes(ipv4(w, rnd, ROUTER_H1_SIDE, UDP(sport=rnd.randint(1024, 65535), dport=53) / b"q"))
    if kind == 1:
        return bytes(ipv4(w, rnd, ROUTER_H2_SIDE, TCP(sport=rnd.randint(1024, 65535), dport=22, flags="S")))
    if kind == 2:
        return bytes(ipv4(w, rnd, ROUTER_H1_SIDE, ICMP(type=13, id=rnd.getrandbits(16)) / bytes(12)))
    return bytes(ipv4(w, rnd, ROUTER_H1_SIDE, ICMP(type=8, id=7) / bytes(16), flags="MF"))


def echo_to_router(w: Wire, rnd: random.Random) -> bytes:
    """Valid: answered, from whichever of the router's addresses was asked."""
    echo = ICMP(type=8, id=rnd.getrandbits(16), seq=3) / rnd.randbytes(rnd.randint(0, 64))
    return bytes(ipv4(w, rnd, rnd.choice([ROUTER_H1_SIDE, ROUTER_H2_SIDE]), echo))


def arp_malformed(w: Wire, rnd: random.Random) -> bytes:
    kind = rnd.randrange(5)
    if kind == 0:
        return arp(w, 1, ROUTER_H1_SIDE, hwtype=rnd.choice([0, 6, 0x0100]))
    if kind == 1:
        return arp(w, 1, ROUTER_H1_SIDE, ptype=rnd.choice([0x86dd, 0x0801, 0]))
    if kind == 2:
        f = bytearray(arp(w, 1, ROUTER_H1_SIDE))
        f[IP_OFF + 4] = rnd.choice([0, 4, 8, 16])            # hardware address length
        return bytes(f)
    if kind == 3:
        f = bytearray(arp(w, 1, ROUTER_H1_SIDE))
        f[IP_OFF + 5] = rnd.choice([0, 6, 16])               # protocol address length
        return bytes(f)
    return arp(w, 1, ROUTER_H1_SIDE)[:IP_OFF + rnd.randint(0, 27)]   # too short


def arp_request(target: str) -> Maker:
    """A well-formed who-has ``target`` from h1."""
    def make(w: Wire, rnd: random.Random) -> bytes:
        return arp(w, 1, target)
    return make


def valid_to_h2(w: Wire, rnd: random.Random) -> bytes:
    return bytes(ipv4(w, rnd, H2))


def df_beyond_small_mtu(w: Wire, rnd: random.Random) -> bytes:
    size = rnd.randint(SMALL_MTU - 28 + 1, 1400)
    return bytes(ipv4(w, rnd, H3, UDP(sport=rnd.randint(1024, 65535), dport=9) / bytes(size),
                      flags="DF"))


def fragmented_to_h3(w: Wire, rnd: random.Random) -> bytes:
    """Valid: larger than the 1280-byte link, DF clear: forwarded in fragments."""
    size = rnd.randint(SMALL_MTU - 28 + 1, 1400)
    return bytes(ipv4(w, rnd, H3, UDP(sport=rnd.randint(1024, 65535), dport=9) / bytes(size)))


DEFECTS: tuple[Defect, ...] = (
    Defect("bad version", "ip_bad_version", bad_version),
    Defect("IHL < 5", "ip_bad_header_length", ihl_below_5),
    Defect("IHL beyond the frame", "ip_bad_header_length", ihl_beyond_frame),
    Defect("bad header checksum", "ip_bad_checksum", bad_header_checksum),
    Defect("total length beyond the frame", "ip_bad_total_length", total_length_too_long),
    Defect("total length below the header", "ip_bad_total_length", total_length_below_header),
    Defect("Ethernet padding, forwarded", "forwarded", padded_to_h2),
    Defect("Ethernet padding, echo answered", "delivered_local", padded_echo_to_router),
    Defect("martian source", "martian_source", martian_source),
    Defect("martian destination", "martian_destination", martian_destination),
    Defect("multicast destination", "ip_broadcast_destination", multicast_destination),
    Defect("directed broadcast", "ip_broadcast_destination", directed_broadcast),
    Defect("link-layer group MAC, unicast IP", "link_broadcast", link_group_to_unicast_ip),
    Defect("another station's MAC", "not_our_mac", other_station),
    Defect("unknown ethertype", "ethertype", unknown_ethertype),
    Defect("TTL 0", "ttl_exceeded", ttl(0)),
    Defect("TTL 1", "ttl_exceeded", ttl(1)),
    Defect("no route", "no_route", no_route),
    Defect("initial fragment, no route", "no_route", fragment_no_route(True)),
    Defect("later fragment, no route", "no_route", fragment_no_route(False)),
    Defect("echo with a bad ICMP checksum", "icmp_malformed", echo_bad_icmp_checksum),
    Defect("to the router, not an echo", "local_not_echo", to_router_not_echo),
    Defect("echo request to the router", "delivered_local", echo_to_router),
    Defect("malformed ARP", "arp_malformed", arp_malformed),
    Defect("ARP request for the router", "arp_received", arp_request(ROUTER_H1_SIDE)),
    Defect("ARP request for another host", "arp_received", arp_request("10.1.0.77")),
    Defect("valid, to h2", "forwarded", valid_to_h2),
    Defect("DF set, beyond a 1280 MTU", "needfrag_df_set", df_beyond_small_mtu),
    Defect("beyond a 1280 MTU, fragmented", "forwarded", fragmented_to_h3),
)

# Counters that only a frame with a correct IPv4 header reaches (garbage
# almost never has one) and that the hosts' own traffic does not touch:
# for these the count is known from above as well as from below.
DEEP = frozenset({
    "ip_bad_total_length", "martian_source", "martian_destination", "ip_broadcast_destination",
    "link_broadcast", "ttl_exceeded", "no_route", "icmp_malformed", "local_not_echo",
    "needfrag_df_set", "delivered_local",
})


def crafted_frames(n: int, w: Wire, seed: int = CRAFT_SEED) -> list[tuple[Defect, bytes]]:
    """``n`` frames, the defects in turn, each frame drawn from ``seed``."""
    rnd = random.Random(seed)
    return [(DEFECTS[i % len(DEFECTS)], DEFECTS[i % len(DEFECTS)].make(w, rnd)) for i in range(n)]


# --- the router's counters --------------------------------------------------------------

def accounted(s: dict) -> int:
    """Frames the router says what it did with."""
    return (sum(s["drops"].values()) + s["forwarded"] + s["delivered_local"]
            + s["arp"]["received"])


def rx_total(s: dict) -> int:
    """Frames read, over all interfaces (the hosts' answers come in on tap2/tap3)."""
    return sum(i["rx_packets"] for i in s["interfaces"])


def counter(s: dict, name: str) -> int:
    """One counter of a stats snapshot, by the names DEFECTS use."""
    if name == "arp_received":
        return s["arp"]["received"]
    if name in ("forwarded", "delivered_local", "fragments_created"):
        return s[name]
    return s["drops"][name]


def deltas(before: dict, after: dict) -> dict[str, int]:
    """What rose between two snapshots: the drop reasons and the rest."""
    names = [*after["drops"], "forwarded", "delivered_local", "arp_received"]
    return {n: counter(after, n) - counter(before, n) for n in names
            if counter(after, n) != counter(before, n)}


def tap_dropped(lab: RouterLab) -> int:
    """Frames the kernel dropped on h1's TAP queue towards the router."""
    cp = lab.run("h1", ["cat", "/sys/class/net/tap1/statistics/tx_dropped"], timeout=10)
    return int(cp.stdout)


def send_paced(sniffer: Sniffer, frames: list[bytes]) -> None:
    """Send ``frames`` on h1's side of its TAP, paced below the queue's size."""
    for i, f in enumerate(frames):
        sniffer.send(f)
        if i % 200 == 199:
            # Stay below the TAP's 1000-frame queue: what overflows there is
            # dropped by the kernel before the router could read it.
            time.sleep(0.005)


def settle(router: RunningRouter, lab: RouterLab, before: dict, sent: int, dropped0: int,
           timeout: float = 10.0) -> tuple[dict, int]:
    """Wait (bounded) until the router has read what h1 sent, less what the
    TAP queue dropped, and its counters stopped changing (the hosts' answers
    are in too).  Returns the last snapshot and the queue drops."""
    deadline = time.monotonic() + timeout
    last: tuple[int, int] | None = None
    while True:
        after = router.stats()
        dropped = tap_dropped(lab) - dropped0
        read = after["interfaces"][0]["rx_packets"] - before["interfaces"][0]["rx_packets"]
        now = (rx_total(after), accounted(after))
        if (read >= sent - dropped and now == last) or time.monotonic() > deadline:
            return after, dropped
        last = now
        time.sleep(0.2)


def counter_violations(before: dict, after: dict, want: Counter, dropped: int,
                       slack: int) -> list[str]:
    """Each targeted counter rose by at least what was sent for it less the
    queue's drops; the deep ones by at most what was sent (plus ``slack``,
    garbage that passes the header checks)."""
    bad = []
    for name, n in sorted(want.items()):
        got = counter(after, name) - counter(before, name)
        if got < max(1, n - dropped) or (name in DEEP and got > n + slack):
            bad.append(f"{name}: rose by {got}, {n} sent for it ({dropped} lost on the queue)")
    return bad


def test_every_frame_read_is_accounted_for(lab, router):
    """Garbage and frames valid up to one defect, shuffled: what the router
    read on all its interfaces equals what it accounted for, and each defect
    family landed in the counter of the stage it targets."""
    w = Wire(ours=router_mac(1), src=host_mac(lab, "h1"))
    junk = junk_frames(N_JUNK, mac_bytes(w.ours), mac_bytes(w.src))
    crafted = crafted_frames(N_CRAFTED, w)
    frames = junk + [f for _, f in crafted]
    random.Random(JUNK_SEED + CRAFT_SEED).shuffle(frames)
    want = Counter(d.counter for d, _ in crafted)
    per_defect = Counter(d.name for d, _ in crafted)
    slack = sum(passes_ip_header_checks(f, mac_bytes(w.ours)) for f in junk)
    # Every neighbour resolved first: a packet held for ARP is already counted
    # as forwarded, and one dropped there later (hold overflow, ARP timeout)
    # would be counted twice; the router's own answers must not wait either.
    for dst in (H2, H3):
        assert lab.ping("h1", dst, count=1, wait=2).returncode == 0, dst
    s1 = Sniffer(lab.host("h1").netns, "tap1")
    try:
        dropped0 = tap_dropped(lab)
        before = router.stats()
        send_paced(s1, frames)
        after, dropped = settle(router, lab, before, len(frames), dropped0)
    finally:
        s1.close()
    rx1 = after["interfaces"][0]["rx_packets"] - before["interfaces"][0]["rx_packets"]
    # h1's kernel may add a frame of its own (an ARP); it is accounted the same way.
    assert len(frames) - dropped <= rx1 <= len(frames) + 5
    assert dropped < len(frames) // 10
    read, told = rx_total(after) - rx_total(before), accounted(after) - accounted(before)
    assert told == read, f"{read} frames read, {told} accounted for: {deltas(before, after)}"
    wrong = counter_violations(before, after, want, dropped, slack)
    assert not wrong, "stages not reached as targeted:\n" + "\n".join(wrong)
    frags = counter(after, "fragments_created") - counter(before, "fragments_created")
    assert frags >= 2 * (per_defect["beyond a 1280 MTU, fragmented"] - dropped)
    assert [i["rx_nobuf"] for i in after["interfaces"]] == [i["rx_nobuf"] for i in before["interfaces"]]
    assert router.cli("health", check=False).returncode == 0
    # ... and it still forwards.
    assert lab.ping("h1", "10.2.0.2", count=1, wait=2).returncode == 0
