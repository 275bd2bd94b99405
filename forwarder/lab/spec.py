"""What a load is: the protocols and where their measurement fields sit in a
frame, frame sizes (RFC 2544's, or IMIX), and :class:`LoadSpec` with its bounds.

Stdlib only: the lab's command line takes its choices from here without the lab
extra installed.

Frame sizes are RFC 2544's: the Ethernet frame *with* its 4-byte FCS, so a
"64-byte" frame is 60 bytes on the TAP; IMIX is 64:7, 594:4, 1518:1.  Flows
differ in source address (198.18.0.0/15, the RFC 2544 benchmarking range) and
source port / ICMP id.  Timestamps are CLOCK_REALTIME in 64 ns units, 32 bits.

IPv6 (``family=6``): the same fields 20 bytes further on (the IPv6 header is
40 bytes), flows from 2001:2::/48 (RFC 5180's benchmarking range), ICMPv6 echo
for "icmp".  An IPv6 test frame cannot be 64 bytes: Ethernet, IPv6 and UDP
headers and the 12 bytes of measurement fields make 78 with the FCS, the
smallest frame RFC 5180 section 5.1.1 benchmarks IPv6 with; it takes the place
of 64 (also in IMIX).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network
from typing import Sequence

MAGIC = 0x4C47                         # "LG": marks our frames for the BPF filter
SPORT_BASE = 10000                     # flow i uses source port SPORT_BASE + i
DPORT = 9                              # discard
FLOW_SRC_NET = IPv4Network("198.18.0.0/15")   # RFC 2544 benchmarking range
FLOW_SRC_NET6 = IPv6Network("2001:2::/48")    # RFC 5180 benchmarking range
FAMILIES = (4, 6)
MIN_FRAME = {4: 64, 6: 78}             # the smallest test frame (FCS included) per family
FCS = 4
IMIX = ((64, 7), (594, 4), (1518, 1))  # simple IMIX: frame size (with FCS), weight
MAX_FLOWS = 1024
MAX_DURATION = 600.0
BENCH_SETUPS = ("router", "kernel", "copy", "offload", "attach", "attach_tap",  # `forwarder
                "bridge", "container")                   # bench`'s forwarders; ...
BENCH_DEFAULT = ("router", "kernel", "copy", "offload")  # ... these four by default
BENCH_ATTACH = ("router", "attach", "attach_tap", "bridge")  # --attach: ways to wire a container
BENCH_DOCKER = ("attach", "container")                   # --docker: in the image, and outside it
DEFAULT_MAX_COUNT = 100_000_000
BUCKET_NS = 100_000_000                # time series resolution: 100 ms
TS_SHIFT = 6                           # timestamps in units of 64 ns, 32 bits (wraps in 275 s)
TS_UNIT_NS = 1 << TS_SHIFT


class LoadgenError(Exception):
    """The load cannot be run as asked."""


# --- protocols -------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where a protocol's measurement fields sit in the frame (offsets from the
    Ethernet header; the IPv4 header is always 20 bytes, the IPv6 one 40)."""
    name: str
    ipproto: int
    magic_off: int
    flow_off: int       # 16-bit flow id (minus flow_base)
    flow_base: int
    seq_off: int        # 32-bit sequence number
    ts_off: int         # 32-bit timestamp
    comp_off: int | None  # 16-bit checksum complement (ICMP, TCP)
    type_off: int | None = None   # ICMP type byte (must be the echo request)
    family: int = 4
    echo_type: int = 8            # ICMP echo request; ICMPv6's is 128

    @property
    def ethertype(self) -> int:
        return 0x0800 if self.family == 4 else 0x86DD

    @property
    def proto_off(self) -> int:
        """The IPv4 protocol or IPv6 next header byte."""
        return 23 if self.family == 4 else 20


LAYOUTS = {
    # UDP payload: magic, flow, seq, ts (checksum 0: "none", allowed over IPv4)
    "udp": Layout("udp", 17, 42, 44, 0, 46, 50, None),
    # ICMP echo: id = flow, seq = low 16 bits; payload: magic, seq, ts, complement
    "icmp": Layout("icmp", 1, 42, 38, 0, 44, 48, 52, 34),
    # TCP SYN: sport = SPORT_BASE + flow, seq = seq, ack field = ts (no ACK flag),
    # window = magic, urgent pointer = complement (no URG flag)
    "tcp": Layout("tcp", 6, 48, 34, SPORT_BASE, 38, 42, 52),
}
PROTOCOLS = tuple(LAYOUTS)


