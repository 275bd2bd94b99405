"""pcap and pcapng writers for `forwarder capture` (no dependencies).

pcap (libpcap's classic format, microsecond timestamps, LINKTYPE_ETHERNET)
is what every tool reads; pcapng (IETF draft-ietf-opsawg-pcapng) adds per
packet options, which the drop capture needs: the drop reason goes in the
packet's comment (opt_comment), the direction in epb_flags (1 inbound, 2
outbound), and each router interface is an Interface Description Block of
its own, named (if_name), so Wireshark shows where a packet was.  Both are
written in this machine's byte order, as libpcap does (readers detect it
from the magic).
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Sequence

LINKTYPE_ETHERNET = 1
PCAP_MAGIC_US = 0xA1B2C3D4
PCAPNG_SHB, PCAPNG_IDB, PCAPNG_EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END, OPT_COMMENT = 0, 1
IF_NAME = 2
EPB_FLAGS = 2
DIR_INBOUND, DIR_OUTBOUND = 1, 2


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("=HH", code, len(value)) + _pad4(value)


def _block(btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("=II", btype, n) + body + struct.pack("=I", n)


class PcapWriter:
    """Classic pcap: a file header, then a record per packet."""

    def __init__(self, out: BinaryIO, snaplen: int) -> None:
        self.out = out
        out.write(struct.pack("=IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def packet(self, time_ns: int, data: bytes, origlen: int, ifindex: int = 0,
               direction: int = 0, comment: str | None = None) -> None:
        sec, ns = divmod(time_ns, 1_000_000_000)
        self.out.write(struct.pack("=IIII", sec, ns // 1000, len(data), origlen) + data)


class PcapngWriter:
    """pcapng: a section header, one interface block per router interface
    (interface id = the router's interface index), then an Enhanced Packet
    Block per packet with its direction and, for drops, the reason."""

    def __init__(self, out: BinaryIO, snaplen: int, ifnames: Sequence[str]) -> None:
        self.out = out
        shb = struct.pack("=IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + \
            _option(OPT_COMMENT, b"forwarder capture") + _option(OPT_END, b"")
        out.write(_block(PCAPNG_SHB, shb))
        for name in ifnames or ["?"]:
            idb = struct.pack("=HHI", LINKTYPE_ETHERNET, 0, snaplen) + \
                _option(IF_NAME, name.encode()) + _option(OPT_END, b"")
            out.write(_block(PCAPNG_IDB, idb))
        self.nifs = max(1, len(ifnames))

    def packet(self, time_ns: int, data: bytes, origlen: int, ifindex: int = 0,
               direction: int = 0, comment: str | None = None) -> None:
        us = time_ns // 1000
        ifid = ifindex if 0 <= ifindex < self.nifs else 0
        body = struct.pack("=IIIII", ifid, us >> 32, us & 0xFFFFFFFF, len(data), origlen) + _pad4(data)
        opts = b""
        if direction:
            opts += _option(EPB_FLAGS, struct.pack("=I", direction))
        if comment:
            opts += _option(OPT_COMMENT, comment.encode())
        if opts:
            body += opts + _option(OPT_END, b"")
        self.out.write(_block(PCAPNG_EPB, body))
