"""The receiver: a process in the destination host's namespace that counts the load.

It reads a TPACKET_V2 PACKET_RX_RING behind a classic BPF filter (IPv4 or IPv6,
the protocol, the magic word, IPv4 first fragments, not outgoing; at most 128
bytes copied per frame).  The kernel stamps each frame as it reaches the socket, so
latency = ring timestamp - sender timestamp does not include the receiver's own
lag.  Frames are handled in chunks with numpy (:class:`Stats`): per-flow counts,
reordering (a packet whose sequence number is below the highest already seen in
its flow), latency samples and deliveries per 100 ms.  The socket's
PACKET_STATISTICS tell how many frames the ring had no room for.
"""
from __future__ import annotations

import ctypes
import mmap
import socket
import struct
import time
import traceback
from typing import Any

import numpy as np

from forwarder import netns as nn
from forwarder.lab.signals import child_signals
from forwarder.lab.spec import BUCKET_NS, MAGIC, TS_SHIFT, TS_UNIT_NS, Layout, layout

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V2 = 1
TP_STATUS_USER = 1
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
SKF_AD_PKTTYPE = -0x1000 + 4

# The ring: TPACKET_V2 frames of 256 bytes, 16 blocks of 1 MiB (65536 frames).
RING_FRAME = 256
RING_BLOCK = 1 << 20
RING_BLOCKS = 16
RING_SNAP = 128
RING_MACOFF = 66       # TPACKET_ALIGN(TPACKET2_HDRLEN + 16) - ETH_HLEN for SOCK_RAW
REC_LEN = RING_MACOFF + 74   # what is copied per frame: tpacket2_hdr .. end of our fields (IPv6)
CHUNK = 16384                # frames per numpy chunk
LAT_SAMPLE_CAP = 16_000_000  # latency samples kept (uint32, 64 MB); beyond: subsampled


def bpf_program(L: Layout) -> bytes:
    """Classic BPF: our frames of this protocol and family, IPv4 first fragments
    only (an IPv6 fragment's next header is 44: it fails the protocol test), not
    outgoing; accept at most RING_SNAP bytes."""
    LD_H, LD_B, LD_W = 0x28, 0x30, 0x20          # ld{h,b,w} [k]
    JEQ, JSET, RET = 0x15, 0x45, 0x06
    ins = [
        (LD_W, 0, 0, SKF_AD_PKTTYPE & 0xFFFFFFFF),  # pkttype
        (JEQ, 0, 1, PACKET_OUTGOING), (RET, 0, 0, 0),
        (LD_H, 0, 0, 12), (JEQ, 1, 0, L.ethertype), (RET, 0, 0, 0),
        (LD_B, 0, 0, L.proto_off), (JEQ, 1, 0, L.ipproto), (RET, 0, 0, 0),
    ]
    if L.family == 4:
        ins += [(LD_H, 0, 0, 20), (JSET, 0, 1, 0x1FFF), (RET, 0, 0, 0)]
    ins += [(LD_H, 0, 0, L.magic_off), (JEQ, 1, 0, MAGIC), (RET, 0, 0, 0)]
    if L.type_off is not None:
        ins += [(LD_B, 0, 0, L.type_off), (JEQ, 1, 0, L.echo_type), (RET, 0, 0, 0)]
    ins.append((RET, 0, 0, RING_SNAP))
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def attach_filter(sock: socket.socket, prog: bytes) -> Any:
    """SO_ATTACH_FILTER ``prog``; the buffer returned must live until then."""
    n = len(prog) // 8
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HL", n, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    return buf          # keep alive until attached (the kernel copies it)


class Stats:
    """Receiver-side accounting over chunks of ring records (numpy)."""

    def __init__(self, layout: Layout, nflows: int, t0: int) -> None:
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


def receiver_main(conn: Any, netns: str, ifname: str, proto: str, nflows: int, t0_val: Any,
                  recv_val: Any, stop_evt: Any, max_runtime: float, family: int = 4) -> None:
    """The receiver process: ready, count until stopped (or ``max_runtime``), report."""
    child_signals()
    try:
        L = layout(proto, family)
        with nn.enter_netns(netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        keep = attach_filter(sock, bpf_program(L))
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        nframes = RING_BLOCK // RING_FRAME * RING_BLOCKS
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING,
                        struct.pack("IIII", RING_BLOCK, RING_BLOCKS, RING_FRAME, nframes))
        size = RING_BLOCK * RING_BLOCKS
        mm = mmap.mmap(sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        sock.bind((ifname, L.ethertype))
        del keep
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)       # reset the counters
        conn.send(("ready", None))
        while not t0_val.value and not stop_evt.is_set():
            time.sleep(0.001)
        stats = Stats(L, nflows, t0_val.value)
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

