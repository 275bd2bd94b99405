"""Structure-aware mutations of valid frames, for fuzzing the dataplane.

A fuzz case is a :class:`Case`: which valid frame it starts from (a
:class:`Seed`: ARP, IPv4 with options and fragments, ICMP, TCP, UDP, IPv6 with
extension headers, Neighbor Discovery, TCP and UDP super-frames behind a
virtio-net header), a few mutations (:data:`OPS`), whether the checksums are
then made right again, and an optional virtio-net header of its own.  Every
choice in a case is a small integer, so that

* :func:`random_case` draws a case from a ``random.Random`` (scripts/fuzz.py:
  frame *i* of a run is a function of the seed and *i*, so a failing stretch
  is regenerated, not stored);
* tests/test_fuzz.py draws the same integers from hypothesis strategies, and
  hypothesis shrinks a failing case towards 0 in each: fewer mutations, the
  first field, the first value of a field's list of interesting values.

Why structure-aware: random bytes almost never get past the IPv4 header
checksum or an Ethernet destination check, so most of the path would never
be reached.  The mutations aim at header fields by name (an IPv4 header's
``ip_hl`` and ``ip_len``, an IPv6 payload length, an ARP ``ar_hln``, a TCP data
offset, an extension header's length) and set them to boundary values; the
checksums are then fixed (``fix``) in most cases, so that the frame fails at
the stage its defect targets and not at the first checksum.  Frames keep at
least an Ethernet header unless ``min_len`` says otherwise (a packet socket
refuses to send less).

The virtio-net header's fields get the lies a guest or a buggy kernel could
tell: ``gso_size`` 0 or beyond the frame, ``csum_start`` past the end or inside
the IP header, ``hdr_len`` larger than the frame, GSO types that do not match
the packet (RFC-free territory: virtio 1.2, section 5.1.6.2).
"""
from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

__all__ = ["Case", "Link", "OPS", "Seed", "build", "random_case", "seeds", "VNET_HDR_LEN"]

VNET_HDR_LEN = 10
VNET_NEEDS_CSUM, VNET_DATA_VALID = 1, 2
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 3, 4, 5, 0x80
MSS = 1400
ETH_IPV4, ETH_ARP, ETH_IPV6, ETH_VLAN = 0x0800, 0x0806, 0x86DD, 0x8100


@dataclass(frozen=True)
class Link:
    """The addresses of the link the frames are sent on (link 1 of a
    :func:`forwarder.lab.topology.make_lab` lab: the router .1, the sender
    .2) and beyond it: ``far`` on a 1500-byte link, ``small`` on a 1280-byte one."""
    ours: bytes                        # the router's MAC on the link
    host: bytes                        # the sender's MAC
    me: str = "10.1.0.1"
    peer: str = "10.1.0.2"
    far: str = "10.2.0.2"
    small: str = "10.3.0.2"
    me6: str = "2001:db8:1::1"
    peer6: str = "2001:db8:1::2"
    far6: str = "2001:db8:2::2"
    small6: str = "2001:db8:3::2"


@dataclass(frozen=True)
class Seed:
    """A valid frame and where its layers start: ``l3`` the network header,
    ``l4`` the transport (or first extension) header, None for ARP."""
    name: str
    frame: bytes
    family: int                        # 4, 6, or 0 for ARP
    l4: int | None
    vnet: tuple[int, int, int, int, int, int] | None = None   # its own virtio-net header


@dataclass(frozen=True)
class Case:
    """One fuzz frame: seed index, mutations (op, a, b), checksum fix-up
    (0 none, 1 the IPv4 header's, 2 that and the transport's), and a
    virtio-net header of the case's own (field choices) or None."""
    seed: int
    ops: tuple[tuple[int, int, int], ...] = ()
    fix: int = 2
    vnet: tuple[int, int, int, int, int, int] | None = None


