"""forwarder/bpf.py and forwarder/net/bpf_filter.h: tcpdump filters compiled by
libpcap, checked with the kernel's rules, run by our interpreter.

The reference is libpcap itself: its bpf_filter() (exported by
libpcap.so.0.8, called through ctypes) must return what dp_bpf_run returns
(through forwarder.inet_test.bpf_run) for real tcpdump expressions over
frames built with scapy, whole and truncated, and for hand-written programs
of every opcode, which are also checked against the arithmetic done here in
Python.  The disassembly is compared with libpcap's bpf_image() and with
``tcpdump -d`` (which compiles without opening any interface).
"""
from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from forwarder import bpf
from forwarder.bpf import BpfError
from forwarder.inet_test import bpf_run

# --- libpcap, the reference ----------------------------------------------------------

LIBPCAP = ctypes.CDLL("libpcap.so.0.8")
LIBPCAP.bpf_filter.restype = ctypes.c_uint
LIBPCAP.bpf_filter.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint]
LIBPCAP.bpf_image.restype = ctypes.c_char_p
LIBPCAP.bpf_image.argtypes = [ctypes.c_char_p, ctypes.c_int]
LIBPCAP.bpf_validate.restype = ctypes.c_int
LIBPCAP.bpf_validate.argtypes = [ctypes.c_char_p, ctypes.c_int]


def pcap_run(prog: bytes, packet: bytes, wirelen: int | None = None) -> int:
    return LIBPCAP.bpf_filter(prog, packet, len(packet) if wirelen is None else wirelen,
                              len(packet))


def run(prog: bytes, packet: bytes, wirelen: int | None = None) -> int:
    """Our interpreter's answer, checked against libpcap's."""
    ours = bpf_run(prog, packet, wirelen)
    theirs = pcap_run(prog, packet, wirelen)
    assert ours == theirs, (f"dp_bpf_run {ours} != libpcap {theirs} over {packet.hex()} "
                            f"(wirelen {wirelen}):\n" + "\n".join(bpf.disassemble(prog)))
    return ours


# --- opcodes, from <linux/bpf_common.h> ------------------------------------------------

LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0)
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80
U32 = 0xFFFFFFFF


def prog(*insns: tuple[int, ...]) -> bytes:
    """(code, k) or (code, jt, jf, k) per instruction."""
    out = b""
    for i in insns:
        code, jt, jf, k = (i[0], 0, 0, i[1]) if len(i) == 2 else i
        out += struct.pack("=HBBI", code, jt, jf, k)
    return out


def ret_a() -> tuple[int, int]:
    return (RET | RET_A, 0)


# --- real expressions over real frames -----------------------------------------------

EXPRESSIONS = [
    "ip host 10.2.0.2", "src host 10.2.0.2", "dst host 10.2.0.1", "host 10.2.0.2 and port 53",
    "ip net 10.2.0.0/16", "dst net 192.168.0.0/16", "src net 10.0.0.0/8 and not dst net 10.2.0.0/24",
    "ip6 host 2001:db8::2", "ip6 net 2001:db8::/32", "ip6 dst host fe80::1",
    "port 53", "tcp port 80", "udp dst port 53", "src port 443", "portrange 1000-2000",
    "tcp dst portrange 6000-6010",
    "ip", "ip6", "arp", "icmp", "icmp6", "tcp", "udp", "ip proto 47", "ip6 proto 58",
    "icmp[icmptype] == icmp-echo", "arp host 10.2.0.1",
    "tcp[tcpflags] & tcp-syn != 0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
    "tcp[13] & 7 != 0",
    "ip[8] < 2", "ip6[7] == 1", "ip6 and udp dst port 53", "ip6 and tcp", "less 100",
    "greater 1000", "len - 14 > 500",
    "ether host 02:00:00:00:00:01", "ether dst 02:00:00:00:00:02", "ether broadcast",
    "ether multicast", "vlan", "vlan 100 and ip", "not ip", "not arp and not ip6",
    "ip and (tcp or udp)", "tcp or icmp6", "udp or arp or icmp",
    "ip[6:2] & 0x1fff != 0", "ip[6] & 0x20 != 0", "ip[0] & 0xf > 5",
    # arithmetic: every ALU operation, the scratch memory, X loads
    "ip[2:2] - ip[8] > ip[9] + ip[1]", "ip[2:2] / ip[8] > 2", "ip[2:2] % 7 = 3",
    "ip[2:2] % ip[8] = 1", "(ip[1] ^ 0xff) & 0xfc = 0xfc", "ip[2:2] >> 2 > 100",
    "ip[8] * 3 - 1 > 100", "-ip[8] < 0xffffff00", "ip[0] << 2 = 0x114",
    "(ip[2:2] | ip[8]) & ip[9] != 0", "ip[ip[0] & 0xf] > 3", "tcp[(tcp[12] >> 4) * 4] = 0x47",
    "udp[8:2] = 0x1234",
]
PROGRAMS = {e: bpf.compile(e) for e in EXPRESSIONS}