def _v6(L: Layout) -> Layout:
    """The same protocol over IPv6: every field 20 bytes further on."""
    def at(off: int | None) -> int | None:
        return None if off is None else off + 20
    return replace(L, family=6, ipproto=58 if L.name == "icmp" else L.ipproto,
                   echo_type=128, magic_off=at(L.magic_off), flow_off=at(L.flow_off),
                   seq_off=at(L.seq_off), ts_off=at(L.ts_off), comp_off=at(L.comp_off),
                   type_off=at(L.type_off))


LAYOUTS6 = {name: _v6(L) for name, L in LAYOUTS.items()}


def layout(proto: str, family: int = 4) -> Layout:
    """Where ``proto``'s fields sit over IPv4 or IPv6."""
    return (LAYOUTS if family == 4 else LAYOUTS6)[proto]


def imix(family: int = 4) -> tuple[tuple[int, int], ...]:
    """The IMIX of ``family``: its smallest frame in place of 64."""
    return tuple((max(s, MIN_FRAME[family]), w) for s, w in IMIX)


def parse_sizes(text: str | Sequence[int], family: int = 4) -> tuple[list[int], bool]:
    """"64" | "64,512,1518" | "imix" -> (the pattern of frame sizes, is_imix).

    The IMIX pattern interleaves the sizes by weight (12 frames)."""
    mix = imix(family)
    if isinstance(text, str) and text.strip().lower() == "imix":
        pattern: list[int] = []
        credit = {s: 0.0 for s, _ in mix}
        total = sum(w for _, w in mix)
        for _ in range(total):          # smooth weighted round robin
            for s, w in mix:
                credit[s] += w
            best = max(credit, key=lambda s: credit[s])
            credit[best] -= total
            pattern.append(best)
        return pattern, True
    if isinstance(text, str):
        try:
            sizes = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise LoadgenError(f"--size {text!r}: expected N[,N...] or imix") from None
    else:
        sizes = list(text)
    if not sizes:
        raise LoadgenError("no frame size given")
    low = MIN_FRAME[family]
    for s in sizes:
        if not low <= s <= 16018:
            why = (" (an IPv6 test frame is at least 78 bytes: RFC 5180)" if family == 6
                   and s >= 64 else "")
            raise LoadgenError(f"frame size {s}: must be {low}..1518 (or up to MTU + 18){why}")
    return sizes, False



@dataclass
class LoadSpec:
    """One load: what is sent, how fast, and the bounds that end it."""
    proto: str = "udp"
    sizes: str = "64"                  # "64", "64,1518" or "imix"
    flows: int = 8
    rate: float | None = None          # packets/s for all senders together; None = flat out
    duration: float = 5.0              # seconds, always a bound
    count: int | None = None           # packets, always a bound (default: from rate, or a cap)
    procs: int = 1
    src_addrs: int = 1                 # distinct source addresses the flows cycle through
    ttl: int = 64                      # the IPv6 hop limit with family 6
    family: int = 4                    # 4 or 6

    def check(self) -> None:
        if self.proto not in LAYOUTS:
            raise LoadgenError(f"protocol {self.proto!r}: one of {', '.join(PROTOCOLS)}")
        if self.family not in FAMILIES:
            raise LoadgenError(f"family {self.family}: 4 or 6")
        parse_sizes(self.sizes, self.family)
        if not 1 <= self.flows <= MAX_FLOWS:
            raise LoadgenError(f"flows: 1..{MAX_FLOWS}")
        if not 0 < self.duration <= MAX_DURATION:
            raise LoadgenError(f"duration: more than 0 and at most {MAX_DURATION:.0f} s")
        if self.rate is not None and not 0 < self.rate <= 1e8:
            raise LoadgenError("rate: more than 0 packets/s (omit it to go flat out)")
        if self.count is not None and not 0 < self.count <= 10 * DEFAULT_MAX_COUNT:
            raise LoadgenError("count: at least 1")
        if not 1 <= self.procs <= 16:
            raise LoadgenError("procs: 1..16")
        if not 1 <= self.src_addrs <= 65536:
            raise LoadgenError("src_addrs: 1..65536")

    def max_count(self) -> int:
        cap = self.count if self.count is not None else DEFAULT_MAX_COUNT
        if self.rate is not None:
            cap = min(cap, int(math.ceil(self.rate * self.duration)))
        return max(cap, 1)
