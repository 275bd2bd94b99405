"""Frame templates, built with scapy and checked by dissecting them again.

One Ethernet frame per (flow, size): UDP, TCP SYN or ICMP echo, over IPv4 or
IPv6 (layouts in :mod:`forwarder.lab.spec`).  Per packet the senders only patch
in a 32-bit sequence number and a 32-bit timestamp; ICMP and TCP carry a 16-bit
complement word beside them (an ICMP payload word, the TCP urgent pointer) that
keeps the checksum valid without recomputing it (:func:`make_patcher`).  UDP
over IPv4 goes without a checksum (0); over IPv6 a checksum is mandatory (RFC
8200 8.1), and the patcher updates it incrementally, RFC 1624's
HC' = ~(~HC + ~m + m'), from the old and new words.  Every template,
and copies patched with awkward values, is dissected by scapy before anything is
sent (:func:`verify_template`): lengths, fields where the receiver looks, checksums.
"""
from __future__ import annotations

import struct
from typing import Callable

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from forwarder.lab.spec import (DPORT, FCS, FLOW_SRC_NET, FLOW_SRC_NET6, MAGIC, PROTOCOLS,
                                SPORT_BASE, LoadgenError, layout)


def _flow_src(flow: int, src_addrs: int, family: int = 4) -> str:
    net = FLOW_SRC_NET if family == 4 else FLOW_SRC_NET6
    return str(net.network_address + 1 + (flow % src_addrs))


def build_template(proto: str, size: int, flow: int, *, src_mac: str, dst_mac: str,
                   dst_ip: str, src_addrs: int = 1, ttl: int = 64, family: int = 4) -> bytes:
    """One frame of ``size`` bytes with FCS (``size - 4`` on the wire) for ``flow``."""
    L = layout(proto, family) if proto in PROTOCOLS else None
    if L is None:
        raise LoadgenError(f"protocol {proto!r}: one of {', '.join(PROTOCOLS)}")
    frame_len = size - FCS
    eth = Ether(src=src_mac, dst=dst_mac, type=L.ethertype)
    src = _flow_src(flow, src_addrs, family)
    if family == 4:
        ip = IP(src=src, dst=dst_ip, ttl=ttl, id=flow & 0xFFFF, flags=0)
    else:
        ip = IPv6(src=src, dst=dst_ip, hlim=ttl, fl=flow & 0xFFFFF)
    l4_at = 14 + (20 if family == 4 else 40)
    if proto == "udp":
        head = struct.pack("!HHII", MAGIC, flow, 0, 0)
        # IPv4: no checksum; IPv6: scapy computes it (the patcher keeps it right)
        l4 = UDP(sport=SPORT_BASE + flow, dport=DPORT, chksum=0) if family == 4 else \
            UDP(sport=SPORT_BASE + flow, dport=DPORT)
        pad = frame_len - l4_at - 8 - len(head)
        pkt = eth / ip / l4 / Raw(head + bytes(max(pad, 0)))
    elif proto == "icmp":
        head = struct.pack("!HIIH", MAGIC, 0, 0, 0xFFFF)
        pad = frame_len - l4_at - 8 - len(head)
        echo = ICMP(type=8, code=0, id=flow, seq=0) if family == 4 else \
            ICMPv6EchoRequest(id=flow, seq=0)
        pkt = eth / ip / echo / Raw(head + bytes(max(pad, 0)))
    else:
        l4 = TCP(sport=SPORT_BASE + flow, dport=DPORT, seq=0, ack=0, flags="S",
                 window=MAGIC, urgptr=0xFFFF)
        pad = frame_len - l4_at - 20
        pkt = eth / ip / l4 / (Raw(bytes(pad)) if pad > 0 else Raw(b""))
    raw = bytes(pkt)
    if len(raw) != frame_len:
        raise LoadgenError(f"{proto} template is {len(raw)} bytes, wanted {frame_len}")
    assert L.ipproto == raw[L.proto_off]
    return raw


def _fold(v: int) -> int:
    v = (v & 0xFFFF) + (v >> 16)
    return (v & 0xFFFF) + (v >> 16)


