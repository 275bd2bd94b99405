"""Frame templates, built with scapy and checked by dissecting them again.

One Ethernet frame per (flow, size): UDP, TCP SYN or ICMP echo (layouts in
:mod:`forwarder.lab.spec`).  Per packet the senders only patch in a 32-bit
sequence number and a 32-bit timestamp; ICMP and TCP carry a 16-bit complement
word beside them (an ICMP payload word, the TCP urgent pointer) that keeps the
checksum valid without recomputing it (:func:`make_patcher`).  Every template,
and copies patched with awkward values, is dissected by scapy before anything is
sent (:func:`verify_template`): lengths, fields where the receiver looks, checksums.
"""
from __future__ import annotations

import struct
from typing import Callable

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from forwarder.lab.spec import (DPORT, FCS, FLOW_SRC_NET, LAYOUTS, MAGIC, PROTOCOLS, SPORT_BASE,
                                LoadgenError)


def _flow_src(flow: int, src_addrs: int) -> str:
    return str(FLOW_SRC_NET.network_address + 1 + (flow % src_addrs))


def build_template(proto: str, size: int, flow: int, *, src_mac: str, dst_mac: str,
                   dst_ip: str, src_addrs: int = 1, ttl: int = 64) -> bytes:
    """One frame of ``size`` bytes with FCS (``size - 4`` on the wire) for ``flow``."""
    L = LAYOUTS[proto]
    frame_len = size - FCS
    eth = Ether(src=src_mac, dst=dst_mac, type=0x0800)
    ip = IP(src=_flow_src(flow, src_addrs), dst=dst_ip, ttl=ttl, id=flow & 0xFFFF, flags=0)
    if proto == "udp":
        head = struct.pack("!HHII", MAGIC, flow, 0, 0)
        l4 = UDP(sport=SPORT_BASE + flow, dport=DPORT, chksum=0)
        pad = frame_len - 42 - len(head)
        pkt = eth / ip / l4 / Raw(head + bytes(max(pad, 0)))
    elif proto == "icmp":
        head = struct.pack("!HIIH", MAGIC, 0, 0, 0xFFFF)
        pad = frame_len - 42 - len(head)
        pkt = eth / ip / ICMP(type=8, code=0, id=flow, seq=0) / Raw(head + bytes(max(pad, 0)))
    elif proto == "tcp":
        l4 = TCP(sport=SPORT_BASE + flow, dport=DPORT, seq=0, ack=0, flags="S",
                 window=MAGIC, urgptr=0xFFFF)
        pad = frame_len - 54
        pkt = eth / ip / l4 / (Raw(bytes(pad)) if pad > 0 else Raw(b""))
    else:
        raise LoadgenError(f"protocol {proto!r}: one of {', '.join(PROTOCOLS)}")
    raw = bytes(pkt)
    if len(raw) != frame_len:
        raise LoadgenError(f"{proto} template is {len(raw)} bytes, wanted {frame_len}")
    assert L.ipproto == raw[23]
    return raw


def make_patcher(proto: str) -> Callable[[bytearray, int, int], None]:
    """The per-packet write of (seq, ts) into a template, checksums kept valid."""
    L = LAYOUTS[proto]
    if proto == "udp":
        st = struct.Struct("!II")
        off = L.seq_off

        def patch(buf: bytearray, seq: int, ts: int) -> None:
            st.pack_into(buf, off, seq, ts)
        return patch
    if proto == "icmp":
        st = struct.Struct("!HHIIH")    # icmp seq16, magic, seq, ts, complement at 40

        def patch(buf: bytearray, seq: int, ts: int) -> None:
            lo = seq & 0xFFFF
            v = (seq >> 16) + lo + lo + (ts >> 16) + (ts & 0xFFFF)
            v = (v & 0xFFFF) + (v >> 16)
            v = (v & 0xFFFF) + (v >> 16)
            st.pack_into(buf, 40, lo, MAGIC, seq, ts, 0xFFFF - v)
        return patch
    st2 = struct.Struct("!II")
    comp = struct.Struct("!H")

    def patch(buf: bytearray, seq: int, ts: int) -> None:
        v = (seq >> 16) + (seq & 0xFFFF) + (ts >> 16) + (ts & 0xFFFF)
        v = (v & 0xFFFF) + (v >> 16)
        v = (v & 0xFFFF) + (v >> 16)
        st2.pack_into(buf, 38, seq, ts)
        comp.pack_into(buf, 52, 0xFFFF - v)
    return patch


def verify_template(proto: str, raw: bytes, flow: int) -> None:
    """Dissect with scapy: lengths, fields and checksums, also once patched."""
    L = LAYOUTS[proto]
    for seq, ts in ((0, 0), (0x89ABCDEF, 0xFEDCBA98), (0x0001FFFF, 0x0000FFFF)):
        buf = bytearray(raw)
        if seq or ts:
            make_patcher(proto)(buf, seq, ts)
        p = Ether(bytes(buf))
        ip = p[IP]
        want = ip.chksum
        ip2 = IP(bytes(ip))
        del ip2.chksum
        if IP(bytes(ip2)).chksum != want or ip.len != len(buf) - 14:
            raise LoadgenError(f"{proto} template: bad IP header")
        l4cls = {"udp": UDP, "icmp": ICMP, "tcp": TCP}[proto]
        l4 = p[l4cls]
        if proto != "udp":
            got = l4.chksum
            fresh = IP(bytes(ip))               # TCP's checksum covers a pseudo-header
            del fresh[l4cls].chksum
            if IP(bytes(fresh))[l4cls].chksum != got:
                raise LoadgenError(f"{proto} template: checksum wrong after patching "
                                   f"seq={seq:#x} ts={ts:#x}")
        else:
            if l4.chksum != 0 or l4.len != ip.len - 20:
                raise LoadgenError("udp template: bad UDP header")
        fl, = struct.unpack_from("!H", buf, L.flow_off)
        sq, tv = struct.unpack_from("!I", buf, L.seq_off)[0], struct.unpack_from("!I", buf, L.ts_off)[0]
        mg, = struct.unpack_from("!H", buf, L.magic_off)
        if (fl - L.flow_base, sq, tv, mg) != (flow, seq, ts, MAGIC):
            raise LoadgenError(f"{proto} template: fields not where the receiver looks")

