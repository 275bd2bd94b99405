"""`forwarder loadgen`: scapy-built load between two lab namespaces, measured end to end.

How a run goes
--------------
* **Templates.**  scapy builds one Ethernet frame per (flow, size): UDP, TCP SYN or
  ICMP echo, frame sizes 64..1518 bytes (RFC 2544 sizes: the Ethernet frame *with*
  its 4-byte FCS, so a "64-byte" frame is 60 bytes on the TAP) or IMIX
  (64:7, 594:4, 1518:1).  Flows differ in source address (198.18.0.0/15, the
  RFC 2544 benchmarking range) and source port / ICMP id.  Every template is
  dissected again by scapy, and so is a copy with a sequence number and a
  timestamp written into it, to check lengths and checksums before anything is sent.
* **Senders.**  One or more processes (``--procs``) enter the source host's
  namespace and write the templates as bytes to one reused AF_PACKET socket each
  (PACKET_QDISC_BYPASS); per packet only the 32-bit sequence number and a 32-bit
  timestamp (CLOCK_REALTIME in 64 ns units) are patched in.  ICMP and TCP carry a
  16-bit complement word beside them (the TCP urgent pointer, an ICMP payload
  word) that keeps the checksum valid without recomputing it.  A token bucket
  paces them (``--rate``) or they go flat out; every sender stops at its packet
  count *or* its deadline, whichever comes first.
* **Receiver.**  A process in the destination namespace reads a TPACKET_V2
  PACKET_RX_RING behind a classic BPF filter (IPv4, the protocol, the magic word,
  not outgoing; at most 128 bytes copied per frame).  The kernel stamps each frame
  as it reaches the socket, so latency = ring timestamp - sender timestamp does not
  include the receiver's own lag.  Frames are handled in chunks with numpy: per-flow
  counts, reordering (a packet whose sequence number is below the highest already
  seen in its flow), latency samples and delivered packets per 100 ms.
* **Counters.**  The kernel's counters of the source and destination links (pyroute2)
  and the receiver socket's PACKET_STATISTICS are read before and after, so the
  report tells where packets were lost: before the router (``src_tx_dropped``: the
  TAP's queue was full), in the router (its drop counters, with ``--router-socket``),
  or at the receiver (``receiver_drops``: the ring was full).

Results come as a table, as JSON (``--json FILE``, schema :data:`SCHEMA`, checked by
:func:`check_schema`) and as a PNG (``--plot FILE``).  ``--sweep`` steps the offered
rate up to past saturation and plots delivered vs offered and loss.

Safety: traffic only ever goes to namespaces made by :class:`forwarder.netns.Topology`
(names ``fwXXXXXX-...``); without ``--src/--dst`` the loadgen builds the lab from
configs/lab.toml itself and removes it afterwards.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import mmap
import multiprocessing as mp
import re
import signal
import socket
import struct
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from ipaddress import IPv4Network
from typing import Any, Callable, Iterator, Sequence


class _Lazy:
    """forwarder.netns (pyroute2) on first use: `forwarder --help`, `forwarder health`
    and the other commands load this module without needing it."""

    def __getattr__(self, name: str) -> Any:
        from forwarder import netns
        return getattr(netns, name)


nn: Any = _Lazy()


# --- constants -----------------------------------------------------------------------

SCHEMA = "forwarder.loadgen/1"
SWEEP_SCHEMA = "forwarder.loadgen.sweep/1"

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_QDISC_BYPASS = 20
TPACKET_V2 = 1
TP_STATUS_USER = 1
SO_ATTACH_FILTER = 26
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SKF_AD_PKTTYPE = -0x1000 + 4

MAGIC = 0x4C47                         # "LG": marks our frames for the BPF filter
SPORT_BASE = 10000                     # flow i uses source port SPORT_BASE + i
DPORT = 9                              # discard
FLOW_SRC_NET = IPv4Network("198.18.0.0/15")   # RFC 2544 benchmarking range
FCS = 4
IMIX = ((64, 7), (594, 4), (1518, 1))  # simple IMIX: frame size (with FCS), weight
MAX_FLOWS = 1024
MAX_DURATION = 600.0
DEFAULT_MAX_COUNT = 100_000_000
BUCKET_NS = 100_000_000                # time series resolution: 100 ms
TS_SHIFT = 6                           # timestamps in units of 64 ns, 32 bits (wraps in 275 s)
TS_UNIT_NS = 1 << TS_SHIFT

# Receiver ring: TPACKET_V2 frames of 256 bytes, 16 blocks of 1 MiB (65536 frames).
RING_FRAME = 256
RING_BLOCK = 1 << 20
RING_BLOCKS = 16
RING_SNAP = 128
RING_MACOFF = 66       # TPACKET_ALIGN(TPACKET2_HDRLEN + 16) - ETH_HLEN for SOCK_RAW
REC_LEN = RING_MACOFF + 54   # what is copied per frame: tpacket2_hdr .. end of our fields
CHUNK = 16384                # frames per numpy chunk
LAT_SAMPLE_CAP = 16_000_000  # latency samples kept (uint32, 64 MB); beyond: subsampled

OURS = re.compile(r"^fw[0-9a-f]{6}-")


class LoadgenError(Exception):
    """The load cannot be run as asked."""


# --- protocols and templates ------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where a protocol's measurement fields sit in the frame (offsets from the
    Ethernet header; the IP header is always 20 bytes)."""
    name: str
    ipproto: int
    magic_off: int
    flow_off: int       # 16-bit flow id (minus flow_base)
    flow_base: int
    seq_off: int        # 32-bit sequence number
    ts_off: int         # 32-bit timestamp
    comp_off: int | None  # 16-bit checksum complement (ICMP, TCP)
    type_off: int | None = None   # ICMP type byte (must be 8, echo request)


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


def parse_sizes(text: str | Sequence[int]) -> tuple[list[int], bool]:
    """"64" | "64,512,1518" | "imix" -> (the pattern of frame sizes, is_imix).

    The IMIX pattern interleaves the sizes by weight (12 frames)."""
    if isinstance(text, str) and text.strip().lower() == "imix":
        pattern: list[int] = []
        credit = {s: 0.0 for s, _ in IMIX}
        total = sum(w for _, w in IMIX)
        for _ in range(total):          # smooth weighted round robin
            for s, w in IMIX:
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
    for s in sizes:
        if not 64 <= s <= 16018:
            raise LoadgenError(f"frame size {s}: must be 64..1518 (or up to MTU + 18)")
    return sizes, False


def _flow_src(flow: int, src_addrs: int) -> str:
    return str(FLOW_SRC_NET.network_address + 1 + (flow % src_addrs))