def make_patcher(proto: str, family: int = 4) -> Callable[[bytearray, int, int], None]:
    """The per-packet write of (seq, ts) into a template, checksums kept valid."""
    L = layout(proto, family)
    d = 0 if family == 4 else 20                    # IPv6: 20 bytes further on
    if proto == "udp" and family == 4:
        st = struct.Struct("!II")
        off = L.seq_off

        def patch(buf: bytearray, seq: int, ts: int) -> None:
            st.pack_into(buf, off, seq, ts)
        return patch
    if proto == "udp":
        st = struct.Struct("!II")
        ck = struct.Struct("!H")
        off, ck_off = L.seq_off, 14 + 40 + 6

        def patch(buf: bytearray, seq: int, ts: int) -> None:
            os_, ot = st.unpack_from(buf, off)
            # ~HC + ~m + m' for the four words that change (RFC 1624 eqn. 3)
            v = (ck.unpack_from(buf, ck_off)[0] ^ 0xFFFF) \
                + (0x3FFFC - (os_ >> 16) - (os_ & 0xFFFF) - (ot >> 16) - (ot & 0xFFFF)) \
                + (seq >> 16) + (seq & 0xFFFF) + (ts >> 16) + (ts & 0xFFFF)
            c = 0xFFFF - _fold(v)
            st.pack_into(buf, off, seq, ts)
            ck.pack_into(buf, ck_off, c or 0xFFFF)      # 0 means "none": send all ones
        return patch
    if proto == "icmp":
        st = struct.Struct("!HHIIH")    # echo seq16, magic, seq, ts, complement

        def patch(buf: bytearray, seq: int, ts: int) -> None:
            lo = seq & 0xFFFF
            v = _fold((seq >> 16) + lo + lo + (ts >> 16) + (ts & 0xFFFF))
            st.pack_into(buf, 40 + d, lo, MAGIC, seq, ts, 0xFFFF - v)
        return patch
    st2 = struct.Struct("!II")
    comp = struct.Struct("!H")

    def patch(buf: bytearray, seq: int, ts: int) -> None:
        v = _fold((seq >> 16) + (seq & 0xFFFF) + (ts >> 16) + (ts & 0xFFFF))
        st2.pack_into(buf, 38 + d, seq, ts)
        comp.pack_into(buf, 52 + d, 0xFFFF - v)
    return patch


def verify_template(proto: str, raw: bytes, flow: int, family: int = 4) -> None:
    """Dissect with scapy: lengths, fields and checksums, also once patched."""
    L = layout(proto, family)
    ipcls = IP if family == 4 else IPv6
    l4cls = {"udp": UDP, "icmp": ICMP if family == 4 else ICMPv6EchoRequest, "tcp": TCP}[proto]
    for seq, ts in ((0, 0), (0x89ABCDEF, 0xFEDCBA98), (0x0001FFFF, 0x0000FFFF),
                    (0xFFFFFFFF, 0xFFFFFFFF)):
        buf = bytearray(raw)
        if seq or ts:
            make_patcher(proto, family)(buf, seq, ts)
        p = Ether(bytes(buf))
        ip = p[ipcls]
        if family == 4:
            want = ip.chksum
            ip2 = IP(bytes(ip))
            del ip2.chksum
            if IP(bytes(ip2)).chksum != want or ip.len != len(buf) - 14:
                raise LoadgenError(f"{proto} template: bad IP header")
        elif ip.plen != len(buf) - 54:
            raise LoadgenError(f"{proto} template: bad IPv6 payload length")
        l4 = p[l4cls]
        if proto != "udp" or family == 6:
            got = l4.cksum if proto == "icmp" and family == 6 else l4.chksum
            fresh = ipcls(bytes(ip))             # L4 checksums cover a pseudo-header
            if proto == "icmp" and family == 6:
                del fresh[l4cls].cksum
                again = ipcls(bytes(fresh))[l4cls].cksum
            else:
                del fresh[l4cls].chksum
                again = ipcls(bytes(fresh))[l4cls].chksum
            if again != got:
                raise LoadgenError(f"{proto} template: checksum wrong after patching "
                                   f"seq={seq:#x} ts={ts:#x}")
        elif l4.chksum != 0 or l4.len != ip.len - 20:
            raise LoadgenError("udp template: bad UDP header")
        fl, = struct.unpack_from("!H", buf, L.flow_off)
        sq, tv = struct.unpack_from("!I", buf, L.seq_off)[0], struct.unpack_from("!I", buf, L.ts_off)[0]
        mg, = struct.unpack_from("!H", buf, L.magic_off)
        if (fl - L.flow_base, sq, tv, mg) != (flow, seq, ts, MAGIC):
            raise LoadgenError(f"{proto} template: fields not where the receiver looks")