MACS = ["02:00:00:00:00:01", "02:00:00:00:00:02", "ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01",
        "01:00:5e:00:00:05"]
V4 = ["10.2.0.2", "10.2.0.1", "10.2.0.77", "10.9.8.7", "192.168.1.7", "8.8.8.8"]
V6 = ["2001:db8::2", "2001:db8:1::5", "fe80::1", "ff02::1", "2a00::1"]
PORTS = [53, 80, 443, 22, 999, 1000, 1500, 2000, 2001, 6000, 6005, 6011, 33434]

# the strategies are built once: building one per draw costs more than the draw
ports = st.one_of(st.sampled_from(PORTS), st.integers(0, 65535))
sizes = st.one_of(st.integers(0, 40), st.integers(40, 1100))
heads = st.binary(max_size=16)
bytes24, bytes80 = st.binary(max_size=24), st.binary(max_size=80)
octets, small = st.integers(0, 255), st.integers(0, 3)
ttls = st.one_of(small, octets)
frags = st.one_of(st.just(0), st.integers(1, 8191))
nops = st.sampled_from([0, 0, 1, 4, 9, 40])
v4, v6, macs = st.sampled_from(V4), st.sampled_from(V6), st.sampled_from(MACS)
l4_kinds = st.sampled_from(["tcp", "udp", "icmp", "raw"])
icmp_types = st.sampled_from([0, 3, 8, 11])
ip_protos = st.one_of(st.none(), st.sampled_from([47, 89, 255]))
ext_chains = st.lists(st.sampled_from([IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
                                       IPv6ExtHdrFragment, IPv6ExtHdrDestOpt]), max_size=3)
l3_kinds = st.sampled_from(["ip", "ip", "ip6", "ip6", "arp", "garbage"])
ethertypes = st.sampled_from([0x0800, 0x86DD, 0x0806, 0x8100, 0x88CC])
vlans = st.sampled_from([None, None, None, None, 1, 100, 4094])
arp_ops = st.sampled_from([1, 2])


def transport(draw, is_v6: bool):
    kind = draw(l4_kinds)
    if kind == "raw":
        return Raw(draw(bytes24))
    if kind == "tcp":
        l4 = TCP(sport=draw(ports), dport=draw(ports), flags=draw(octets))
    elif kind == "udp":
        l4 = UDP(sport=draw(ports), dport=draw(ports))
    elif is_v6:
        l4 = ICMPv6EchoRequest()
    else:
        l4 = ICMP(type=draw(icmp_types), code=draw(small))
    size = draw(sizes)
    head = draw(heads)[:size]
    return l4 / Raw(head + bytes(size - len(head)))


@st.composite
def frames(draw) -> bytes:
    """An Ethernet frame: IPv4 (options, fragments), IPv6 (extension headers),
    ARP, any of them under an 802.1Q tag, or bytes under a random EtherType."""
    eth = Ether(src=draw(macs), dst=draw(macs))
    kind = draw(l3_kinds)
    if kind == "garbage":
        eth.type = draw(ethertypes)
        return bytes(eth / Raw(draw(bytes80)))
    vlan = draw(vlans)
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    if kind == "ip":
        l3 = IP(src=draw(v4), dst=draw(v4), ttl=draw(ttls), tos=draw(octets),
                flags=draw(small), frag=draw(frags), options=[IPOption_NOP()] * draw(nops))
        proto = draw(ip_protos)
        if proto is not None:
            l3.proto = proto
        l3 = l3 / transport(draw, False)
    elif kind == "ip6":
        l3 = IPv6(src=draw(v6), dst=draw(v6), hlim=draw(ttls))
        for ext in draw(ext_chains):
            l3 = l3 / ext()
        l3 = l3 / transport(draw, True)
    else:
        l3 = ARP(op=draw(arp_ops), psrc=draw(v4), pdst=draw(v4),
                 hwsrc=draw(macs))
    return bytes(eth / l3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames(), data=st.data())