def build_template(proto: str, size: int, flow: int, *, src_mac: str, dst_mac: str,
                   dst_ip: str, src_addrs: int = 1, ttl: int = 64) -> bytes:
    """One frame of ``size`` bytes with FCS (``size - 4`` on the wire) for ``flow``."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

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
    if len(raw) < frame_len:            # (never for these layouts: all fit in 60 bytes)
        raw += bytes(frame_len - len(raw))
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
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether

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


# --- the load and the path ----------------------------------------------------------------

@dataclass
class LoadSpec:
    proto: str = "udp"
    sizes: str = "64"                  # "64", "64,1518" or "imix"
    flows: int = 8
    rate: float | None = None          # packets/s for all senders together; None = flat out
    duration: float = 5.0              # seconds, always a bound
    count: int | None = None           # packets, always a bound (default: from rate, or a cap)
    procs: int = 1
    src_addrs: int = 1                 # distinct source addresses the flows cycle through
    ttl: int = 64

    def check(self) -> None:
        if self.proto not in LAYOUTS:
            raise LoadgenError(f"protocol {self.proto!r}: one of {', '.join(PROTOCOLS)}")
        parse_sizes(self.sizes)
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


@dataclass
class PathInfo:
    """Where the load goes: resolved once, reusable for several runs."""
    src_netns: str
    src_if: str
    src_ifindex: int
    src_mac: str
    src_mtu: int
    dst_netns: str
    dst_if: str
    dst_ifindex: int
    dst_ip: str
    next_hop: str
    next_hop_mac: str
    router_socket: str | None = None


def check_ours(ns: str) -> None:
    """Refuse namespaces that forwarder.netns.Topology did not make."""
    if not OURS.match(ns) or "/" in ns:
        raise LoadgenError(f"netns {ns!r} was not made by forwarder (names fwXXXXXX-...); "
                           "the load generator only sends into its own lab namespaces")
    if not nn.netns_exists(ns):
        raise LoadgenError(f"netns {ns!r} does not exist")


def _link_stats(ns: str, ifindex: int) -> dict[str, int]:
    with nn.iproute(ns) as ipr:
        link = ipr.get_links(ifindex)[0]
        s = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS")
        return {k: int(s[k]) for k in ("rx_packets", "rx_bytes", "rx_dropped", "tx_packets",
                                       "tx_bytes", "tx_dropped")}


def link_stats(ns: str, ifname: str) -> dict[str, int]:
    """The kernel's counters of ``ifname`` in ``ns`` (what `ip -s link` shows)."""
    with nn.iproute(ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise LoadgenError(f"no link {ifname} in {ns}")
    return _link_stats(ns, idx[0])


def resolve_path(src_ns: str, dst_ns: str, dst_ip: str | None = None, *,
                 router_socket: str | None = None, timeout: float = 5.0) -> PathInfo:
    """Find the links and the next hop's MAC from ``src_ns`` towards ``dst_ns``.

    One ping from the source to the destination fills the ARP caches on the way
    (the host's, and the router's for the destination)."""
    check_ours(src_ns)
    check_ours(dst_ns)
    with nn.iproute(dst_ns) as ipr:
        addrs = [(a.get_attr("IFA_ADDRESS"), a["index"]) for a in ipr.get_addr(family=2)]
        addrs = [(a, i) for a, i in addrs if not a.startswith("127.")]
        if dst_ip is not None:
            addrs = [(a, i) for a, i in addrs if a == dst_ip]
        if not addrs:
            raise LoadgenError(f"no IPv4 address {dst_ip or ''} in {dst_ns}".replace("  ", " "))
        dst_ip, dst_idx = addrs[0]
        dst_if = ipr.get_links(dst_idx)[0].get_attr("IFLA_IFNAME")
    with nn.iproute(src_ns) as ipr:
        try:
            r = ipr.route("get", dst=dst_ip)[0]
        except Exception as e:  # noqa: BLE001 - netlink says "network unreachable"
            raise LoadgenError(f"no route from {src_ns} to {dst_ip}: {e}") from None
        oif = r.get_attr("RTA_OIF")
        hop = r.get_attr("RTA_GATEWAY") or dst_ip
        link = ipr.get_links(oif)[0]
        src_if, src_mac, src_mtu = (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_ADDRESS"),
                                    link.get_attr("IFLA_MTU"))
    deadline = time.monotonic() + timeout
    mac = None
    while mac is None:
        nn.run_in_netns(src_ns, ["ping", "-n", "-q", "-c", "1", "-W", "1", dst_ip], timeout=5)
        with nn.iproute(src_ns) as ipr:
            for n in ipr.get_neighbours(ifindex=oif, family=2):
                if n.get_attr("NDA_DST") == hop and n.get_attr("NDA_LLADDR") and \
                        n["state"] not in (0x01, 0x20):   # not INCOMPLETE / FAILED
                    mac = n.get_attr("NDA_LLADDR")
        if mac is None and time.monotonic() > deadline:
            raise LoadgenError(f"cannot resolve next hop {hop} from {src_ns} "
                               f"(no ARP answer; is the path up?)")
    return PathInfo(src_netns=src_ns, src_if=src_if, src_ifindex=oif, src_mac=src_mac,
                    src_mtu=src_mtu, dst_netns=dst_ns, dst_if=dst_if, dst_ifindex=dst_idx,
                    dst_ip=dst_ip, next_hop=hop, next_hop_mac=mac, router_socket=router_socket)


@contextlib.contextmanager
def _blackhole_replies(dst_ns: str) -> Iterator[None]:
    """The destination host must not answer the load (echo replies, TCP resets,
    port unreachables) back through the path: route the flows' sources to a
    blackhole in its namespace while the load runs."""
    added = False
    with nn.iproute(dst_ns) as ipr:
        try:
            ipr.route("add", dst=str(FLOW_SRC_NET), type="blackhole")
            added = True
        except Exception:  # noqa: BLE001 - already there (a run in parallel, or a kept lab)
            pass
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(Exception), nn.iproute(dst_ns) as ipr:
                ipr.route("del", dst=str(FLOW_SRC_NET), type="blackhole")


# --- sender ---------------------------------------------------------------------------------

def _send_loop(sock: socket.socket, bufs: list[bytearray], lens: list[int], flow_of: list[int],
               sched: list[int], patch: Callable[[bytearray, int, int], None], seqs: list[int],
               count: int, rate: float | None, t0: int, deadline: int, sent_val: Any,
               stop_evt: Any) -> dict:
    """Offer frames until ``count`` were offered or ``deadline`` (ns, realtime) passed.

    A frame the source link refuses (ENOBUFS: its queue towards the device under
    test is full) counts as offered and lost -- the kernel counts it as tx_dropped --
    and the sender then yields the CPU for 20 us instead of spinning on a full queue.
    """
    send = sock.send
    tns = time.time_ns
    sleep = time.sleep
    nsched = len(sched)
    j = 0
    sent = 0
    nbytes = 0
    refused = 0
    timeouts = 0
    series: list[int] = []
    burst = 32
    tokens = 0.0
    bucket = max(32.0, (rate or 0) * 0.002)     # a 2 ms burst at most
    last = tns()
    now = last
    while sent < count:
        now = tns()
        if now >= deadline or stop_evt.is_set():
            break
        if rate is not None:
            tokens = min(bucket, tokens + (now - last) * rate * 1e-9)
            last = now
            if tokens < 1.0:
                sleep(min(max((1.0 - tokens) / rate, 100e-6), 0.01))
                continue
            n = min(int(tokens), burst, count - sent)
            tokens -= n
        else:
            n = min(burst, count - sent)
        before = sent
        for _ in range(n):
            t = sched[j]
            j += 1
            if j == nsched:
                j = 0
            buf = bufs[t]
            f = flow_of[t]
            s = seqs[f]
            patch(buf, s, (tns() >> TS_SHIFT) & 0xFFFFFFFF)
            try:
                send(buf)
            except (BlockingIOError, InterruptedError):   # SO_SNDTIMEO: not offered
                timeouts += 1
                break
            except OSError:            # ENOBUFS: the link's queue is full: offered, dropped
                refused += 1
                seqs[f] = s + 1
                sent += 1
                nbytes += lens[t]
                sleep(20e-6)
                break
            seqs[f] = s + 1
            sent += 1
            nbytes += lens[t]
        b = (now - t0) // BUCKET_NS
        if b >= 0:
            while len(series) <= b:
                series.append(0)
            series[b] += sent - before
        sent_val.value = sent
    end = tns()
    return {"sent": sent, "bytes": nbytes, "refused": refused, "timeouts": timeouts,
            "end_ns": end, "series": series}


def _child_signals() -> None:
    """Senders and the receiver are stopped by the parent (events, then SIGTERM);
    Ctrl-C on the terminal reaches them too and is left to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _timer_slack(ns: int) -> None:
    """prctl(PR_SET_TIMERSLACK): short sleeps of the pacing loop end on time."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, ctypes.c_ulong(ns), 0, 0, 0)


def _sender_main(conn: Any, netns: str, ifname: str, bufs: list[bytes], flow_of: list[int],
                 sched: list[int], proto: str, nflows: int, count: int, rate: float | None,
                 duration: float, start_evt: Any, t0_val: Any, sent_val: Any,
                 stop_evt: Any) -> None:
    _child_signals()
    _timer_slack(1000)
    try:
        with nn.enter_netns(netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.bind((ifname, 0))
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 << 20)
        # a kernel-side send timeout, so a stuck link cannot block past the deadline
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 200_000))
        mbufs = [bytearray(b) for b in bufs]
        lens = [len(b) for b in bufs]
        conn.send(("ready", None))
        if not start_evt.wait(30):
            conn.send(("error", "no start signal"))
            return
        t0 = t0_val.value
        delay = (t0 - time.time_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        deadline = t0 + int(duration * 1e9)
        seqs = [0] * nflows
        res = _send_loop(sock, mbufs, lens, flow_of, sched, make_patcher(proto), seqs,
                         count, rate, t0, deadline, sent_val, stop_evt)
        res["per_flow"] = seqs
        sock.close()
        conn.send(("done", res))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


# --- receiver --------------------------------------------------------------------------------

def _bpf(layout: Layout) -> bytes:
    """Classic BPF: our IPv4 frames of this protocol, first fragments only, not
    outgoing; accept at most RING_SNAP bytes."""
    LD_H, LD_B, LD_W = 0x28, 0x30, 0x20          # ld{h,b,w} [k]
    JEQ, JSET, RET = 0x15, 0x45, 0x06
    ins = [
        (LD_W, 0, 0, SKF_AD_PKTTYPE & 0xFFFFFFFF),  # pkttype
        (JEQ, 0, 1, PACKET_OUTGOING), (RET, 0, 0, 0),
        (LD_H, 0, 0, 12), (JEQ, 1, 0, ETH_P_IP), (RET, 0, 0, 0),
        (LD_B, 0, 0, 23), (JEQ, 1, 0, layout.ipproto), (RET, 0, 0, 0),
        (LD_H, 0, 0, 20), (JSET, 0, 1, 0x1FFF), (RET, 0, 0, 0),
        (LD_H, 0, 0, layout.magic_off), (JEQ, 1, 0, MAGIC), (RET, 0, 0, 0),
    ]
    if layout.type_off is not None:
        ins += [(LD_B, 0, 0, layout.type_off), (JEQ, 1, 0, 8), (RET, 0, 0, 0)]
    ins.append((RET, 0, 0, RING_SNAP))
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def _attach_filter(sock: socket.socket, prog: bytes) -> Any:
    n = len(prog) // 8
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HL", n, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    return buf          # keep alive until attached (the kernel copies it)


class _Stats:
    """Receiver-side accounting over chunks of ring records (numpy)."""

    def __init__(self, layout: Layout, nflows: int, t0: int) -> None:
        import numpy as np
        self.np = np
        self.layout = layout
        self.nflows = nflows
        self.t0 = t0
        self.received = np.zeros(nflows, np.int64)
        self.reordered = np.zeros(nflows, np.int64)
        self.carry = np.full(nflows, -1, np.int64)      # highest seq seen per flow
        self.bytes = 0
        self.foreign = 0
        self.series = np.zeros(0, np.int64)
        self.lat: list[Any] = []
        self.nlat = 0
        self.stride = 1
        self.max_units = 0                              # exact, also when subsampled
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        L = layout
        self.dtype = np.dtype({
            "names": ["status", "len", "mac", "sec", "nsec", "flow", "seq", "ts"],
            "formats": ["<u4", "<u4", "<u2", "<u4", "<u4", ">u2", ">u4", ">u4"],
            "offsets": [0, 4, 12, 16, 20, RING_MACOFF + L.flow_off, RING_MACOFF + L.seq_off,
                        RING_MACOFF + L.ts_off],
            "itemsize": REC_LEN})

    def add(self, rec: bytes | bytearray) -> int:
        np = self.np
        a = np.frombuffer(rec, dtype=self.dtype)
        if len(a) == 0:
            return 0
        if (a["mac"] != RING_MACOFF).any():
            raise RuntimeError(f"unexpected tp_mac {a['mac'][0]} (expected {RING_MACOFF})")
        flow = a["flow"].astype(np.int64) - self.layout.flow_base
        ok = (flow >= 0) & (flow < self.nflows)
        if not ok.all():
            self.foreign += int((~ok).sum())
            a, flow = a[ok], flow[ok]
            if len(a) == 0:
                return 0
        seq = a["seq"].astype(np.int64)
        rns = a["sec"].astype(np.int64) * 1_000_000_000 + a["nsec"].astype(np.int64)
        lat = ((rns >> TS_SHIFT) - a["ts"].astype(np.int64)) & 0xFFFFFFFF
        self.bytes += int(a["len"].astype(np.int64).sum())
        self.received += np.bincount(flow, minlength=self.nflows)
        # reordering: below the highest sequence number seen so far in the flow
        present = np.unique(flow)
        allf = np.concatenate((present, flow))
        alls = np.concatenate((self.carry[present] + 1, seq + 1))
        order = np.argsort(allf, kind="stable")
        fo = allf[order]
        key = (fo << 34) | alls[order]
        run = np.maximum.accumulate(key)
        late = np.zeros(len(key), bool)
        late[1:] = key[1:] < run[:-1]
        if late.any():
            self.reordered += np.bincount(fo[late], minlength=self.nflows)
        last = np.searchsorted(fo, present, side="right") - 1
        self.carry[present] = (run[last] & ((1 << 34) - 1)) - 1
        # time series of deliveries
        b = (rns - self.t0) // BUCKET_NS
        b = b[b >= 0]
        if len(b):
            counts = np.bincount(b)
            if len(counts) > len(self.series):
                self.series = np.concatenate((self.series,
                                              np.zeros(len(counts) - len(self.series), np.int64)))
            self.series[:len(counts)] += counts
        lo, hi = int(rns.min()), int(rns.max())
        self.first_ns = lo if self.first_ns is None else min(self.first_ns, lo)
        self.last_ns = hi if self.last_ns is None else max(self.last_ns, hi)
        # latency samples (64 ns units), subsampled past the cap
        self.max_units = max(self.max_units, int(lat.max()))
        lat32 = lat.astype(np.uint32)[::self.stride]
        self.lat.append(lat32)
        self.nlat += len(lat32)
        if self.nlat > LAT_SAMPLE_CAP:
            keep = np.concatenate(self.lat)[::2]
            self.lat, self.nlat, self.stride = [keep], len(keep), self.stride * 2
        return len(a)

    def summary(self) -> dict:
        np = self.np
        out: dict[str, Any] = {
            "per_flow_received": self.received.tolist(),
            "per_flow_reordered": self.reordered.tolist(),
            "bytes": self.bytes, "foreign": self.foreign,
            "series": self.series.tolist(),
            "first_ns": self.first_ns, "last_ns": self.last_ns,
            "latency_stride": self.stride,
        }
        if self.nlat:
            lat_us = np.concatenate(self.lat).astype(np.float64) * (TS_UNIT_NS / 1000.0)
            p50, p90, p99, p999 = np.percentile(lat_us, [50, 90, 99, 99.9])
            out["latency_us"] = {"samples": int(len(lat_us)), "p50": float(p50),
                                 "p90": float(p90), "p99": float(p99), "p999": float(p999),
                                 "max": self.max_units * (TS_UNIT_NS / 1000.0),
                                 "mean": float(lat_us.mean()),
                                 "min": float(lat_us.min())}
            lo = max(float(lat_us.min()), 0.1)
            hi = max(float(lat_us.max()), lo * 1.01)
            edges = np.geomspace(lo, hi, 61)
            counts, _ = np.histogram(np.clip(lat_us, lo, hi), bins=edges)
            out["latency_histogram"] = {"edges_us": [float(x) for x in edges],
                                        "counts": counts.tolist()}
        else:
            out["latency_us"] = {"samples": 0, "p50": None, "p90": None, "p99": None,
                                 "p999": None, "max": None, "mean": None, "min": None}
            out["latency_histogram"] = {"edges_us": [], "counts": []}
        return out


def _receiver_main(conn: Any, netns: str, ifname: str, proto: str, nflows: int, t0_val: Any,
                   recv_val: Any, stop_evt: Any, max_runtime: float) -> None:
    _child_signals()
    try:
        layout = LAYOUTS[proto]
        with nn.enter_netns(netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        keep = _attach_filter(sock, _bpf(layout))
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        nframes = RING_BLOCK // RING_FRAME * RING_BLOCKS
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING,
                        struct.pack("IIII", RING_BLOCK, RING_BLOCKS, RING_FRAME, nframes))
        size = RING_BLOCK * RING_BLOCKS
        mm = mmap.mmap(sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        sock.bind((ifname, ETH_P_IP))
        del keep
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)       # reset the counters
        conn.send(("ready", None))
        while not t0_val.value and not stop_evt.is_set():
            time.sleep(0.001)
        stats = _Stats(layout, nflows, t0_val.value)
        zero4 = bytes(4)
        rec = bytearray()
        nrec = 0
        total = 0
        idx = 0
        end_by = time.monotonic() + max_runtime
        idle_since: float | None = None
        while True:
            off = idx * RING_FRAME
            if mm[off] & TP_STATUS_USER:
                rec += mm[off:off + REC_LEN]
                mm[off:off + 4] = zero4
                idx += 1
                if idx == nframes:
                    idx = 0
                nrec += 1
                if nrec == CHUNK:
                    total += stats.add(rec)
                    rec = bytearray()
                    nrec = 0
                    recv_val.value = total
                continue
            if nrec:
                total += stats.add(rec)
                rec = bytearray()
                nrec = 0
                recv_val.value = total
            now = time.monotonic()
            if now > end_by:
                break
            if stop_evt.is_set():
                # drain: stop after 50 ms without a frame
                if idle_since is None:
                    idle_since = now
                elif now - idle_since > 0.05:
                    break
            else:
                idle_since = None
            # the ring holds 65536 frames and the kernel stamps them: sleeping here
            # costs no accuracy and leaves the CPU to the device under test
            time.sleep(0.002)
        tp_packets, tp_drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        mm.close()
        sock.close()
        out = stats.summary()
        out["socket"] = {"packets": tp_packets, "drops": tp_drops}
        out["received"] = total
        conn.send(("done", out))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


# --- progress -------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on a terminal (nothing when not a TTY)."""

    def __init__(self, label: str, seconds: float, stream: Any = None,
                 enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.seconds = seconds
        self.shown = False

    def update(self, elapsed: float, sent: int, received: int) -> None:
        if not self.enabled:
            return
        frac = min(max(elapsed / self.seconds, 0.0), 1.0) if self.seconds else 1.0
        width = 24
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        rate = sent / elapsed if elapsed > 0 else 0.0
        self.stream.write(f"\r  {self.label} [{bar}] {elapsed:4.1f}/{self.seconds:.1f} s  "
                          f"sent {sent:,} ({rate / 1000:.1f} kpps)  received {received:,}   ")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


# --- a run ------------------------------------------------------------------------------------

def _router_stats(sock: str | None) -> dict | None:
    if not sock:
        return None
    from forwarder.control import Client
    try:
        return Client(sock).call("stats")
    except Exception:  # noqa: BLE001 - the report says "n/a"
        return None


def _router_delta(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    drops = {k: after["drops"][k] - before["drops"].get(k, 0) for k in after["drops"]}
    rx_nobuf = sum(i["rx_nobuf"] for i in after["interfaces"]) - \
        sum(i["rx_nobuf"] for i in before["interfaces"])
    return {"forwarded": after["forwarded"] - before["forwarded"],
            "drops": {k: v for k, v in drops.items() if v},
            "drops_total": sum(drops.values()),
            "rx_nobuf": rx_nobuf}


def _recv_all(conns: list[Any], procs: list[Any], what: str, timeout: float) -> list[Any]:
    out = []
    deadline = time.monotonic() + timeout
    for c, p in zip(conns, procs):
        while not c.poll(0.05):
            if not p.is_alive() and not c.poll(0):
                raise LoadgenError(f"{what} process exited ({p.exitcode}) without a result")
            if time.monotonic() > deadline:
                raise LoadgenError(f"{what} process did not answer within {timeout:.0f} s")
        kind, val = c.recv()
        if kind == "error":
            raise LoadgenError(f"{what} failed: {val}")
        out.append(val)
    return out


def run_load(spec: LoadSpec, path: PathInfo, *, progress: Progress | None = None,
             label: str = "load") -> dict:
    """Run one load from path.src to path.dst; return the result (schema SCHEMA)."""
    spec.check()
    pattern, imix = parse_sizes(spec.sizes)
    mtu_frame = path.src_mtu + 18
    for s in set(pattern):
        if s > mtu_frame:
            raise LoadgenError(f"frame size {s} does not fit {path.src_if}'s MTU "
                               f"{path.src_mtu} (largest: {mtu_frame})")
    # templates: one per (flow, size)
    sizes = sorted(set(pattern))
    tmpl: dict[tuple[int, int], int] = {}
    bufs: list[bytes] = []
    flow_of: list[int] = []
    for f in range(spec.flows):
        for s in sizes:
            raw = build_template(spec.proto, s, f, src_mac=path.src_mac, dst_mac=path.next_hop_mac,
                                 dst_ip=path.dst_ip, src_addrs=spec.src_addrs, ttl=spec.ttl)
            if f < 2:                   # the others differ only in addresses and ports
                verify_template(spec.proto, raw, f)
            tmpl[(f, s)] = len(bufs)
            bufs.append(raw)
            flow_of.append(f)
    procs_n = min(spec.procs, spec.flows)
    count = spec.max_count()
    per_proc_rate = None if spec.rate is None else spec.rate / procs_n
    # schedules: each sender owns the flows f with f % procs_n == p
    scheds: list[list[int]] = []
    for p in range(procs_n):
        mine = [f for f in range(spec.flows) if f % procs_n == p]
        sched = []
        for k in range(len(pattern) * len(mine)):
            f = mine[k % len(mine)]
            s = pattern[(k // len(mine)) % len(pattern)]
            sched.append(tmpl[(f, s)])
        scheds.append(sched)
    counts = [count // procs_n + (1 if p < count % procs_n else 0) for p in range(procs_n)]

    ctx = mp.get_context("fork")
    start_evt, stop_evt, rstop = ctx.Event(), ctx.Event(), ctx.Event()
    t0_val = ctx.Value("q", 0, lock=False)
    sent_vals = [ctx.Value("Q", 0, lock=False) for _ in range(procs_n)]
    recv_val = ctx.Value("Q", 0, lock=False)
    children: list[Any] = []
    before_src = _link_stats(path.src_netns, path.src_ifindex)
    before_dst = _link_stats(path.dst_netns, path.dst_ifindex)
    before_router = _router_stats(path.router_socket)
    try:
        with _blackhole_replies(path.dst_netns):
            rconn, rchild = ctx.Pipe(duplex=False)
            receiver = ctx.Process(target=_receiver_main, name="loadgen-rx", daemon=True,
                                   args=(rchild, path.dst_netns, path.dst_if, spec.proto,
                                         spec.flows, t0_val, recv_val, rstop,
                                         spec.duration + 30))
            receiver.start()
            children.append(receiver)
            rchild.close()
            sconns, senders = [], []
            for p in range(procs_n):
                c, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_sender_main, name=f"loadgen-tx{p}", daemon=True,
                                   args=(child, path.src_netns, path.src_if, bufs, flow_of,
                                         scheds[p], spec.proto, spec.flows, counts[p],
                                         per_proc_rate, spec.duration, start_evt, t0_val,
                                         sent_vals[p], stop_evt))
                proc.start()
                child.close()
                children.append(proc)
                senders.append(proc)
                sconns.append(c)
            _recv_all([rconn], [receiver], "receiver", 10)
            _recv_all(sconns, senders, "sender", 10)
            t0 = time.time_ns() + 20_000_000
            t0_val.value = t0
            start_evt.set()
            hard_end = time.monotonic() + spec.duration + 10
            while any(p.is_alive() for p in senders) and not all(c.poll(0) for c in sconns):
                time.sleep(0.1)
                if progress is not None:
                    el = max(0.0, (time.time_ns() - t0) / 1e9)
                    progress.update(min(el, spec.duration), sum(v.value for v in sent_vals),
                                    recv_val.value)
                if time.monotonic() > hard_end:
                    stop_evt.set()
            results = _recv_all(sconns, senders, "sender", 10)
            time.sleep(0.05)            # frames in flight
            rstop.set()
            rres = _recv_all([rconn], [receiver], "receiver", 15)[0]
            if progress is not None:
                progress.done()
    except BaseException:
        stop_evt.set()
        rstop.set()
        raise
    finally:
        for p in children:
            p.join(2)
            if p.is_alive():
                p.terminate()
                p.join(2)
    after_src = _link_stats(path.src_netns, path.src_ifindex)
    after_dst = _link_stats(path.dst_netns, path.dst_ifindex)
    after_router = _router_stats(path.router_socket)
    return _assemble(spec, path, pattern, imix, t0, results, rres, before_src, after_src,
                     before_dst, after_dst, before_router, after_router)


def _assemble(spec: LoadSpec, path: PathInfo, pattern: list[int], imix: bool, t0: int,
              results: list[dict], rres: dict, bs: dict, as_: dict, bd: dict, ad: dict,
              br: dict | None, ar: dict | None) -> dict:
    sent = sum(r["sent"] for r in results)
    sent_bytes = sum(r["bytes"] for r in results)
    end = max(r["end_ns"] for r in results)
    seconds = max((end - t0) / 1e9, 1e-9)
    per_flow_sent = [0] * spec.flows
    for r in results:
        for f, n in enumerate(r["per_flow"]):
            per_flow_sent[f] += n
    recv_flow = rres["per_flow_received"]
    reord = rres["per_flow_reordered"]
    received = sum(recv_flow)
    flows = [{"flow": f, "sent": per_flow_sent[f], "received": recv_flow[f],
              "lost": max(per_flow_sent[f] - recv_flow[f], 0), "reordered": reord[f]}
             for f in range(spec.flows)]
    lost = sum(x["lost"] for x in flows)
    nb = max(len(rres["series"]), max(len(r["series"]) for r in results))
    offered_series = [0] * nb
    for r in results:
        for i, v in enumerate(r["series"]):
            offered_series[i] += v
    delivered_series = list(rres["series"]) + [0] * (nb - len(rres["series"]))
    per_s = 1e9 / BUCKET_NS

    def d(a: dict, b: dict, k: str) -> int:
        return int(a[k] - b[k])
    return {
        "schema": SCHEMA,
        "spec": {"proto": spec.proto, "sizes": sorted(set(pattern)), "imix": imix,
                 "flows": spec.flows, "rate_pps": spec.rate, "duration_s": spec.duration,
                 "count": spec.max_count(), "procs": min(spec.procs, spec.flows),
                 "src_addrs": spec.src_addrs},
        "path": {"src_netns": path.src_netns, "src_if": path.src_if,
                 "dst_netns": path.dst_netns, "dst_if": path.dst_if, "dst_ip": path.dst_ip,
                 "next_hop": path.next_hop, "next_hop_mac": path.next_hop_mac},
        "sent": {"packets": sent, "bytes": sent_bytes, "seconds": seconds,
                 "pps": sent / seconds, "mbps": sent_bytes * 8 / seconds / 1e6,
                 "refused": sum(r["refused"] for r in results),
                 "timeouts": sum(r["timeouts"] for r in results)},
        "received": {"packets": received, "bytes": rres["bytes"], "seconds": seconds,
                     "pps": received / seconds, "mbps": rres["bytes"] * 8 / seconds / 1e6},
        "loss": {"packets": lost, "ratio": lost / sent if sent else 0.0,
                 "source_link": sum(r["refused"] for r in results),
                 "receiver": int(rres["socket"]["drops"])},
        "reordered": sum(reord),
        "latency_us": rres["latency_us"],
        "latency_histogram": rres["latency_histogram"],
        "flows": flows,
        "kernel": {
            "src": {"tx_packets": d(as_, bs, "tx_packets"), "tx_bytes": d(as_, bs, "tx_bytes"),
                    "tx_dropped": d(as_, bs, "tx_dropped")},
            "dst": {"rx_packets": d(ad, bd, "rx_packets"), "rx_bytes": d(ad, bd, "rx_bytes"),
                    "rx_dropped": d(ad, bd, "rx_dropped")},
            "receiver_socket": rres["socket"],
        },
        "router": _router_delta(br, ar),
        "timeseries": {"interval_s": BUCKET_NS / 1e9,
                       "offered_pps": [v * per_s for v in offered_series],
                       "delivered_pps": [v * per_s for v in delivered_series]},
    }


# --- schema -------------------------------------------------------------------------------

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
RESULT_SCHEMA: dict[str, Any] = {
    "schema": str,
    "spec": {"proto": str, "sizes": list, "imix": bool, "flows": int, "rate_pps": _OPT_NUM,
             "duration_s": _NUM, "count": int, "procs": int, "src_addrs": int},
    "path": {"src_netns": str, "src_if": str, "dst_netns": str, "dst_if": str, "dst_ip": str,
             "next_hop": str, "next_hop_mac": str},
    "sent": {"packets": int, "bytes": int, "seconds": _NUM, "pps": _NUM, "mbps": _NUM,
             "refused": int, "timeouts": int},
    "received": {"packets": int, "bytes": int, "seconds": _NUM, "pps": _NUM, "mbps": _NUM},
    "loss": {"packets": int, "ratio": _NUM, "source_link": int, "receiver": int},
    "reordered": int,
    "latency_us": {"samples": int, "p50": _OPT_NUM, "p90": _OPT_NUM, "p99": _OPT_NUM,
                   "p999": _OPT_NUM, "max": _OPT_NUM, "mean": _OPT_NUM, "min": _OPT_NUM},
    "latency_histogram": {"edges_us": list, "counts": list},
    "flows": [{"flow": int, "sent": int, "received": int, "lost": int, "reordered": int}],
    "kernel": {"src": {"tx_packets": int, "tx_bytes": int, "tx_dropped": int},
               "dst": {"rx_packets": int, "rx_bytes": int, "rx_dropped": int},
               "receiver_socket": {"packets": int, "drops": int}},
    "router": (dict, type(None)),
    "timeseries": {"interval_s": _NUM, "offered_pps": list, "delivered_pps": list},
}


def check_schema(doc: Any, schema: Any = None, where: str = "$") -> list[str]:
    """Problems of ``doc`` against :data:`RESULT_SCHEMA` (empty list: it matches)."""
    schema = RESULT_SCHEMA if schema is None else schema
    problems: list[str] = []
    if isinstance(schema, dict):
        if not isinstance(doc, dict):
            return [f"{where}: expected an object, got {type(doc).__name__}"]
        for k, sub in schema.items():
            if k not in doc:
                problems.append(f"{where}.{k}: missing")
            else:
                problems += check_schema(doc[k], sub, f"{where}.{k}")
        for k in doc:
            if k not in schema:
                problems.append(f"{where}.{k}: unexpected key")
        return problems
    if isinstance(schema, list):
        if not isinstance(doc, list):
            return [f"{where}: expected a list, got {type(doc).__name__}"]
        for i, item in enumerate(doc):
            problems += check_schema(item, schema[0], f"{where}[{i}]")
        return problems
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(doc, bool) and bool not in types:
        return [f"{where}: expected {'/'.join(t.__name__ for t in types)}, got bool"]
    if not isinstance(doc, types):
        return [f"{where}: expected {'/'.join(t.__name__ for t in types)}, "
                f"got {type(doc).__name__}"]
    return []


# --- output ---------------------------------------------------------------------------------

def fmt_rate(pps: float) -> str:
    if pps >= 1e6:
        return f"{pps / 1e6:.2f} Mpps"
    if pps >= 1e3:
        return f"{pps / 1e3:.1f} kpps"
    return f"{pps:.0f} pps"


def _us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.1f} µs"


def format_result(r: dict) -> str:
    s, rc, lat = r["sent"], r["received"], r["latency_us"]
    spec = r["spec"]
    sizes = "imix" if spec["imix"] else ",".join(map(str, spec["sizes"]))
    rate = "flat out" if spec["rate_pps"] is None else f"at {fmt_rate(spec['rate_pps'])}"
    lines = [f"{spec['proto']} {sizes} B, {spec['flows']} flows, {rate}, "
             f"{r['path']['src_netns']} -> {r['path']['dst_ip']} ({r['path']['dst_netns']})",
             f"{'':<14}{'offered':>16}{'delivered':>16}",
             f"{'packets':<14}{s['packets']:>16,}{rc['packets']:>16,}",
             f"{'rate':<14}{fmt_rate(s['pps']):>16}{fmt_rate(rc['pps']):>16}",
             f"{'Mbit/s':<14}{s['mbps']:>16.1f}{rc['mbps']:>16.1f}",
             f"{'loss':<14}{r['loss']['packets']:>16,} ({100 * r['loss']['ratio']:.3f} %; "
             f"{r['loss']['source_link']:,} refused by the full source link queue, "
             f"{r['loss']['receiver']:,} at the receiver)",
             f"{'reordered':<14}{r['reordered']:>16,}",
             f"{'latency':<14}p50 {_us(lat['p50'])}   p99 {_us(lat['p99'])}   "
             f"max {_us(lat['max'])}   ({lat['samples']:,} samples)"]
    k = r["kernel"]
    lines.append(f"{'kernel':<14}src {r['path']['src_if']} tx {k['src']['tx_packets']:,} "
                 f"dropped {k['src']['tx_dropped']:,}; dst {r['path']['dst_if']} rx "
                 f"{k['dst']['rx_packets']:,}; receiver ring drops "
                 f"{k['receiver_socket']['drops']:,}")
    if r.get("router") is not None:
        rt = r["router"]
        drops = ", ".join(f"{n} {v:,}" for n, v in sorted(rt["drops"].items(),
                                                          key=lambda kv: -kv[1])) or "none"
        lines.append(f"{'router':<14}forwarded {rt['forwarded']:,}; drops: {drops}")
    return "\n".join(lines)


def plot_result(r: dict, path: str) -> None:
    """PNG: offered vs delivered rate over time, and the latency distribution."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = r["timeseries"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    n = len(ts["offered_pps"])
    x = [(i + 0.5) * ts["interval_s"] for i in range(n)]
    ax1.plot(x, [v / 1e3 for v in ts["offered_pps"]], label="offered", drawstyle="steps-mid")
    ax1.plot(x, [v / 1e3 for v in ts["delivered_pps"]], label="delivered",
             drawstyle="steps-mid")
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("kpps")
    ax1.set_title("rate over time")
    ax1.grid(alpha=0.3)
    ax1.legend()
    h = r["latency_histogram"]
    if h["counts"]:
        edges = h["edges_us"]
        ax2.stairs(h["counts"], edges, fill=True, alpha=0.6)
        ax2.set_xscale("log")
        lat = r["latency_us"]
        for q in ("p50", "p99"):
            if lat[q] is not None:
                ax2.axvline(lat[q], color="k" if q == "p50" else "r", ls="--",
                            label=f"{q} {_us(lat[q])}")
        ax2.legend()
    ax2.set_xlabel("one-way latency (µs)")
    ax2.set_ylabel("packets")
    ax2.set_title("latency distribution")
    spec = r["spec"]
    sizes = "imix" if spec["imix"] else ",".join(map(str, spec["sizes"]))
    fig.suptitle(f"{spec['proto']} {sizes} B, "
                 f"{spec['flows']} flows: {fmt_rate(r['sent']['pps'])} offered, "
                 f"{fmt_rate(r['received']['pps'])} delivered, "
                 f"loss {100 * r['loss']['ratio']:.2f} %")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- sweep ----------------------------------------------------------------------------------

def sweep(spec: LoadSpec, path: PathInfo, rates: Sequence[float] | None = None, steps: int = 8,
          *, say: Callable[[str], None] = print, progress: bool | None = None) -> dict:
    """Step the offered rate; the saturation point is the highest delivered rate
    reached with loss <= 0.1 %, and the peak is the highest delivered rate."""
    probe = None
    if not rates:
        pspec = LoadSpec(**{**asdict(spec), "rate": None, "count": None,
                            "duration": min(spec.duration, 1.0)})
        probe = run_load(pspec, path)
        peak = probe["received"]["pps"]
        say(f"  probe: flat out {fmt_rate(probe['sent']['pps'])} offered, "
            f"{fmt_rate(peak)} delivered")
        top = max(probe["sent"]["pps"], peak) * 1.25
        rates = [top * (k + 1) / steps for k in range(steps)]
    points = []
    for i, rate in enumerate(rates, 1):
        s = LoadSpec(**{**asdict(spec), "rate": float(rate), "count": None})
        bar = Progress(f"step {i}/{len(rates)}", s.duration, enabled=progress)
        r = run_load(s, path, progress=bar)
        points.append(r)
        say(f"  step {i}/{len(rates)}: offered {fmt_rate(r['sent']['pps']):>11}  delivered "
            f"{fmt_rate(r['received']['pps']):>11}  loss {100 * r['loss']['ratio']:6.2f} %  "
            f"p99 {_us(r['latency_us']['p99'])}")
    ok = [p for p in points if p["loss"]["ratio"] <= 0.001]
    sat = max(ok, key=lambda p: p["received"]["pps"]) if ok else None
    peak = max(points, key=lambda p: p["received"]["pps"])
    return {"schema": SWEEP_SCHEMA, "spec": points[0]["spec"] if points else None,
            "probe": probe, "points": points,
            "saturation_pps": sat["received"]["pps"] if sat else None,
            "peak_pps": peak["received"]["pps"]}


def format_sweep(sw: dict) -> str:
    lines = [f"{'offered':>12}{'delivered':>12}{'loss %':>9}{'p50':>11}{'p99':>11}"]
    for p in sw["points"]:
        lines.append(f"{fmt_rate(p['sent']['pps']):>12}{fmt_rate(p['received']['pps']):>12}"
                     f"{100 * p['loss']['ratio']:>9.2f}{_us(p['latency_us']['p50']):>11}"
                     f"{_us(p['latency_us']['p99']):>11}")
    sat = sw["saturation_pps"]
    lines.append(f"saturation (loss <= 0.1 %): {fmt_rate(sat) if sat else 'not reached'}; "
                 f"peak delivered: {fmt_rate(sw['peak_pps'])}")
    return "\n".join(lines)


def plot_sweep(sw: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    off = [p["sent"]["pps"] / 1e3 for p in sw["points"]]
    dlv = [p["received"]["pps"] / 1e3 for p in sw["points"]]
    loss = [100 * p["loss"]["ratio"] for p in sw["points"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(off, dlv, "o-", label="delivered")
    top = max(off + dlv + [1])
    ax.plot([0, top], [0, top], ":", color="grey", label="delivered = offered")
    if sw["saturation_pps"]:
        ax.axhline(sw["saturation_pps"] / 1e3, color="g", ls="--",
                   label=f"saturation {fmt_rate(sw['saturation_pps'])}")
    ax.set_xlabel("offered (kpps)")
    ax.set_ylabel("delivered (kpps)")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(off, loss, "s--", color="r", label="loss %")
    ax2.set_ylabel("loss (%)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left")
    spec = sw["spec"] or {}
    sizes = "imix" if spec.get("imix") else ",".join(map(str, spec.get("sizes") or []))
    ax.set_title(f"rate sweep: {spec.get('proto')} {sizes} B, "
                 f"{spec.get('flows')} flows")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_json(doc: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


# --- command ----------------------------------------------------------------------------------

def add_load_arguments(p: argparse.ArgumentParser, *, duration: float = 5.0) -> None:
    g = p.add_argument_group("load")
    g.add_argument("-P", "--proto", choices=PROTOCOLS, default="udp", help="default: udp")
    g.add_argument("-s", "--size", default="64", metavar="N[,N..]|imix",
                   help="frame size(s) in bytes with FCS (64..1518), or imix; default 64")
    g.add_argument("-f", "--flows", type=int, default=8, help="flows (default 8)")
    g.add_argument("-r", "--rate", type=float, default=None, metavar="PPS",
                   help="offered packets/s (token bucket); default: flat out")
    g.add_argument("-d", "--duration", type=float, default=duration, metavar="S",
                   help=f"seconds (default {duration:g}; at most {MAX_DURATION:.0f})")
    g.add_argument("-n", "--count", type=int, default=None,
                   help="packets at most (the duration still bounds the run)")
    g.add_argument("--procs", type=int, default=1, help="sender processes (default 1)")
    g.add_argument("--src-addrs", type=int, default=1,
                   help="distinct source addresses the flows use (default 1)")


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    s = LoadSpec(proto=args.proto, sizes=args.size, flows=args.flows, rate=args.rate,
                 duration=args.duration, count=args.count, procs=args.procs,
                 src_addrs=args.src_addrs)
    s.check()
    return s


def cmd_loadgen(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
    except LoadgenError as e:
        print(f"forwarder loadgen: {e}", file=sys.stderr)
        return 2
    if bool(args.src) != bool(args.dst):
        print("forwarder loadgen: give both --src and --dst (or neither: a lab is built)",
              file=sys.stderr)
        return 2
    sweep_rates = None
    if args.sweep_rates:
        try:
            sweep_rates = [float(x) for x in args.sweep_rates.split(",") if x]
        except ValueError:
            print("forwarder loadgen: --sweep-rates wants PPS,PPS,...", file=sys.stderr)
            return 2
    say = (lambda *_: None) if args.quiet else (lambda m: print(m, flush=True))
    from forwarder.lab import cleanup_signals, lab_up
    try:
        with cleanup_signals():
            if args.src:
                path = resolve_path(args.src, args.dst, args.dst_ip,
                                    router_socket=args.router_socket)
                return _loadgen_on(spec, path, args, sweep_rates, say)
            with lab_up(args.config, say=say) as lab:
                src, dst = lab.host(args.src_host), lab.host(args.dst_host)
                path = resolve_path(src.netns, dst.netns, str(dst.address.ip),
                                    router_socket=str(lab.socket))
                return _loadgen_on(spec, path, args, sweep_rates, say)
    except KeyboardInterrupt:
        print("\nforwarder loadgen: interrupted", file=sys.stderr)
        return 130
    except LoadgenError as e:
        print(f"forwarder loadgen: {e}", file=sys.stderr)
        return 1
    except KeyError as e:
        print(f"forwarder loadgen: no lab host {e}", file=sys.stderr)
        return 2


def _loadgen_on(spec: LoadSpec, path: PathInfo, args: argparse.Namespace,
                sweep_rates: list[float] | None, say: Callable[[str], None]) -> int:
    if args.sweep or sweep_rates:
        say(f"rate sweep {path.src_netns} -> {path.dst_ip}: {spec.proto} {spec.sizes} B, "
            f"{spec.flows} flows, {spec.duration:g} s per step")
        sw = sweep(spec, path, sweep_rates, steps=args.sweep or 8, say=say)
        print(format_sweep(sw))
        if args.json:
            write_json(sw, args.json)
            say(f"JSON: {args.json}")
        if args.plot:
            plot_sweep(sw, args.plot)
            say(f"plot: {args.plot}")
        return 0
    bar = None if args.quiet else Progress("load", spec.duration)
    r = run_load(spec, path, progress=bar)
    print(format_result(r))
    if args.json:
        write_json(r, args.json)
        say(f"JSON: {args.json}")
    if args.plot:
        plot_result(r, args.plot)
        say(f"plot: {args.plot}")
    return 0


def add_parser(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "loadgen", help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send scapy-built frames from one lab namespace to another and measure "
                    "loss, reordering and latency.\n\nWithout --src/--dst a lab is built from "
                    "configs/lab.toml (as `forwarder lab` does), the load runs from --from to "
                    "--to, and the lab is removed again.  With --src/--dst it runs between "
                    "namespaces of a lab that is already up (`forwarder lab --keep`).")
    w = p.add_argument_group("where")
    w.add_argument("--src", metavar="NETNS", help="source namespace (of a running lab)")
    w.add_argument("--dst", metavar="NETNS", help="destination namespace")
    w.add_argument("--dst-ip", help="destination address (default: the first in --dst)")
    w.add_argument("--router-socket", metavar="PATH",
                   help="a router's control socket: report its drop counters")
    w.add_argument("-c", "--config", help="lab config when building a lab (default: lab.toml)")
    w.add_argument("--from", dest="src_host", default="h1", help="lab host sending (default h1)")
    w.add_argument("--to", dest="dst_host", default="h2", help="lab host receiving (default h2)")
    add_load_arguments(p)
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write the result as JSON")
    o.add_argument("--plot", metavar="FILE", help="write a PNG plot")
    o.add_argument("--sweep", nargs="?", type=int, const=8, default=0, metavar="STEPS",
                   help="rate sweep: probe flat out, then STEPS rates up to 125 %% of it")
    o.add_argument("--sweep-rates", metavar="PPS,PPS,..", help="rate sweep over these rates")
    o.add_argument("-q", "--quiet", action="store_true", help="only the result")
    p.set_defaults(func=cmd_loadgen)
    return p
