"""Packet capture: `forwarder capture IF|drops [-w FILE|-] [-n N] [--filter EXPR]`.

The dataplane copies what is captured into a lock-free ring
(net/dp_capture.pxi).  The control socket's `capture` command turns its
connection into a stream: one JSON line (the capture's parameters), then
chunks of raw records, each chunk a 4-byte big-endian length and that many
bytes, then a zero length and a JSON line with the totals:

    -> {"version": 1, "command": "capture", "args": {"interface": "tap1", "count": 100}}
    <- {"version": 1, "ok": true, "result": {"interfaces": [...], "snaplen": 262144, ...}}
    <- [len][records] [len][records] ... [0]
    <- {"captured": 100, "lost": 0, "filtered": 3, "ended": "count"}

A record is the dataplane's struct dp_cap_hdr (native byte order: the
client runs on the same machine) and the frame's bytes.  The router reads
the ring every few milliseconds in the connection's own thread and never
waits for the dataplane; if the client reads slowly the ring fills and the
dataplane counts what it could not keep ("lost"), which the client reports
at the end.  Everything is bounded: a count, a timeout, and the client
going away all end the capture, which disarms the dataplane.

The client side writes pcap, pcapng (forwarder/pcap.py) or, without -w, a
line per packet (forwarder/trace.py's summary).  One capture runs at a time.
"""
from __future__ import annotations

import json
import select
import socket
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator

from forwarder.dataplane import (CAPTURE_DROP, CAPTURE_HEADER, CAPTURE_IN, CAPTURE_OUT,
                                 CAPTURE_SNAPLEN, DROP_REASONS)

if TYPE_CHECKING:
    from forwarder.router import Router

DEFAULT_COUNT = 1000
DEFAULT_TIMEOUT = 60.0
MAX_COUNT = 10_000_000
MAX_TIMEOUT = 3600.0
POLL = 0.005                        # seconds between reads of the ring
_HDR = struct.Struct("=qIIIhBBHHI")     # struct dp_cap_hdr
assert _HDR.size == CAPTURE_HEADER
_DROPS = list(DROP_REASONS)
DIRECTIONS = {"in": (True, False), "out": (False, True), "inout": (True, True)}


@dataclass(frozen=True)
class Record:
    time_ns: int                    # CLOCK_MONOTONIC, as the dataplane read it
    ifindex: int
    direction: int                  # CAPTURE_IN, CAPTURE_OUT, CAPTURE_DROP
    reason: int                     # CAPTURE_DROP: the drop reason's index
    synth: bool                     # a drop whose Ethernet header was rebuilt
    origlen: int
    data: bytes

    @property
    def reason_name(self) -> str:
        return _DROPS[self.reason] if self.reason < len(_DROPS) else f"reason {self.reason}"


def parse(buf: bytes) -> Iterator[Record]:
    """The records of a chunk."""
    off = 0
    while off + _HDR.size <= len(buf):
        t, reclen, caplen, origlen, ifindex, direction, synth, reason, _, _ = \
            _HDR.unpack_from(buf, off)
        if reclen < _HDR.size or off + reclen > len(buf):
            raise ValueError(f"capture stream: bad record at {off} (length {reclen})")
        yield Record(t, ifindex, direction, reason, bool(synth), origlen,
                     buf[off + _HDR.size:off + _HDR.size + caplen])
        off += reclen


def _record_ends(buf: bytes, limit: int) -> tuple[int, int]:
    """(bytes, records) of buf's first min(limit, all) records."""
    off = n = 0
    while n < limit and off + _HDR.size <= len(buf):
        off += _HDR.unpack_from(buf, off)[1]
        n += 1
    return off, n


# --- the router's side ------------------------------------------------------------------