def test_expressions_agree_with_libpcap_on_generated_frames(frame: bytes, data) -> None:
    """Whole, truncated (the loads beyond the buffer reject) and with less at
    hand than on the wire (buflen < wirelen)."""
    cut = data.draw(st.one_of(st.just(len(frame)), st.integers(0, len(frame))), "cut")
    wirelen = data.draw(st.sampled_from([None, len(frame), len(frame) + 1000]), "wirelen")
    packet = frame[:cut]
    for expr, program in PROGRAMS.items():
        assert bpf_run(program, packet, wirelen) == pcap_run(program, packet, wirelen), expr


def corpus() -> list[bytes]:
    """Frames for which each expression above has a match and a miss."""
    a, b, bc = "02:00:00:00:00:01", "02:00:00:00:00:02", "ff:ff:ff:ff:ff:ff"
    big = Raw(bytes(1000))
    pkts = [
        Ether(src=a, dst=b) / IP(src="10.2.0.2", dst="10.2.0.1", ttl=1) / UDP(sport=5353, dport=53),
        Ether(src=b, dst=a) / IP(src="10.2.0.1", dst="10.2.0.2", ttl=64) / UDP(sport=53, dport=999)
        / Raw(b"\x12\x34abcd"),
        Ether(src=b, dst=a) / IP(src="10.9.8.7", dst="192.168.1.7") / TCP(sport=443, dport=80, flags="S"),
        Ether(src=b, dst=a) / IP(src="10.9.8.7", dst="192.168.1.7") / TCP(sport=80, dport=6005,
                                                                         flags="SA") / big,
        Ether(src=b, dst=a) / IP(src="10.2.0.77", dst="8.8.8.8", tos=3, ttl=255) / TCP(
            sport=1500, dport=443, flags="R", dataofs=6, options=[("NOP", None)] * 4) / Raw(b"\x47"),
        Ether(src=b, dst=a) / IP(dst="10.2.0.2", options=[IPOption_NOP()] * 8) / UDP(dport=53) / big,
        Ether(src=a, dst=bc) / IP(src="10.2.0.1", dst="10.2.0.2", flags="MF", frag=0) / UDP(dport=53),
        Ether(src=a, dst=bc) / IP(src="10.2.0.1", dst="10.2.0.2", frag=185, proto=17) / Raw(bytes(20)),
        Ether(src=a, dst=b) / IP(dst="10.2.0.1", ttl=0) / ICMP(type=8) / Raw(bytes(40)),
        Ether(src=a, dst=b) / IP(dst="10.2.0.1", proto=47) / Raw(bytes(30)),
        Ether(src=a, dst=b) / IP(dst="10.2.0.1", len=1000, ttl=7) / ICMP(type=0),
        Ether(src=a, dst=bc) / ARP(psrc="10.2.0.1", pdst="10.2.0.2"),
        Ether(src=a, dst=bc) / ARP(psrc="10.9.8.7", pdst="10.9.8.6"),
        Ether(src=a, dst="33:33:00:00:00:01") / IPv6(src="fe80::2", dst="ff02::1", hlim=1)
        / ICMPv6EchoRequest(),
        Ether(src=a, dst=b) / IPv6(src="2001:db8::2", dst="fe80::1") / UDP(sport=999, dport=53),
        Ether(src=a, dst=b) / IPv6(src="2a00::1", dst="2001:db8:1::5") / TCP(dport=2000, flags="S") / big,
        Ether(src=a, dst=b) / IPv6(src="2a00::1", dst="2a00::2") / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrFragment() / UDP(dport=53),
        Ether(src=a, dst=b) / Dot1Q(vlan=100) / IP(src="10.2.0.2", dst="10.2.0.1") / UDP(dport=53),
        Ether(src=a, dst=b) / Dot1Q(vlan=7) / ARP(),
        Ether(src=a, dst=b) / IP(dst="8.8.8.8", id=7, ttl=2, tos=0xB8) / UDP(dport=9) / Raw(b"x"),
        Ether(src="02:00:00:00:00:09", dst="01:00:5e:00:00:05", type=0x88CC) / Raw(bytes(50)),
    ]
    return [bytes(p) for p in pkts]


