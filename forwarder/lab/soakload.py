"""The soak's mixed load: IPv4 and IPv6 streams at once, run in segments.

A :class:`Stream` is one family's load over one lab path: UDP frames of several
sizes (64 B or, for IPv6, 78 B up to 1500 B, FCS included as RFC 2544 counts
them) for a few hundred flows, each flow from its own source address.  Its
templates are built and checked with scapy once (:mod:`forwarder.lab.frames`),
for the whole soak; the schedule interleaves flows and sizes as
:func:`forwarder.lab.run.run_load` does.

:func:`run_segment` offers every stream's load for one sample interval, with
the lab's own sender and receiver processes (:mod:`forwarder.lab.sender`,
:mod:`forwarder.lab.receiver`): one sender in the source host and one receiver
in the destination host per stream, all started at one instant.  Each segment
numbers its packets from 0 in every flow, so at its end the loss is exact:
per flow, the packets sent minus those the receiver counted by sequence number,
with no in-flight packets or counter skew at the boundary to blur it.  The
price is a pause between segments (frames in flight land, the children report,
new ones fork: 0.4-1.3 s on a busy 2-core machine) that carries no load.  The receiver also dates
each loss (:class:`GapStats`: a gap in a flow's sequence numbers, dated by the
sender's timestamp in the packet after it) to 100 ms, so that a loss can be
told apart from a reload a few seconds before or after it in the same interval.

While a segment runs, ``tick()`` is called every 50 ms in the parent: the soak
does its neighbour churn, tunable changes and reloads from there.  Every
segment is bounded in packets and in time however the children behave, and its
children are reaped before it returns.
"""
from __future__ import annotations

import mmap
import multiprocessing as mp
import socket
import struct
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from forwarder import netns as nn
from forwarder.lab import receiver as rx
from forwarder.lab.frames import build_template, verify_template
from forwarder.lab.path import PathInfo
from forwarder.lab.run import reap, recv_results
from forwarder.lab.sender import sender_main
from forwarder.lab.signals import child_signals
from forwarder.lab.spec import BUCKET_NS, TS_SHIFT, LoadgenError, layout, parse_sizes

SIZES = {4: (64, 128, 256, 512, 1024, 1500), 6: (78, 128, 256, 512, 1024, 1500)}
PROTO = "udp"