class CaptureStream:
    """What the `capture` command returns: the control server sends
    ``header`` as the reply, then calls ``run`` with the connection."""

    def __init__(self, router: "Router", interface: str | None, drops: bool, count: int,
                 timeout: float, direction: str, snaplen: int, program: bytes | None) -> None:
        self.router, self.count, self.timeout = router, count, timeout
        rx, tx = DIRECTIONS[direction]
        ifindex = router.ifindex[interface] if interface else -1
        router.dp.capture_start(ifindex, drops, rx, tx, snaplen, program)
        self.header = {"interface": interface, "drops": drops, "count": count,
                       "timeout": timeout, "direction": direction, "snaplen": snaplen,
                       "interfaces": router.dp.ifnames(),
                       "clock_offset_ns": time.time_ns() - time.monotonic_ns()}

    def close(self) -> None:
        """Disarm without streaming (the reply could not be sent)."""
        self.router.dp.capture_stop()

    def run(self, conn: socket.socket) -> None:
        dp = self.router.dp
        sent, ended = 0, "timeout"
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                data = dp.capture_read()
                if data:
                    end, n = _record_ends(data, self.count - sent)
                    conn.sendall(struct.pack("!I", end) + data[:end])
                    sent += n
                if sent >= self.count:
                    ended = "count"
                    break
                if not self.router.running:
                    ended = "router stopping"
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                r, _, _ = select.select([conn], [], [], min(POLL, left))
                if r and not conn.recv(1, socket.MSG_PEEK):
                    ended = "client"            # the client went away (Ctrl-C, a closed pipe)
                    break
        except OSError:
            ended = "client"
        finally:
            totals = dp.capture_stop()
        summary = {"captured": sent, "lost": totals["lost"], "filtered": totals["filtered"],
                   "ended": ended}
        try:
            conn.sendall(struct.pack("!I", 0) + json.dumps(summary).encode() + b"\n")
        except OSError:
            pass


def start(router: "Router", interface: str, count: int = DEFAULT_COUNT,
          timeout: float = DEFAULT_TIMEOUT, direction: str = "inout",
          snaplen: int = CAPTURE_SNAPLEN, filter: str | None = None) -> CaptureStream:
    """The `capture` command: check everything, then arm the dataplane."""
    drops = interface == "drops"
    if not drops and interface not in router.ifindex:
        raise KeyError(f"no interface {interface!r} (a port name, or 'drops')")
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count {count} out of range (1..{MAX_COUNT})")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout {timeout} out of range (0..{MAX_TIMEOUT:g} s)")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r}: one of {', '.join(DIRECTIONS)}")
    program = None
    if filter:
        from forwarder import bpf
        program = bpf.compile(filter)
    return CaptureStream(router, None if drops else interface, drops, count, timeout,
                         direction, snaplen, program)


# --- the client's side -------------------------------------------------------------------

class CaptureError(Exception):
    pass


def _read_exact(f: BinaryIO, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise CaptureError("the router closed the capture stream early")
    return b


def stream(path: Path, args: dict[str, Any], on_header: Callable[[dict], None],
           on_records: Callable[[list[Record]], None], connect_timeout: float = 10.0) -> dict:
    """Run a capture on the router at path: the header to on_header, each
    chunk's records to on_records; returns the totals."""
    from forwarder.control import PROTOCOL_VERSION
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(connect_timeout)
    try:
        s.connect(str(path))
    except OSError as e:
        raise CaptureError(f"{path}: {e.strerror or e} (is the router running?)") from None
    s.sendall(json.dumps({"version": PROTOCOL_VERSION, "command": "capture",
                          "args": args}).encode() + b"\n")
    s.settimeout(None)                  # the stream is bounded by the router's timeout
    f = s.makefile("rb")
    try:
        reply = json.loads(f.readline() or b"{}")
        if not reply.get("ok"):
            raise CaptureError(reply.get("error", "the router refused the capture"))
        on_header(reply["result"])
        while True:
            (n,) = struct.unpack("!I", _read_exact(f, 4))
            if n == 0:
                return json.loads(f.readline())
            on_records(list(parse(_read_exact(f, n))))
    finally:
        f.close()
        s.close()


def comment(r: Record) -> str | None:
    if r.direction != CAPTURE_DROP:
        return None
    text = f"drop: {r.reason_name} ({DROP_REASONS.get(r.reason_name, '')})"
    return text + (" [Ethernet header rebuilt]" if r.synth else "")


def line(r: Record, ifnames: list[str], offset_ns: int) -> str:
    """tcpdump's one line per packet, with the interface and direction."""
    from forwarder.trace import summary
    t = datetime.fromtimestamp((r.time_ns + offset_ns) / 1e9, tz=timezone.utc)
    name = ifnames[r.ifindex] if 0 <= r.ifindex < len(ifnames) else f"#{r.ifindex}"
    what = {CAPTURE_IN: "In", CAPTURE_OUT: "Out"}.get(r.direction, f"drop {r.reason_name}")
    return f"{t.strftime('%H:%M:%S.%f')} {name} {what} {summary(r.data)}"


def direction_flag(r: Record) -> int:
    from forwarder.pcap import DIR_INBOUND, DIR_OUTBOUND
    return {CAPTURE_IN: DIR_INBOUND, CAPTURE_OUT: DIR_OUTBOUND}.get(r.direction, DIR_INBOUND)