def test_expressions_agree_with_libpcap_on_every_truncation() -> None:
    """Every prefix of the corpus's frames: each load of each program meets
    the end of the buffer somewhere."""
    frames_ = corpus()
    one_sided = []
    for expr, program in PROGRAMS.items():
        verdicts = set()
        for frame in frames_:
            verdicts.add(run(program, frame) != 0)
            for cut in range(0, min(len(frame), 90)):
                assert (bpf_run(program, frame[:cut], len(frame))
                        == pcap_run(program, frame[:cut], len(frame))), (expr, frame[:cut].hex())
        if verdicts != {True, False}:
            one_sided.append(expr)
    assert not one_sided, f"the corpus has no match or no miss for {one_sided}"


TRUTH = [   # (expression, frame, matches): what tcpdump users expect, not libpcap's word
    ("ip host 10.2.0.2", Ether() / IP(src="10.2.0.2", dst="10.9.9.9") / UDP(), True),
    ("ip host 10.2.0.2", Ether() / IP(src="10.2.0.3", dst="10.9.9.9") / UDP(), False),
    ("dst host 10.2.0.2", Ether() / IP(src="10.2.0.2", dst="10.9.9.9") / UDP(), False),
    ("tcp[tcpflags] & tcp-syn != 0", Ether() / IP() / TCP(flags="S"), True),
    ("tcp[tcpflags] & tcp-syn != 0", Ether() / IP() / TCP(flags="A"), False),
    ("tcp[tcpflags] & tcp-syn != 0", Ether() / IP(options=[IPOption_NOP()] * 4) / TCP(flags="SA"), True),
    ("ip[8] < 2", Ether() / IP(ttl=1) / ICMP(), True),
    ("ip[8] < 2", Ether() / IP(ttl=2) / ICMP(), False),
    ("udp dst port 53", Ether() / IP(options=[IPOption_NOP()] * 4) / UDP(dport=53), True),
    ("udp dst port 53", Ether() / IP(frag=3) / UDP(dport=53), False),
    ("ip6 and udp dst port 53", Ether() / IPv6() / UDP(dport=53), True),
    ("ip6 and udp dst port 53", Ether() / IP() / UDP(dport=53), False),
    ("portrange 1000-2000", Ether() / IP() / TCP(sport=5, dport=2000), True),
    ("portrange 1000-2000", Ether() / IP() / TCP(sport=5, dport=2001), False),
    ("ip[6:2] & 0x1fff != 0", Ether() / IP(frag=1) / Raw(bytes(8)), True),
    ("ip[6:2] & 0x1fff != 0", Ether() / IP(flags="MF") / Raw(bytes(8)), False),
    ("less 100", Ether() / IP() / UDP() / Raw(bytes(50)), True),
    ("less 100", Ether() / IP() / UDP() / Raw(bytes(80)), False),
    ("greater 1000", Ether() / IP() / UDP() / Raw(bytes(1000)), True),
    ("greater 1000", Ether() / IP() / UDP() / Raw(bytes(900)), False),
    ("ether host 02:00:00:00:00:01", Ether(dst="02:00:00:00:00:01") / ARP(), True),
    ("ether host 02:00:00:00:00:01", Ether(dst="02:00:00:00:00:03") / ARP(), False),
    ("vlan", Ether() / Dot1Q(vlan=5) / IP(), True),
    ("vlan", Ether() / IP(), False),
    ("arp", Ether() / ARP(), True),
    ("not arp", Ether() / ARP(), False),
    ("icmp6", Ether() / IPv6() / ICMPv6EchoRequest(), True),
    ("icmp", Ether() / IPv6() / ICMPv6EchoRequest(), False),
]


@pytest.mark.parametrize("expr,packet,matches", TRUTH,
                         ids=[f"{e}-{m}" for e, _, m in TRUTH])
def test_compiled_filters_match_what_the_expression_says(expr, packet, matches) -> None:
    assert (run(bpf.compile(expr), bytes(packet)) == bpf.SNAPLEN_MAX) is matches
    assert (run(bpf.compile(expr), bytes(packet)) == 0) is not matches


def test_length_is_the_wire_length_and_the_snap_length_is_returned() -> None:
    frame = bytes(Ether() / IP() / UDP() / Raw(bytes(1400)))
    greater = bpf.compile("greater 1000", snaplen=96)
    assert run(greater, frame[:64], wirelen=len(frame)) == 96   # 64 bytes at hand of 1442
    assert run(greater, frame[:64]) == 0
    assert run(bpf.compile("ip", snaplen=1), frame) == 1
    assert run(bpf.compile(""), b"") == bpf.SNAPLEN_MAX        # the empty filter takes all


# --- hand-written programs, every opcode ----------------------------------------------

