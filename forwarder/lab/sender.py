"""The senders: processes in the source host's namespace that offer the load.

Each writes the frame templates as bytes to one reused AF_PACKET socket
(PACKET_QDISC_BYPASS), patching in per packet only the sequence number and the
timestamp (:func:`forwarder.lab.frames.make_patcher`).  A token bucket paces
them, or they go flat out; every sender stops at its packet count *or* its
deadline, whichever comes first, and a kernel-side send timeout keeps a stuck
link from holding it past the deadline.  Results go back to the parent through
a pipe; the parent starts them all at one instant (an event and a shared t0).
"""
from __future__ import annotations

import contextlib
import ctypes
import socket
import struct
import time
import traceback
from typing import Any, Callable

from forwarder import netns as nn
from forwarder.lab.frames import make_patcher
from forwarder.lab.signals import child_signals
from forwarder.lab.spec import BUCKET_NS, TS_SHIFT

SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
SO_SNDBUFFORCE = 32


def send_loop(sock: socket.socket, bufs: list[bytearray], lens: list[int], flow_of: list[int],
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


def _timer_slack(ns: int) -> None:
    """prctl(PR_SET_TIMERSLACK): short sleeps of the pacing loop end on time."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, ctypes.c_ulong(ns), 0, 0, 0)


def sender_main(conn: Any, netns: str, ifname: str, bufs: list[bytes], flow_of: list[int],
                sched: list[int], proto: str, nflows: int, count: int, rate: float | None,
                duration: float, start_evt: Any, t0_val: Any, sent_val: Any,
                stop_evt: Any, family: int = 4) -> None:
    """A sender process: ready, wait for the start, offer the load, report."""
    child_signals()
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
        res = send_loop(sock, mbufs, lens, flow_of, sched, make_patcher(proto, family), seqs,
                        count, rate, t0, deadline, sent_val, stop_evt)
        res["per_flow"] = seqs
        sock.close()
        conn.send(("done", res))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))

