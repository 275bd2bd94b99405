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
price is a short pause between segments (the children report, new ones fork:
about 0.1-0.3 s of every interval carries no load), and a loss is located only
to its interval -- which is what the soak samples anyway.

While a segment runs, ``tick()`` is called every 50 ms in the parent: the soak
does its neighbour churn, tunable changes and reloads from there.  Every
segment is bounded in packets and in time however the children behave, and its
children are reaped before it returns.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from forwarder.lab.frames import build_template, verify_template
from forwarder.lab.path import PathInfo
from forwarder.lab.receiver import receiver_main
from forwarder.lab.sender import sender_main
from forwarder.lab.spec import LoadgenError, parse_sizes

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


def _collect(conn: Any, proc: Any, what: str, deadline: float) -> Any:
    while not conn.poll(0.05):
        if not proc.is_alive() and not conn.poll(0):
            raise LoadgenError(f"{what} exited ({proc.exitcode}) without a result")
        if time.monotonic() > deadline:
            raise LoadgenError(f"{what} did not answer in time")
    kind, val = conn.recv()
    if kind == "error":
        raise LoadgenError(f"{what} failed: {val}")
    return val


def run_segment(streams: list[Stream], rate: float | None, duration: float,
                tick: Callable[[], None] = lambda: None) -> Segment:
    """Offer every stream's load for ``duration`` seconds (``rate`` packets/s in
    all, shared equally; None: flat out) and count what arrived."""
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
                               args=(rchild, p.dst_netns, p.dst_if, PROTO, st.flows, t0_val,
                                     ctx.Value("Q", 0, lock=False), rstop, duration + 30,
                                     st.family))
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
        ready_by = time.monotonic() + 15
        for c, proc in rx + tx:
            _collect(c, proc, proc.name, ready_by)
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
        by = time.monotonic() + 10
        sent = [_collect(c, proc, proc.name, by) for c, proc in tx]
        end = max(r["end_ns"] for r in sent)
        time.sleep(0.05)                    # frames in flight
        rstop.set()
        by = time.monotonic() + 15
        got = [_collect(c, proc, proc.name, by) for c, proc in rx]
    except BaseException:
        stop_evt.set()
        rstop.set()
        raise
    finally:
        for proc in children:
            proc.join(2)
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
    results = []
    for st, s, r in zip(streams, sent, got):
        lost = sum(max(a - b, 0) for a, b in zip(s["per_flow"], r["per_flow_received"]))
        results.append(StreamResult(family=st.family, sent=s["sent"],
                                    received=sum(r["per_flow_received"]), lost=lost,
                                    refused=s["refused"],
                                    receiver_drops=int(r["socket"]["drops"])))
    return Segment(start=t0 / 1e9, end=end / 1e9, streams=results)