u32 = st.one_of(st.integers(0, U32), st.sampled_from([0, 1, 2, 31, 32, 0x7FFFFFFF,
                                                       0x80000000, U32]))

ALU_MODEL = {
    ADD: lambda a, b: a + b, SUB: lambda a, b: a - b, MUL: lambda a, b: a * b,
    DIV: lambda a, b: a // b if b else None, MOD: lambda a, b: a % b if b else None,
    AND: lambda a, b: a & b, OR: lambda a, b: a | b, XOR: lambda a, b: a ^ b,
    LSH: lambda a, b: a << b if b < 32 else 0, RSH: lambda a, b: a >> b if b < 32 else 0,
}


@settings(max_examples=200, deadline=None)
@given(op=st.sampled_from(sorted(ALU_MODEL)), a=u32, b=u32)
def test_alu_with_k_and_x(op: int, a: int, b: int) -> None:
    """A op= X, and A op= k where validate() lets the constant through; a
    division or modulo by X = 0 rejects the packet whatever follows."""
    want = ALU_MODEL[op](a, b)
    with_x = prog((LD | IMM, a), (LDX | IMM, b), (ALU | op | X, 0), ret_a())
    assert run(with_x, b"") == (0 if want is None else want & U32)
    rejected = prog((LD | IMM, a), (LDX | IMM, b), (ALU | op | X, 0), (RET | K, 7))
    assert run(rejected, b"") == (0 if want is None else 7)
    with_k = prog((LD | IMM, a), (ALU | op | K, b), ret_a())
    if want is None or (op in (LSH, RSH) and b >= 32):
        with pytest.raises(BpfError):
            bpf.validate(with_k)
    else:
        assert run(with_k, b"") == want & U32


@given(a=u32)
def test_neg_tax_txa(a: int) -> None:
    assert run(prog((LD | IMM, a), (ALU | NEG, 0), ret_a()), b"") == -a & U32
    assert run(prog((LD | IMM, a), (MISC | TAX, 0), (LD | IMM, 0), (MISC | TXA, 0), ret_a()),
               b"") == a
    assert run(prog((LDX | IMM, a), (MISC | TXA, 0), ret_a()), b"") == a
    assert run(prog((RET | K, a),), b"") == a


JUMP_MODEL = {JEQ: lambda a, b: a == b, JGT: lambda a, b: a > b, JGE: lambda a, b: a >= b,
              JSET: lambda a, b: a & b != 0}


@settings(max_examples=200, deadline=None)
@given(op=st.sampled_from(sorted(JUMP_MODEL)),
       a=st.one_of(u32, st.integers(0, 9)), b=st.one_of(u32, st.integers(0, 9)))
def test_conditional_jumps_with_k_and_x(op: int, a: int, b: int) -> None:
    """jt 2, jf 1 over a RET that neither path may reach."""
    want = 200 if JUMP_MODEL[op](a, b) else 100
    tail = [(JMP | op | K, 2, 1, b), (RET | K, 1), (RET | K, 100), (RET | K, 200)]
    assert run(prog((LD | IMM, a), *tail), b"") == want
    tail[0] = (JMP | op | X, 2, 1, 0)
    assert run(prog((LD | IMM, a), (LDX | IMM, b), *tail), b"") == want


def test_ja_jumps_k_instructions_forward() -> None:
    assert run(prog((JMP | JA, 2), (RET | K, 1), (RET | K, 2), (RET | K, 3)), b"") == 3
    assert run(prog((JMP | JA, 0), (RET | K, 1), (RET | K, 2)), b"") == 1
    # the longest program, one JA over everything
    long = prog((JMP | JA, bpf.BPF_MAXINSNS - 2), *[(RET | K, 1)] * (bpf.BPF_MAXINSNS - 2),
                (RET | K, 9))
    assert run(long, b"") == 9


def test_scratch_memory_words_are_sixteen_and_distinct() -> None:
    """ST and STX to each word, LD and LDX from each: a polynomial of the
    words in order, so a lost or aliased word changes the result."""
    insns: list[tuple[int, ...]] = []
    values = [(i * 0x01010101 + 7) & U32 for i in range(16)]
    for i, v in enumerate(values):
        insns += [(LD | IMM, v), (ST, i)] if i % 2 else [(LDX | IMM, v), (STX, i)]
    insns.append((LD | IMM, 0))
    for i in range(16):
        insns += [(ALU | MUL | K, 31), (LDX | MEM, i), (ALU | ADD | X, 0)] if i % 2 else \
                 [(MISC | TAX, 0), (LD | MEM, i), (ALU | ADD | X, 0), (ALU | MUL | K, 1)]
    insns.append(ret_a())
    want = 0
    for i, v in enumerate(values):
        want = (want * 31 + v) & U32 if i % 2 else (want + v) & U32
    assert run(prog(*insns), b"") == want