def eui64_ll(mac: bytes) -> str:
    """The link-local address a MAC gives (RFC 4291 appendix A)."""
    iid = bytes([mac[0] ^ 2]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return socket.inet_ntop(socket.AF_INET6, b"\xfe\x80" + bytes(6) + iid)


def solicited_node(addr: str) -> tuple[str, bytes]:
    """The solicited-node multicast group of ``addr`` and its MAC (RFC 4291 2.7.1)."""
    low = socket.inet_pton(socket.AF_INET6, addr)[13:]
    group = socket.inet_ntop(socket.AF_INET6, bytes.fromhex("ff0200000000000000000001ff") + low)
    return group, b"\x33\x33\xff" + low


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


@lru_cache(maxsize=8)
def seeds(w: Link) -> tuple[Seed, ...]:
    """The valid frames every case starts from (built once with scapy)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, IPOption_Timestamp
    from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA,
                                    ICMPv6ND_RS, ICMPv6NDOptDstLLAddr, ICMPv6NDOptMTU,
                                    ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr,
                                    ICMPv6PacketTooBig, IPv6, IPv6ExtHdrDestOpt,
                                    IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
    from scapy.layers.l2 import ARP, Ether

    ours, host = _mac(w.ours), _mac(w.host)
    eth = Ether(dst=ours, src=host)
    host_ll, my_ll = eui64_ll(w.host), eui64_ll(w.ours)
    group, group_mac = solicited_node(w.me6)
    out: list[Seed] = []

    def add(name: str, pkt, vnet=None) -> None:
        raw = bytes(pkt)
        family = {ETH_IPV4: 4, ETH_IPV6: 6}.get(struct.unpack_from("!H", raw, 12)[0], 0)
        l4 = None
        if family == 4:
            l4 = 14 + (raw[14] & 0xF) * 4
        elif family == 6:
            l4 = 54
        out.append(Seed(name, raw, family, l4, vnet))

    udp = UDP(sport=40000, dport=9)
    add("arp request for the router", Ether(dst="ff:ff:ff:ff:ff:ff", src=host)
        / ARP(op=1, hwsrc=host, psrc=w.peer, pdst=w.me))
    add("arp request for a neighbour", Ether(dst="ff:ff:ff:ff:ff:ff", src=host)
        / ARP(op=1, hwsrc=host, psrc=w.peer, pdst="10.1.0.77"))
    add("arp reply to the router", eth / ARP(op=2, hwsrc=host, psrc=w.peer, hwdst=ours, pdst=w.me))
    add("udp to far", eth / IP(src=w.peer, dst=w.far) / udp / bytes(18))
    add("tcp syn to far", eth / IP(src=w.peer, dst=w.far) / TCP(sport=40001, dport=80, flags="S"))
    add("echo to the router", eth / IP(src=w.peer, dst=w.me) / ICMP(id=1, seq=1) / bytes(32))
    add("echo to far", eth / IP(src=w.peer, dst=w.far) / ICMP(id=2, seq=1) / bytes(32))
    add("udp to the router", eth / IP(src=w.peer, dst=w.me) / udp / bytes(8))
    add("ip options to far", eth / IP(src=w.peer, dst=w.far,
                                      options=[IPOption_RR(), IPOption_NOP(),
                                               IPOption_Timestamp(flg=0)]) / udp / bytes(8))
    add("first fragment to far", eth / IP(src=w.peer, dst=w.far, id=7, flags="MF") / udp
        / bytes(40))
    add("middle fragment to far", eth / IP(src=w.peer, dst=w.far, id=7, flags="MF", frag=6,
                                          proto=17) / bytes(48))
    add("last fragment to far", eth / IP(src=w.peer, dst=w.far, id=7, frag=12, proto=17)
        / bytes(20))
    add("ttl 1 to far", eth / IP(src=w.peer, dst=w.far, ttl=1) / udp / bytes(8))
    add("df beyond the small link", eth / IP(src=w.peer, dst=w.small, flags="DF") / udp
        / bytes(1400))
    add("fragmented onto the small link", eth / IP(src=w.peer, dst=w.small) / udp / bytes(1400))
    add("udp6 to far", eth / IPv6(src=w.peer6, dst=w.far6) / udp / bytes(18))
    add("tcp6 syn to far", eth / IPv6(src=w.peer6, dst=w.far6)
        / TCP(sport=40002, dport=80, flags="S"))
    add("echo6 to the router", eth / IPv6(src=w.peer6, dst=w.me6) / ICMPv6EchoRequest(id=3, seq=1)
        / bytes(32))
    add("echo6 to far", eth / IPv6(src=w.peer6, dst=w.far6) / ICMPv6EchoRequest(id=4, seq=1))
    add("hop-by-hop to far", eth / IPv6(src=w.peer6, dst=w.far6) / IPv6ExtHdrHopByHop() / udp
        / bytes(8))
    add("dest opts and routing to far", eth / IPv6(src=w.peer6, dst=w.far6) / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=[w.small6]) / udp / bytes(8))
    add("fragment header to far", eth / IPv6(src=w.peer6, dst=w.far6)
        / IPv6ExtHdrFragment(id=9, m=1) / udp / bytes(16))
    add("hop limit 1 to far", eth / IPv6(src=w.peer6, dst=w.far6, hlim=1) / udp / bytes(8))
    add("too big for the small link", eth / IPv6(src=w.peer6, dst=w.small6) / udp / bytes(1400))
    add("neighbor solicitation", Ether(dst=_mac(group_mac), src=host)
        / IPv6(src=host_ll, dst=group, hlim=255) / ICMPv6ND_NS(tgt=w.me6)
        / ICMPv6NDOptSrcLLAddr(lladdr=host))
    add("neighbor advertisement", eth / IPv6(src=w.peer6, dst=my_ll, hlim=255)
        / ICMPv6ND_NA(tgt=w.peer6, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=host))
    add("router solicitation", Ether(dst="33:33:00:00:00:02", src=host)
        / IPv6(src=host_ll, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
        / ICMPv6NDOptSrcLLAddr(lladdr=host))
    add("router advertisement", Ether(dst="33:33:00:00:00:01", src=host)
        / IPv6(src=host_ll, dst="ff02::1", hlim=255) / ICMPv6ND_RA()
        / ICMPv6NDOptPrefixInfo(prefix="2001:db8:1::", prefixlen=64) / ICMPv6NDOptMTU(mtu=1500))
    add("packet too big to the router", eth / IPv6(src=w.peer6, dst=w.me6)
        / ICMPv6PacketTooBig(mtu=1280) / IPv6(src=w.me6, dst=w.peer6) / udp)
    # super-frames as a kernel's TSO/USO hands them over: the checksum field
    # holds the pseudo-header sum, the device (here: the router) finishes it
    tcp = eth / IP(src=w.peer, dst=w.far) / TCP(sport=40003, dport=80, flags="PA") / bytes(3 * MSS)
    add("tcp super-frame to far", _partial(tcp), (VNET_NEEDS_CSUM, GSO_TCPV4, 54, MSS, 34, 16))
    tcp6 = (eth / IPv6(src=w.peer6, dst=w.far6) / TCP(sport=40004, dport=80, flags="PA")
            / bytes(3 * MSS))
    add("tcp6 super-frame to far", _partial(tcp6), (VNET_NEEDS_CSUM, GSO_TCPV6, 74, MSS, 54, 16))
    udpl4 = eth / IP(src=w.peer, dst=w.far) / UDP(sport=40005, dport=9) / bytes(3 * MSS)
    add("udp super-frame to far", _partial(udpl4), (VNET_NEEDS_CSUM, GSO_UDP_L4, 42, MSS, 34, 6))
    add("udp, checksum left open", _partial(eth / IP(src=w.peer, dst=w.far) / udp / bytes(100)),
        (VNET_NEEDS_CSUM, GSO_NONE, 0, 0, 34, 6))
    return tuple(out)


def _partial(pkt) -> bytes:
    """``pkt`` with its TCP/UDP checksum replaced by the pseudo-header sum."""
    raw = bytearray(bytes(pkt))
    family = 4 if raw[12:14] == b"\x08\x00" else 6
    l4 = 14 + (raw[14] & 0xF) * 4 if family == 4 else 54
    proto = raw[23] if family == 4 else raw[20]
    off = l4 + (16 if proto == 6 else 6)
    struct.pack_into("!H", raw, off, _pseudo(raw, family, proto, len(raw) - l4))
    return bytes(raw)


# --- checksums ---------------------------------------------------------------------------

def _sum16(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    if len(data) & 1:
        data = bytes(data) + b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _pseudo(f: bytearray, family: int, proto: int, length: int) -> int:
    if family == 4:
        return _sum16(f[26:34] + struct.pack("!HH", proto, length))
    return _sum16(f[22:54] + struct.pack("!IxxxB", length, proto))


def fix_checksums(f: bytearray, transport: bool) -> None:
    """The IPv4 header checksum, and with ``transport`` the TCP/UDP/ICMP/ICMPv6
    checksum, made right for what the frame now says (as far as its headers
    can be followed; a frame past repair is left as it is)."""
    if len(f) < 34:
        return
    etype = struct.unpack_from("!H", f, 12)[0]
    if etype == ETH_IPV4 and f[14] >> 4 == 4:
        hl = (f[14] & 0xF) * 4
        if hl < 20 or 14 + hl > len(f):
            return
        f[24:26] = b"\0\0"
        struct.pack_into("!H", f, 24, ~_sum16(f[14:14 + hl]) & 0xFFFF)
        frag = struct.unpack_from("!H", f, 20)[0] & 0x3FFF
        if not transport or frag:
            return
        end = min(len(f), 14 + struct.unpack_from("!H", f, 16)[0])
        _fix_l4(f, 4, f[23], 14 + hl, end)
    elif etype == ETH_IPV6 and len(f) >= 54 and transport:
        nh, off = f[20], 54
        end = min(len(f), 54 + struct.unpack_from("!H", f, 18)[0])
        while nh in (0, 43, 60) and off + 8 <= end:        # hop-by-hop, routing, dest opts
            nh, off = f[off], off + 8 * (f[off + 1] + 1)
        _fix_l4(f, 6, nh, off, end)


def _fix_l4(f: bytearray, family: int, proto: int, l4: int, end: int) -> None:
    where = {6: 16, 17: 6, 1: 2, 58: 2}.get(proto)
    if where is None or l4 + where + 2 > end:
        return
    f[l4 + where:l4 + where + 2] = b"\0\0"
    s = _sum16(f[l4:end]) if proto == 1 else _sum16(f[l4:end], _pseudo(f, family, proto, end - l4))
    struct.pack_into("!H", f, l4 + where, (~s & 0xFFFF) or (0xFFFF if proto == 17 else 0))


# --- mutations ---------------------------------------------------------------------------

@lru_cache(maxsize=4096)
def _fields(s: Seed, n: int) -> list[tuple[int, int]]:
    """(offset, size) of the seed's header fields, by name in the comments."""
    out = [(0, 6), (6, 6), (12, 2)]                                  # ether_dhost, shost, type
    if s.family == 0:
        out += [(14, 2), (16, 2), (18, 1), (19, 1), (20, 2), (22, 6), (28, 4), (32, 6), (38, 4)]
    elif s.family == 4:
        out += [(14, 1), (15, 1), (16, 2), (18, 2), (20, 2), (22, 1), (23, 1), (24, 2), (26, 4),
                (30, 4)]                 # ip_v/ip_hl, tos, len, id, off, ttl, p, sum, src, dst
        out += [(o, 1) for o in range(34, s.l4 or 34)]               # options, byte by byte
    else:
        out += [(14, 1), (18, 2), (20, 1), (21, 1), (22, 16), (38, 16)]  # v/tc, plen, nxt, hlim
    if s.l4 is not None:
        out += [(s.l4 + o, 1) for o in range(0, 40)]                 # transport / ext headers
        out += [(s.l4 + o, 2) for o in range(0, 8, 2)]               # ports, lengths, sums
    return [(o, size) for o, size in out if o + size <= n]


@lru_cache(maxsize=4096)
def _values(size: int, w: Link, n: int) -> list[bytes]:
    if size == 1:
        return [bytes([v]) for v in (0, 1, 2, 4, 5, 6, 0x0F, 0x11, 0x3A, 0x40, 0x45, 0x46, 0x4F,
                                     0x60, 0x7F, 0x80, 0x87, 0x88, 0xFE, 0xFF)]
    if size == 2:
        return [struct.pack("!H", v & 0xFFFF)
                for v in (0, 1, 0x13, 0x14, 0x15, 0x2000, 0x2001, 0x4000, 0x1FFF, 0x3FFF, 0x7FFF,
                          0x8000, 0xFFFE, 0xFFFF, n - 14, n - 13, n - 54, n, ETH_IPV4, ETH_IPV6,
                          ETH_ARP, ETH_VLAN)]
    if size == 4:
        return [socket.inet_aton(a) for a in ("0.0.0.0", "127.0.0.1", "224.0.0.1", "240.0.0.1",
                                              "255.255.255.255", "10.1.0.255", "10.1.0.0", w.me,
                                              w.peer, "10.1.0.77", w.far, w.small, "10.200.0.1",
                                              "169.254.1.1")]
    if size == 6:
        return [w.ours, w.host, b"\xff" * 6, b"\x01\x00\x5e\x00\x00\x01",
                b"\x33\x33\x00\x00\x00\x01", b"\x33\x33\xff\x00\x00\x01", bytes(6),
                b"\x02\x00\x00\x00\x09\x09"]
    return [socket.inet_pton(socket.AF_INET6, a) for a in (
        "::", "::1", "ff02::1", "ff02::1:ff00:1", "fe80::1", eui64_ll(w.ours), w.me6, w.peer6,
        w.far6, w.small6, "::ffff:10.2.0.2", "2001:db8:1::77", "2001:db8:99::1", "ff05::2")]


def _op_field(f: bytearray, s: Seed, w: Link, a: int, b: int) -> bytearray:
    fields = _fields(s, len(f))
    if not fields:
        return f
    off, size = fields[a % len(fields)]
    vals = _values(size, w, len(f))
    k = b % (len(vals) + 1)
    v = vals[k] if k < len(vals) else random.Random(b).randbytes(size)
    f[off:off + size] = v[:size].rjust(size, b"\0")
    return f


def _op_flip(f: bytearray, s: Seed, w: Link, a: int, b: int) -> bytearray:
    if f:
        f[a % len(f)] ^= (b % 255) + 1
    return f


def _op_truncate(f: bytearray, s: Seed, w: Link, a: int, b: int) -> bytearray:
    return f[:a % (len(f) + 1)]


def _op_extend(f: bytearray, s: Seed, w: Link, a: int, b: int) -> bytearray:
    n = 1 + a % 256
    return f + (bytes(n) if b % 2 == 0 else random.Random(b).randbytes(n))


def _op_insert(f: bytearray, s: Seed, w: Link, a: int, b: int) -> bytearray:
    at = a % (len(f) + 1)
    return f[:at] + bytes([b & 0xFF]) * (1 + (b >> 8) % 16) + f[at:]


def _op_delete(f: bytearray, s: Seed, w: Link, a: int, b: int) -> bytearray:
    at = a % (len(f) + 1)
    return f[:at] + f[at + 1 + b % 16:]


Op = Callable[[bytearray, Seed, Link, int, int], bytearray]
# the field mutation is listed first (what hypothesis shrinks towards) and
# drawn most often: it is what gets a frame past the early checks
OPS: tuple[tuple[str, Op], ...] = (
    ("field", _op_field), ("flip", _op_flip), ("truncate", _op_truncate),
    ("extend", _op_extend), ("insert", _op_insert), ("delete", _op_delete))
OP_WEIGHTS = (8, 3, 2, 1, 1, 1)

# the virtio-net header's fields: (struct format, candidate values); a
# callable candidate is worked out from the frame length and the seed's header
_N = Callable[[int, tuple], int]
VNET_CHOICES: tuple[tuple[int | _N, ...], ...] = (
    (lambda n, h: h[0], 0, VNET_NEEDS_CSUM, VNET_DATA_VALID, 3, 0x80),            # flags
    (lambda n, h: h[1], GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4,
     GSO_TCPV4 | GSO_ECN, 0x7F),                                                    # gso_type
    (lambda n, h: h[2], 0, 14, 54, lambda n, h: n + 1, 0xFFFF),                     # hdr_len
    (lambda n, h: h[3], 0, 1, 8, MSS, lambda n, h: n, lambda n, h: n + 1, 0xFFFF),  # gso_size
    (lambda n, h: h[4], 0, 14, 20, 34, 54, lambda n, h: n - 1, lambda n, h: n,
     lambda n, h: n + 100, 0xFFFF),                                                 # csum_start
    (lambda n, h: h[5], 0, 2, 6, 16, 0x7FFF, 0xFFFE),                               # csum_offset
)


def vnet_header(choice: tuple[int, ...] | None, seed_hdr: tuple | None, n: int) -> bytes | None:
    """The case's virtio-net header: each field's candidate ``choice[i]``
    (index 0: the seed's own value), or the seed's header, or None."""
    base = seed_hdr or (0, 0, 0, 0, 0, 0)
    if choice is None:
        return struct.pack("=BBHHHH", *base) if seed_hdr else None
    vals = []
    for cands, k in zip(VNET_CHOICES, choice):
        c = cands[k % len(cands)]
        vals.append((c(n, base) if callable(c) else c) & (0xFF if len(vals) < 2 else 0xFFFF))
    return struct.pack("=BBHHHH", *vals)


def build(case: Case, w: Link, min_len: int = 14) -> tuple[bytes, bytes | None]:
    """The frame of ``case`` and its virtio-net header (None: none)."""
    all_seeds = seeds(w)
    s = all_seeds[case.seed % len(all_seeds)]
    f = bytearray(s.frame)
    for op, a, b in case.ops:
        f = OPS[op % len(OPS)][1](f, s, w, a, b)
    if case.fix:
        fix_checksums(f, case.fix >= 2)
    if len(f) < min_len:
        f = f + bytes(min_len - len(f))
    return bytes(f), vnet_header(case.vnet, s.vnet, len(f))


def random_case(rnd: random.Random, w: Link) -> Case:
    """A case drawn from ``rnd``: one to three mutations, checksums fixed in
    four of five, a virtio-net header of its own for most super-frames and
    one frame in ten otherwise."""
    all_seeds = seeds(w)
    k = rnd.randrange(len(all_seeds))
    nops = rnd.choice((0, 1, 1, 1, 2, 2, 3))
    ops = tuple((rnd.choices(range(len(OPS)), OP_WEIGHTS)[0], rnd.getrandbits(16),
                 rnd.getrandbits(16)) for _ in range(nops))
    fix = rnd.choice((0, 1, 2, 2, 2))
    vnet = None
    if rnd.random() < (0.7 if all_seeds[k].vnet else 0.1):
        vnet = tuple(rnd.randrange(len(c)) if rnd.random() < 0.4 else 0 for c in VNET_CHOICES)
    return Case(k, ops, fix, vnet)  # type: ignore[arg-type]


def cases(seed: int, start: int, count: int, w: Link) -> list[Case]:
    """Cases ``start`` .. ``start+count`` of a run: chunk ``i`` (of
    :data:`CHUNK` cases) is drawn from its own Random(seed, i), so any
    stretch of a run can be regenerated without the ones before it."""
    out: list[Case] = []
    i = start
    while i < start + count:
        chunk, skip = divmod(i, CHUNK)
        rnd = random.Random(seed * 1_000_003 + chunk)
        drawn = [random_case(rnd, w) for _ in range(CHUNK)]
        take = min(CHUNK - skip, start + count - i)
        out += drawn[skip:skip + take]
        i += take
    return out


CHUNK = 10_000


def describe(case: Case, w: Link) -> str:
    """A case in words (for failure reports)."""
    s = seeds(w)[case.seed % len(seeds(w))]
    ops = ", ".join(f"{OPS[o % len(OPS)][0]}({a}, {b})" for o, a, b in case.ops) or "none"
    return f"{s.name}; mutations: {ops}; fix {case.fix}; vnet {case.vnet}"