@dataclass
class Stream:
    """One family's load over ``path``; templates built by :meth:`build`."""
    path: PathInfo
    flows: int = 128
    sizes: tuple[int, ...] = ()
    bufs: list[bytes] = field(default_factory=list, repr=False)
    flow_of: list[int] = field(default_factory=list, repr=False)
    sched: list[int] = field(default_factory=list, repr=False)

    @property
    def family(self) -> int:
        return self.path.family

    def build(self) -> "Stream":
        """The templates, one per (flow, size), and the schedule over them."""
        sizes = tuple(self.sizes or SIZES[self.family])
        parse_sizes(list(sizes), self.family)              # raises on a bad size
        if max(sizes) > self.path.src_mtu + 18:
            raise LoadgenError(f"frame size {max(sizes)} does not fit MTU {self.path.src_mtu}")
        self.sizes = sizes
        index: dict[tuple[int, int], int] = {}
        for f in range(self.flows):
            for s in sizes:
                raw = build_template(PROTO, s, f, src_mac=self.path.src_mac,
                                     dst_mac=self.path.next_hop_mac, dst_ip=self.path.dst_ip,
                                     src_addrs=self.flows, family=self.family)
                if f < 2:
                    verify_template(PROTO, raw, f, self.family)
                index[(f, s)] = len(self.bufs)
                self.bufs.append(raw)
                self.flow_of.append(f)
        self.sched = [index[(k % self.flows, sizes[(k // self.flows) % len(sizes)])]
                      for k in range(self.flows * len(sizes))]
        return self


@dataclass
class StreamResult:
    """One stream's counts over one segment."""
    family: int
    sent: int
    received: int
    lost: int
    refused: int            # ENOBUFS on the source link (counted in sent and lost)
    receiver_drops: int     # the receiver's ring had no room (counted in lost)
    loss_series: list[int] = field(default_factory=list)   # lost per 100 ms of sending

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "received": self.received, "lost": self.lost,
                "refused": self.refused, "receiver_drops": self.receiver_drops}


@dataclass
class Segment:
    """A segment's wall-clock span (time.time(), seconds) and each stream's counts."""
    start: float
    end: float
    streams: list[StreamResult]

    @property
    def sent(self) -> int:
        return sum(s.sent for s in self.streams)

    @property
    def received(self) -> int:
        return sum(s.received for s in self.streams)

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.streams)

    def loss_at(self) -> list[tuple[float, int]]:
        """When the segment's packets were lost: (seconds since its start, a
        100 ms bucket, packets); what no gap dated (the flows' last packets)
        at its end."""
        per: dict[int, int] = {}
        for st in self.streams:
            for b, n in enumerate(st.loss_series):
                if n:
                    per[b] = per.get(b, 0) + n
        out = [(round(b * BUCKET_NS / 1e9, 1), n) for b, n in sorted(per.items())]
        undated = self.lost - sum(per.values())
        if undated > 0:
            out.append((round(self.end - self.start, 1), undated))
        return out


class GapStats(rx.Stats):
    """The receiver's accounting, and when each loss happened.

    Per flow, packets arrive in sequence (one path, one queue); a gap between
    two sequence numbers received one after the other is that many packets
    lost, sent just before the one after the gap: its timestamp (the sender's
    clock, 64 ns units, 32 bits) dates them, to within the flow's packet
    spacing (a few ms).  Losses are summed per 100 ms of sending time since
    the segment's start.  Packets lost at the very end of a flow leave no gap;
    the parent dates those to the segment's end."""

    def __init__(self, layout: Any, nflows: int, t0: int) -> None:
        super().__init__(layout, nflows, t0)
        self.top = np.full(nflows, -1, np.int64)        # highest seq seen per flow
        self.t0u = (t0 >> TS_SHIFT) & 0xFFFFFFFF
        self.loss = np.zeros(0, np.int64)

    def add(self, rec: bytes | bytearray) -> int:
        a = np.frombuffer(rec, dtype=self.dtype)
        flow = a["flow"].astype(np.int64) - self.layout.flow_base
        ok = (flow >= 0) & (flow < self.nflows)
        if ok.any():
            a, flow = a[ok], flow[ok]
            order = np.argsort(flow, kind="stable")
            f = flow[order]
            q = a["seq"].astype(np.int64)[order]
            ts = a["ts"].astype(np.int64)[order]
            start = np.ones(len(f), bool)
            start[1:] = f[1:] != f[:-1]
            prev = np.empty_like(q)
            prev[1:] = q[:-1]
            prev[start] = self.top[f[start]]
            gap = q - prev - 1
            hit = gap > 0
            if hit.any():
                b = (((ts[hit] - self.t0u) & 0xFFFFFFFF) << TS_SHIFT) // BUCKET_NS
                if b.max() >= len(self.loss):
                    self.loss = np.concatenate((self.loss, np.zeros(int(b.max()) + 1 -
                                                                    len(self.loss), np.int64)))
                np.add.at(self.loss, b, gap[hit])
            heads = np.flatnonzero(start)
            self.top[f[heads]] = np.maximum(self.top[f[heads]], np.maximum.reduceat(q, heads))
        return super().add(rec)

    def summary(self) -> dict:
        out = super().summary()
        out["loss_series"] = self.loss.tolist()
        return out


def receiver_main(conn: Any, netns: str, ifname: str, nflows: int, t0_val: Any,
                  stop_evt: Any, max_runtime: float, family: int) -> None:
    """:func:`forwarder.lab.receiver.receiver_main`'s ring and filter, with
    :class:`GapStats`; the soak's own receiver process."""
    child_signals()
    try:
        L = layout(PROTO, family)
        with nn.enter_netns(netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        keep = rx.attach_filter(sock, rx.bpf_program(L))
        sock.setsockopt(rx.SOL_PACKET, rx.PACKET_VERSION, rx.TPACKET_V2)
        nframes = rx.RING_BLOCK // rx.RING_FRAME * rx.RING_BLOCKS
        sock.setsockopt(rx.SOL_PACKET, rx.PACKET_RX_RING,
                        struct.pack("IIII", rx.RING_BLOCK, rx.RING_BLOCKS, rx.RING_FRAME, nframes))
        mm = mmap.mmap(sock.fileno(), rx.RING_BLOCK * rx.RING_BLOCKS, mmap.MAP_SHARED,
                       mmap.PROT_READ | mmap.PROT_WRITE)
        sock.bind((ifname, L.ethertype))
        del keep
        sock.getsockopt(rx.SOL_PACKET, rx.PACKET_STATISTICS, 8)      # reset the counters
        conn.send(("ready", None))
        while not t0_val.value and not stop_evt.is_set():
            time.sleep(0.001)
        stats = GapStats(L, nflows, t0_val.value)
        rec, nrec, idx = bytearray(), 0, 0
        end_by = time.monotonic() + max_runtime
        idle_since: float | None = None
        while True:
            off = idx * rx.RING_FRAME
            if mm[off] & rx.TP_STATUS_USER:
                rec += mm[off:off + rx.REC_LEN]
                mm[off:off + 4] = bytes(4)
                idx = (idx + 1) % nframes
                nrec += 1
                if nrec == rx.CHUNK:
                    stats.add(rec)
                    rec, nrec = bytearray(), 0
                continue
            if nrec:
                stats.add(rec)
                rec, nrec = bytearray(), 0
            now = time.monotonic()
            if now > end_by:
                break
            if stop_evt.is_set():               # drain: stop after 50 ms without a frame
                idle_since = idle_since or now
                if now - idle_since > 0.05:
                    break
            else:
                idle_since = None
            time.sleep(0.002)
        _, drops = struct.unpack("II", sock.getsockopt(rx.SOL_PACKET, rx.PACKET_STATISTICS, 8))
        mm.close()
        sock.close()
        out = stats.summary()
        out["socket"] = {"drops": drops}
        conn.send(("done", out))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def run_segment(streams: list[Stream], rate: float | None, duration: float,
                tick: Callable[[], None] = lambda: None,
                drained: Callable[[], None] = lambda: time.sleep(0.05)) -> Segment:
    """Offer every stream's load for ``duration`` seconds (``rate`` packets/s in
    all, shared equally; None: flat out) and count what arrived.  Once the
    senders are done, ``drained()`` returns when nothing is in flight any more
    (default: 50 ms); then the receivers stop, after 50 ms without a frame."""
    ctx = mp.get_context("fork")
    start_evt, stop_evt, rstop = ctx.Event(), ctx.Event(), ctx.Event()
    t0_val = ctx.Value("q", 0, lock=False)
    share = None if rate is None else rate / len(streams)
    children: list[Any] = []
    rx: list[tuple[Any, Any]] = []
    tx: list[tuple[Any, Any]] = []
    try:
        for i, st in enumerate(streams):
            p = st.path
            rc, rchild = ctx.Pipe(duplex=False)
            recv = ctx.Process(target=receiver_main, name=f"soak-rx{i}", daemon=True,
                               args=(rchild, p.dst_netns, p.dst_if, st.flows, t0_val, rstop,
                                     duration + 30, st.family))
            recv.start()
            rchild.close()
            children.append(recv)
            rx.append((rc, recv))
        for i, st in enumerate(streams):
            p = st.path
            count = int(share * duration) + 1 if share else 10_000_000 * max(1, int(duration))
            sc, schild = ctx.Pipe(duplex=False)
            send = ctx.Process(target=sender_main, name=f"soak-tx{i}", daemon=True,
                               args=(schild, p.src_netns, p.src_if, st.bufs, st.flow_of,
                                     st.sched, PROTO, st.flows, count, share, duration,
                                     start_evt, t0_val, ctx.Value("Q", 0, lock=False),
                                     stop_evt, st.family))
            send.start()
            schild.close()
            children.append(send)
            tx.append((sc, send))
        recv_results([c for c, _ in rx + tx], [p for _, p in rx + tx], "soak load process", 15)
        t0 = time.time_ns() + 20_000_000
        t0_val.value = t0
        start_evt.set()
        hard_end = time.monotonic() + duration + 10
        while not all(c.poll(0) for c, _ in tx):
            if not any(proc.is_alive() for _, proc in tx):
                break
            tick()
            if time.monotonic() > hard_end:
                stop_evt.set()
            time.sleep(0.05)
        sent = recv_results([c for c, _ in tx], [p for _, p in tx], "sender", 10)
        end = max(r["end_ns"] for r in sent)
        drained()
        rstop.set()
        got = recv_results([c for c, _ in rx], [p for _, p in rx], "receiver", 15)
    except BaseException:
        stop_evt.set()
        rstop.set()
        raise
    finally:
        reap(children)
    results = []
    for st, s, r in zip(streams, sent, got):
        lost = sum(max(a - b, 0) for a, b in zip(s["per_flow"], r["per_flow_received"]))
        results.append(StreamResult(family=st.family, sent=s["sent"],
                                    received=sum(r["per_flow_received"]), lost=lost,
                                    refused=s["refused"],
                                    receiver_drops=int(r["socket"]["drops"]),
                                    loss_series=r["loss_series"]))
    return Segment(start=t0 / 1e9, end=end / 1e9, streams=results)