@settings(max_examples=150, deadline=None)
@given(packet=st.binary(max_size=40), k=st.one_of(st.integers(0, 44), u32),
       x=st.one_of(st.integers(0, 44), u32), wirelen=st.integers(0, 2000))
def test_packet_loads_within_and_beyond_the_buffer(packet: bytes, k: int, x: int,
                                                   wirelen: int) -> None:
    """ABS and IND loads of 1, 2, 4 bytes, big-endian; MSH; LEN.  A load not
    wholly in the buffer rejects; X + k does not wrap at 32 bits."""
    def at(off: int, size: int) -> int | None:
        return int.from_bytes(packet[off:off + size], "big") if off + size <= len(packet) else None

    for size, code in ((4, W), (2, H), (1, B)):
        want = at(k, size)
        assert run(prog((LD | code | ABS, k), ret_a()), packet, wirelen) == (want or 0)
        assert run(prog((LD | code | ABS, k), (RET | K, 5)), packet, wirelen) == (
            0 if want is None else 5)
        want = at(x + k, size)
        ind = prog((LDX | IMM, x), (LD | code | IND, k), (RET | K, 5))
        assert run(ind, packet, wirelen) == (0 if want is None else 5)
    want = at(k, 1)
    msh = prog((LDX | B | MSH, k), (MISC | TXA, 0), (ALU | ADD | K, 1), ret_a())
    assert run(msh, packet, wirelen) == (0 if want is None else 4 * (want & 0xF) + 1)
    assert run(prog((LD | W | LEN, 0), ret_a()), packet, wirelen) == wirelen
    assert run(prog((LDX | W | LEN, 0), (MISC | TXA, 0), ret_a()), packet, wirelen) == wirelen


def test_indexed_load_offset_does_not_wrap() -> None:
    packet = bytes(range(1, 41))
    for size in (W, H, B):
        # 0xffffffff + 14 is 13 in 32-bit arithmetic: in the buffer, but not a valid offset
        assert run(prog((LDX | IMM, U32), (LD | size | IND, 14), (RET | K, 5)), packet) == 0
        assert run(prog((LDX | IMM, 13), (LD | size | IND, 0), ret_a()), packet) != 0


_CODES = st.sampled_from(sorted(bpf.OPCODES))
_BYTE = st.integers(0, 255)
_KS = st.one_of(st.integers(0, 40), st.integers(0, 15), u32)
_ONE_IN_8 = st.integers(0, 7)
_RETS = st.sampled_from([RET | K, RET | RET_A])


@st.composite
def programs(draw) -> bytes:
    """Short programs of known opcodes, jumps mostly inside, a RET mostly last."""
    n = draw(st.integers(1, 10))
    out = []
    for pc in range(n):
        after = n - pc - 1                      # a jump may skip after - 1 at most

        def offset(raw: int) -> int:
            return raw if after == 0 or draw(_ONE_IN_8) == 0 else raw % after
        code = draw(_CODES)
        jt, jf, k = offset(draw(_BYTE)), offset(draw(_BYTE)), draw(_KS)
        if code == JMP | JA:
            k = offset(k)
        out.append((code, jt, jf, k))
    if draw(_ONE_IN_8):
        out[-1] = (draw(_RETS), 0, 0, out[-1][3])
    return prog(*out)


@settings(max_examples=200, deadline=None)
@given(program=programs(), packet=st.binary(max_size=48), wirelen=st.integers(0, 100))
def test_random_valid_programs_agree_with_libpcap(program: bytes, packet: bytes,
                                                  wirelen: int) -> None:
    try:
        bpf.validate(program)
    except BpfError:
        return
    run(program, packet, wirelen)


@settings(max_examples=150, deadline=None)
@given(program=programs())
def test_validate_agrees_with_libpcaps_bpf_validate(program: bytes) -> None:
    """libpcap checks jumps, the last RET, memory indexes, constant divisors as
    the kernel does; it lacks the kernel's shift and store-before-load rules,
    and lets a JA wrap around (jump backwards), which are left out here."""
    insns = bpf.unpack(program)
    kept = [i for i in insns if i.code not in (LD | MEM, LDX | MEM)
            and not (i.code in (ALU | LSH | K, ALU | RSH | K) and i.k >= 32)
            and not (i.code == JMP | JA and i.k >= 1 << 31)]
    if len(kept) != len(insns):
        return
    try:
        bpf.validate(program)
        ours = True
    except BpfError:
        ours = False
    assert ours == bool(LIBPCAP.bpf_validate(program, len(insns))), bpf.disassemble(program)


# --- validate(): the kernel's checks ----------------------------------------------------

OK_RET = (RET | K, 1)
BAD_PROGRAMS = {  # name: (program, a word of the error, the same program fixed)
    "empty": (b"", "not within 1..4096", prog(OK_RET)),
    "too_long": (prog(*[OK_RET] * 4097), "not within 1..4096", prog(*[OK_RET] * 4096)),
    "partial_instruction": (prog(OK_RET) + b"\0\0\0", "whole number", prog(OK_RET)),
    "backward_jump": (prog((LD | IMM, 0), (JMP | JA, U32), OK_RET), "backward",
                      prog((LD | IMM, 0), (JMP | JA, 0), OK_RET)),
    "ja_past_end": (prog((JMP | JA, 1), OK_RET), "beyond the last",
                    prog((JMP | JA, 0), OK_RET)),
    "jt_past_end": (prog((JMP | JEQ | K, 2, 0, 0), OK_RET, OK_RET), "beyond the last",
                    prog((JMP | JEQ | K, 1, 0, 0), OK_RET, OK_RET)),
    "jf_past_end": (prog((JMP | JGT | X, 0, 2, 0), OK_RET, OK_RET), "beyond the last",
                    prog((JMP | JGT | X, 0, 1, 0), OK_RET, OK_RET)),
    "no_ret_at_end": (prog(OK_RET, (LD | IMM, 1)), "not a RET", prog(OK_RET, (RET | RET_A, 0))),
    "ld_h_imm": (prog((LD | H | IMM, 1), OK_RET), "unknown opcode", prog((LD | IMM, 1), OK_RET)),
    "ldx_w_abs": (prog((LDX | W | ABS, 1), OK_RET), "unknown opcode",
                  prog((LD | W | ABS, 1), OK_RET)),
    "ret_x": (prog((RET | X, 0),), "unknown opcode", prog(OK_RET)),
    "alu_0xf4": (prog((0xF4, 0), OK_RET), "unknown opcode", prog((ALU | XOR | K, 0), OK_RET)),
    "st_m16": (prog((ST, 16), OK_RET), "scratch memory", prog((ST, 15), OK_RET)),
    "stx_m16": (prog((STX, 16), OK_RET), "scratch memory", prog((STX, 15), OK_RET)),
    "ld_m16": (prog((ST, 0), (LD | MEM, 16), OK_RET), "scratch memory",
               prog((ST, 15), (LD | MEM, 15), OK_RET)),
    "ldx_m_huge": (prog((ST, 0), (LDX | MEM, U32), OK_RET), "scratch memory",
                   prog((ST, 0), (LDX | MEM, 0), OK_RET)),
    "div_by_constant_0": (prog((ALU | DIV | K, 0), OK_RET), "division",
                          prog((ALU | DIV | K, 1), OK_RET)),
    "mod_by_constant_0": (prog((ALU | MOD | K, 0), OK_RET), "division",
                          prog((ALU | MOD | K, 1), OK_RET)),
    "lsh_by_32": (prog((ALU | LSH | K, 32), OK_RET), "shift", prog((ALU | LSH | K, 31), OK_RET)),
    "rsh_by_32": (prog((ALU | RSH | K, 32), OK_RET), "shift", prog((ALU | RSH | X, 0), OK_RET)),
    "load_before_store": (prog((LD | MEM, 3), OK_RET), "before any store",
                          prog((STX, 3), (LD | MEM, 3), OK_RET)),
    # M[2] is stored on the jt path only; the fix stores it on both
    "store_on_one_path": (prog((LD | IMM, 1), (JMP | JEQ | K, 0, 1, 1), (ST, 2), (LDX | MEM, 2),
                               OK_RET), "before any store",
                          prog((LD | IMM, 1), (ST, 2), (JMP | JEQ | K, 0, 1, 1), (ST, 2),
                               (LDX | MEM, 2), OK_RET)),
    "store_after_ret_only": (prog((ST, 4), (JMP | JEQ | K, 1, 0, 1), OK_RET, (LD | MEM, 5),
                                  OK_RET), "before any store",
                             prog((ST, 5), (JMP | JEQ | K, 1, 0, 1), OK_RET, (LD | MEM, 5),
                                  OK_RET)),
}


@pytest.mark.parametrize("name", sorted(BAD_PROGRAMS))
def test_validate_rejects_and_accepts_the_fixed_program(name: str) -> None:
    bad, word, fixed = BAD_PROGRAMS[name]
    with pytest.raises(BpfError, match=word):
        bpf.validate(bad)
    with pytest.raises(BpfError, match=word):
        bpf_run(bad, b"")                   # the test entry point validates too
    bpf.validate(fixed)
    assert run(fixed, bytes(8)) == 1


def test_every_compiled_expression_passes_validate() -> None:
    for expr, program in PROGRAMS.items():
        bpf.validate(program)
        assert bpf.unpack(program)[-1].code & 7 == RET, expr


# --- compile errors ---------------------------------------------------------------------

@pytest.mark.parametrize("expr,why", [
    ("ip hots 1.2.3.4", "syntax error"),
    ("port 99999", "illegal port number 99999 > 65535"),
    ("net 10.0.0.0/33", "mask length must be <= 32"),
    ("ip broadcast", "netmask not known"),
    ("tcp[tcpflags] & tcp-syn !=", "syntax error"),
    ("ip6 protochain 6", "backward jump"),
    ("host 10.2.0.2\0 or arp", "NUL"),
    ("host é", "not ASCII"),
])
def test_compile_errors_name_the_expression(expr: str, why: str) -> None:
    with pytest.raises(BpfError) as err:
        bpf.compile(expr)
    assert str(err.value).startswith(f"bad filter {expr!r}: "), err.value
    assert why in str(err.value)
    assert isinstance(err.value, ValueError)


def test_compile_rejects_a_bad_snaplen() -> None:
    for snaplen in (0, -1, bpf.SNAPLEN_MAX + 1):
        with pytest.raises(BpfError, match="snaplen"):
            bpf.compile("ip", snaplen=snaplen)


def test_a_missing_libpcap_says_what_to_install() -> None:
    with pytest.raises(BpfError, match=r"libpcap not found: install libpcap0\.8 \(Debian"):
        bpf._libpcap(("libpcap-absent.so.0",))


# --- disassemble() --------------------------------------------------------------------

@given(code=st.sampled_from(sorted(set(bpf.OPCODES) - {LDX | W | LEN})
                            + [0x0E, 0x17, 0x21, 0xFFFF]),
       jt=st.integers(0, 255), jf=st.integers(0, 255), k=u32, n=st.integers(0, 300))
def test_disassemble_matches_libpcaps_bpf_image(code: int, jt: int, jf: int, k: int,
                                                n: int) -> None:
    """Every opcode (and some unknown ones) at instruction n, as bpf_image
    prints it at n, trailing blanks aside."""
    one = prog((code, jt, jf, k))
    line = bpf.disassemble(prog(*[OK_RET] * n) + one)[n]
    assert line == LIBPCAP.bpf_image(one, n).decode().rstrip()


def test_disassemble_names_ldx_len() -> None:
    """bpf_image has no name for LDX|W|LEN (it prints "unimp 0x81"); this is
    the one line that differs, and says what the instruction does."""
    assert bpf.disassemble(prog((LDX | W | LEN, 0))) == ["(000) ldx      #pktlen"]
    assert LIBPCAP.bpf_image(prog((LDX | W | LEN, 0)), 0).decode().startswith("(000) unimp")


@pytest.mark.parametrize("expr", ["ip host 10.2.0.2", "tcp[tcpflags] & tcp-syn != 0",
                                  "ip6 and udp dst port 53", "vlan 100 and ip",
                                  "ip[2:2] - ip[8] > ip[9] + ip[1]", "greater 1000"])
def test_disassemble_matches_tcpdump_d(expr: str) -> None:
    """tcpdump -d -y EN10MB compiles for Ethernet without opening an
    interface (pcap_open_dead), with the same snap length, 262144."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        pytest.skip("tcpdump not installed (scripts/install.sh installs it)")
    out = subprocess.run([tcpdump, "-d", "-y", "EN10MB", expr], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    want = [line.rstrip() for line in out.splitlines()]
    assert len(want) > 3
    assert bpf.disassemble(bpf.compile(expr)) == want
