"""Fuzzing the router with mutated frames (scripts/fuzz.py, tests/test_fuzz.py).

Two targets take the frames of :mod:`forwarder.lab.mutate`:

* :class:`LabTarget`: a real router (``forwarder run``) in its own namespace,
  its TAPs' kernel sides in host namespaces (a :func:`make_lab` lab, dual
  stack, the third link 1280 bytes).  The frames are sent from h1's side of
  its TAP by two packet sockets, one plain and one with PACKET_VNET_HDR for
  the frames with a virtio-net header.  h1's kernel checks that header
  (virtio_net_hdr_to_skb) and refuses what it cannot make sense of (EINVAL):
  those are counted as refused, not sent; what it takes reaches the router
  as the TAP driver re-encodes it.
* :class:`InProcess`: the :class:`~forwarder.dataplane.Dataplane` in this
  process on three SOCK_SEQPACKET socket pairs, read and written as TAPs with
  IFF_VNET_HDR are.  Here the virtio-net header arrives exactly as written,
  lies and all, which no kernel would pass on; a responder thread plays the
  hosts (answers ARP and Neighbor Solicitations for them, swallows the
  rest), so that forwarded packets go out and are not only held.  A crash
  here takes the fuzzer with it, which is what the AddressSanitizer build
  (scripts/asan.sh) wants.

:func:`fuzz` sends the cases in chunks and, every ``check_every`` frames and at
the end, runs the checks of :meth:`Target.check`: the router is alive and
healthy; every frame it read in the stretch is accounted for (forwarded,
delivered to it, ARP, Neighbor Discovery, or a drop reason: :func:`unaccounted`);
once the neighbours it was left waiting for are forgotten, every mbuf and
cluster is back (the zones' USED at the baseline taken before the first
frame); and it still answers (IPv4 and IPv6 ping through it from h1 to h2,
or an echo of the router's own in process).  On a failure the stretch since
the last good check is regenerated and written as a pcap (the virtio-net
headers beside it, as JSON), with the command that replays it.

Between checks a lab router is only watched for being alive (once a chunk):
checking more often would cost more than sending.  The accounting counts
whole frames the router read; what h1's TAP queue dropped before the router
read it (the fuzzer sends flat out) is no frame of the router's.
"""
from __future__ import annotations

import errno
import json
import logging
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from forwarder.lab import mutate
from forwarder.mbufs import in_use
from forwarder.lab.mutate import Case, Link

log = logging.getLogger("forwarder.fuzz")

SOL_PACKET, PACKET_VNET_HDR = 263, 15
# Drops of a packet already counted once: forwarded (or an ICMP error or echo
# reply of the router's own, for a frame counted for its reason) and then
# lost on the way out -- no neighbour, no buffer, no room in the table, no
# link.  With them a read frame may be counted twice, never not at all.
AFTER_OUTPUT = frozenset({
    "arp_timeout", "arp_hold_overflow", "arp_hold_reclaimed", "arp_table_full",
    "arp_interface_full", "arp_incomplete_full", "nd6_hold_overflow", "nd6_timeout",
    "no_buffer", "interface_down", "tx_error", "output_no_route"})


def accounted(s: dict) -> int:
    """Frames the router says what it did with (a stats snapshot)."""
    return (sum(s["drops"].values()) + s["forwarded"] + s["delivered_local"]
            + s["arp"]["received"] + s["nd6"]["received"])


def read(s: dict) -> int:
    return sum(i["rx_packets"] for i in s["interfaces"])


def unaccounted(before: dict, after: dict) -> str | None:
    """What is wrong with the accounting between two snapshots of a router at
    rest, or None: each frame read is counted at least once, and more than
    once only by a drop after output (:data:`AFTER_OUTPUT`)."""
    n_read = read(after) - read(before)
    told = accounted(after) - accounted(before)
    twice = sum(after["drops"][k] - before["drops"][k] for k in AFTER_OUTPUT if k in after["drops"])
    if told - twice <= n_read <= told:
        return None
    rose = {k: after["drops"][k] - before["drops"][k] for k in after["drops"]
            if after["drops"][k] != before["drops"][k]}
    return (f"{n_read} frames read, {told} accounted for ({twice} of them drops after "
            f"output); drops that rose: {rose}; forwarded "
            f"{after['forwarded'] - before['forwarded']}, delivered "
            f"{after['delivered_local'] - before['delivered_local']}")


class Target(Protocol):
    link: Link
    min_len: int

    def send(self, frame: bytes, vnet: bytes | None) -> bool: ...
    def stats(self) -> dict: ...
    def alive(self) -> bool: ...
    def check(self) -> list[str]: ...
    def close(self) -> None: ...


# --- the in-process target ----------------------------------------------------------------

IN_LINKS = (("fz1", "10.1.0.1", 24, "2001:db8:1::1", 1500),
            ("fz2", "10.2.0.1", 24, "2001:db8:2::1", 1500),
            ("fz3", "10.3.0.1", 24, "2001:db8:3::1", 1280))
IN_MAC = "02:00:00:00:{k:02x}:01"
PEER_MAC = "02:00:00:00:{k:02x}:02"


class _Hosts(threading.Thread):
    """The hosts at the far ends of the in-process ports: each answers ARP
    and Neighbor Solicitations for its own .2 / ::2 and keeps count of what it
    received; port 0's host also hands over the router's echo replies."""

    def __init__(self, peers: Sequence[socket.socket]) -> None:
        super().__init__(name="fuzz-hosts", daemon=True)
        self.peers = list(peers)
        self.received = 0
        self.echo_ids: list[int] = []
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            ready, _, _ = select.select(self.peers, [], [], 0.1)
            for s in ready:
                try:
                    data = s.recv(70000)
                except BlockingIOError:
                    continue
                self.received += 1
                self._answer(self.peers.index(s), data[mutate.VNET_HDR_LEN:])

    def _answer(self, k: int, f: bytes) -> None:
        me = bytes.fromhex(PEER_MAC.format(k=k + 1).replace(":", ""))
        v4 = socket.inet_aton(f"10.{k + 1}.0.2")
        v6 = socket.inet_pton(socket.AF_INET6, f"2001:db8:{k + 1}::2")
        if len(f) >= 42 and f[12:14] == b"\x08\x06" and f[20:22] == b"\0\x01" and f[38:42] == v4:
            reply = (f[6:12] + me + b"\x08\x06" + f[14:20] + b"\0\x02" + me + v4 + f[22:28]
                     + f[28:32])
            self._send(k, reply)
        elif (len(f) >= 78 and f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 135
              and f[62:78] == v6):
            na = bytearray(f[6:12] + me + b"\x86\xdd" + b"\x60\0\0\0" + struct.pack("!H", 32)
                           + b"\x3a\xff" + v6 + f[22:38] + bytes([136, 0, 0, 0, 0x60, 0, 0, 0])
                           + v6 + b"\x02\x01" + me)
            mutate.fix_checksums(na, True)
            self._send(k, bytes(na))
        elif k == 0 and len(f) >= 42 and f[12:14] == b"\x08\x00" and f[23] == 1:
            o = 14 + (f[14] & 15) * 4           # what the router forwards may lie here
            if len(f) >= o + 6 and f[o] == 0:
                self.echo_ids.append(struct.unpack_from("!H", f, o + 4)[0])

    def _send(self, k: int, frame: bytes) -> None:
        try:
            self.peers[k].send(bytes(mutate.VNET_HDR_LEN) + frame)
        except OSError:
            pass


class InProcess:
    """The dataplane in this process (see the module docstring)."""
    min_len = 0

    def __init__(self) -> None:
        from forwarder import netns as nn
        from forwarder.dataplane import Dataplane
        from forwarder.route import RouteTable
        from forwarder.route6 import Route6Table

        self.link = Link(ours=bytes.fromhex(IN_MAC.format(k=1).replace(":", "")),
                         host=bytes.fromhex(PEER_MAC.format(k=1).replace(":", "")))
        self.routes, self.routes6 = RouteTable(), Route6Table()
        self.dp = Dataplane(self.routes, self.routes6)
        self.ports: list[socket.socket] = []
        peers: list[socket.socket] = []
        for k, (name, a4, plen, a6, mtu) in enumerate(IN_LINKS, 1):
            port, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            port.setblocking(False)
            peer.setblocking(False)
            self.ports.append(port)
            peers.append(peer)
            mac = bytes.fromhex(IN_MAC.format(k=k).replace(":", ""))
            idx = self.dp.add_interface(port.fileno(), name, mac, mtu, [(a4, plen)],
                                        addrs6=[(a6, 64)], vnet_hdr=True,
                                        offloads=nn.TUN_F_ALL)
            self.routes.add(f"10.{k}.0.0/24", ifindex=idx)
            self.routes.add(f"{a4}/32", type="local")
            self.routes6.add(f"2001:db8:{k}::/64", ifindex=idx)
            self.routes6.add(f"{a6}/128", type="local")
        self.peer = peers[0]
        self.peer.settimeout(2.0)
        self.hosts = _Hosts(peers)
        self.thread = threading.Thread(target=self.dp.run, name="fuzz-dataplane", daemon=True)
        self.thread.start()
        self.hosts.start()
        self.dp.flush()
        self.baseline = self.in_use()           # nothing: no spares, no neighbours
        self.sent = 0                           # frames written to port 0
        self.last = self.dp.stats()

    def in_use(self) -> dict[str, int]:
        return in_use()

    def send(self, frame: bytes, vnet: bytes | None) -> bool:
        data = (vnet or bytes(mutate.VNET_HDR_LEN)) + frame
        for _ in range(200):
            try:
                self.peer.send(data)
                self.sent += 1
                return True
            except BlockingIOError:                  # the router is behind: let it read
                time.sleep(0.0005)
            except OSError as e:                     # longer than a socket buffer
                if e.errno == errno.EMSGSIZE:
                    return False
                raise
        raise RuntimeError("the in-process dataplane stopped reading (100 ms)")

    def stats(self) -> dict:
        return self.dp.stats()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def settle(self, timeout: float = 5.0) -> dict:
        """Stats once port 0 read all that was sent (a socket pair loses
        nothing) and the counters stand still for 5 ms."""
        deadline = time.monotonic() + timeout
        prev = None
        while True:
            s = self.dp.stats()
            key = (read(s), accounted(s), self.hosts.received)
            if (key == prev and s["interfaces"][0]["rx_packets"] >= self.sent) \
                    or time.monotonic() > deadline:
                return s
            prev = key
            time.sleep(0.005)

    def check(self) -> list[str]:
        if not self.alive():
            return ["the dataplane thread is gone"]
        if not self.hosts.is_alive():
            return ["the fuzzer's own hosts thread died (see its traceback)"]
        problems = []
        now = self.settle()
        why = unaccounted(self.last, now)
        if why:
            problems.append(why)
        self.dp.flush()                 # the neighbours and what they hold, the spares
        used = self.in_use()
        if used != self.baseline:
            problems.append(f"zones' USED {used}, {self.baseline} before the frames")
        if not self.echo():
            problems.append("no echo reply from the router")
        self.last = self.settle()
        return problems

    def echo(self, timeout: float = 2.0) -> bool:
        """An echo request to the router from port 0's host; True once answered."""
        ident = 0xF022
        w = self.link
        f = bytearray(w.ours + w.host + b"\x08\x00" + b"\x45\0\0\x1c\0\0\0\0\x40\x01\0\0"
                      + socket.inet_aton(w.peer) + socket.inet_aton(w.me)
                      + struct.pack("!BBHHH", 8, 0, 0, ident, 1))
        mutate.fix_checksums(f, True)
        self.hosts.echo_ids.clear()
        self.send(bytes(f), None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ident in self.hosts.echo_ids:
                return True
            time.sleep(0.002)
        return False

    def close(self) -> None:
        self.hosts.stopping = True
        self.dp.stop()
        self.thread.join(5)
        self.hosts.join(2)
        self.dp.flush()
        for s in self.ports + self.hosts.peers:
            s.close()


# --- the lab target -----------------------------------------------------------------------

class LabTarget:
    """A real router in a namespace lab (see the module docstring); h1 sends."""
    min_len = 14

    def __init__(self, workdir: Path, topo: Any) -> None:
        from forwarder import netns as nn
        from forwarder.lab.topology import make_lab

        self.nn = nn
        self.lab = make_lab(topo, n_hosts=3, mtus=(1500, 1500, 1280), ipv6=True, name="fuzz")
        self.router = self.lab.start_router(workdir)
        h1 = self.lab.host("h1")
        with nn.iproute(h1.netns) as ipr:
            host = ipr.get_links(ipr.link_lookup(ifname=h1.ifname)[0])[0].get_attr("IFLA_ADDRESS")
        self.link = Link(ours=bytes.fromhex(str(h1.router_mac).replace(":", "")),
                         host=bytes.fromhex(host.replace(":", "")))
        with nn.enter_netns(h1.netns):
            self.plain = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.plain.bind((h1.ifname, 0))
            self.vnet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.vnet.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            self.vnet.bind((h1.ifname, 0))
        for s in (self.plain, self.vnet):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.warm_up()
        self.baseline = self.zones_used()
        self.last = self.call("stats")

    def call(self, command: str, **kw: Any) -> Any:
        return self.router.call(command, **kw)

    def zones_used(self) -> dict[str, int]:
        return in_use(self.call("zones"))

    def warm_up(self) -> None:
        """Every host's neighbour entry made (both families) and a super-frame
        read on h1's TAP: the spare clusters it keeps are in the baseline."""
        for dst in ("10.2.0.2", "10.3.0.2", "2001:db8:2::2", "2001:db8:3::2"):
            if not self.ping(dst, 10):
                raise RuntimeError(f"h1 cannot ping {dst} before fuzzing:\n"
                                   + self.router.log.read_text(errors="replace")[-3000:])
        s = mutate.seeds(self.link)
        for seed in s:
            if seed.vnet:
                self.send(seed.frame, mutate.vnet_header(None, seed.vnet, len(seed.frame)))
        self.settle()

    def ping(self, dst: str, timeout: float) -> bool:
        """h1 pings ``dst`` through the router, once a second, until an answer
        or ``timeout`` (a neighbour entry the fuzz left wrong is re-resolved
        within seconds: REACHABLE, STALE, DELAY, PROBE)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.lab.ping("h1", dst, count=1, wait=1).returncode == 0:
                return True
        return False

    def send(self, frame: bytes, vnet: bytes | None) -> bool:
        try:
            if vnet is None:
                self.plain.send(frame)
            else:
                self.vnet.send(vnet + frame)
            return True
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EMSGSIZE, errno.ENOBUFS, errno.ENETDOWN):
                return False            # h1's kernel refused it (or its queue is full)
            if e.errno in (errno.ENXIO, errno.ENODEV):
                return False            # the TAP is gone: the router died (seen after the chunk)
            raise

    def stats(self) -> dict:
        return self.call("stats")

    def alive(self) -> bool:
        return self.router.proc.poll() is None

    def settle(self, timeout: float = 10.0) -> dict:
        """Stats once the counters stop changing (h1's queue drained)."""
        deadline = time.monotonic() + timeout
        prev = None
        while True:
            s = self.call("stats")
            key = (read(s), accounted(s))
            if key == prev or time.monotonic() > deadline:
                return s
            prev = key
            time.sleep(0.25)

    def forget_incomplete(self) -> None:
        for command, table in (("arp.del", "arp.list"), ("ndp.del", "ndp.list")):
            for e in self.call(table):
                if e["state"] == "incomplete":
                    try:
                        self.call(command, ip=e["ip"], interface=e["interface"])
                    except Exception:           # aged meanwhile
                        pass

    def check(self) -> list[str]:
        if not self.alive():
            return [f"the router exited ({self.router.proc.returncode})"]
        problems = []
        now = self.settle()
        why = unaccounted(self.last, now)
        if why:
            problems.append(why)
        health = self.call("health")
        if not health.get("healthy"):
            problems.append(f"not healthy: {health}")
        self.forget_incomplete()
        deadline = time.monotonic() + 10
        while self.zones_used() != self.baseline and time.monotonic() < deadline:
            time.sleep(0.2)
            self.forget_incomplete()
        if self.zones_used() != self.baseline:
            problems.append(f"zones' USED {self.zones_used()}, {self.baseline} before the frames")
        for dst in ("10.2.0.2", "2001:db8:2::2"):
            if not self.ping(dst, 15):
                problems.append(f"h1 cannot ping {dst} through the router (15 s)")
        self.last = self.settle()
        return problems

    def close(self) -> None:
        self.plain.close()
        self.vnet.close()
        code, out = self.router.stop()
        if code != 0:
            log.warning("the router exited %s:\n%s", code, out[-2000:])


# --- the run ------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    frames: int                       # frames generated up to here
    seconds: float
    problems: list[str]


@dataclass
class FuzzResult:
    target: str
    seed: int
    start: int
    frames: int                       # generated
    sent: int                         # of them taken by the sender's kernel (or socket)
    refused: int
    seconds: float
    checkpoints: list[Checkpoint] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)   # what rose over the run
    failed: str | None = None         # what failed, or None
    pcap: str | None = None
    replay: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed is None

    def to_json(self) -> str:
        d = asdict(self)
        d["ok"] = self.ok
        return json.dumps(d, indent=1)


class Progress:
    """A progress bar on a terminal, a log line every tenth otherwise."""

    def __init__(self, total: int, out: Any = sys.stderr) -> None:
        self.total, self.out, self.t0 = total, out, time.monotonic()
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.next_log = total // 10

    def update(self, done: int) -> None:
        dt = max(time.monotonic() - self.t0, 1e-9)
        rate = done / dt
        eta = (self.total - done) / rate if rate else 0
        line = (f"fuzz {done / 1e6:6.2f}M/{self.total / 1e6:.2f}M frames "
                f"{100 * done / self.total:5.1f}% {rate / 1e3:6.1f} kframes/s eta {eta:5.0f} s")
        if self.tty:
            width = 30
            full = int(width * done / self.total)
            self.out.write(f"\r[{'#' * full}{'.' * (width - full)}] {line}")
            self.out.flush()
        elif done >= self.next_log:
            log.info("%s", line)
            self.next_log += max(self.total // 10, 1)

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")


def write_failure(path: Path, w: Link, cases: Sequence[Case], min_len: int) -> None:
    """The frames of ``cases`` as a pcap, their virtio-net headers as JSON beside it."""
    from forwarder.pcap import PcapWriter

    vnets: dict[int, str] = {}
    with open(path, "wb") as out:
        pw = PcapWriter(out, 65535)
        for i, c in enumerate(cases):
            frame, vnet = mutate.build(c, w, min_len)
            pw.packet(time.time_ns(), frame, len(frame))
            if vnet is not None:
                vnets[i] = vnet.hex()
    path.with_suffix(".vnet.json").write_text(json.dumps(
        {"frames": len(cases), "vnet_hdr": vnets,
         "cases": [mutate.describe(c, w) for c in cases[:1000]]}, indent=1))


def fuzz(target: Target, frames: int, *, seed: int = 1, start: int = 0,
         check_every: int = 1_000_000, out_dir: Path = Path("."), name: str = "lab",
         progress: Progress | None = None,
         on_chunk: Callable[[int], None] | None = None) -> FuzzResult:
    """Send ``frames`` cases (from case ``start`` of the run ``seed``) to
    ``target``, checking it every ``check_every`` frames and at the end."""
    w = target.link
    res = FuzzResult(name, seed, start, 0, 0, 0, 0.0)
    first = target.stats()
    t0 = time.monotonic()
    good = start                                     # cases before this one passed a check
    i = start
    end = start + frames
    while i < end:
        n = min(mutate.CHUNK - i % mutate.CHUNK, end - i, check_every - (i - start) % check_every)
        for c in mutate.cases(seed, i, n, w):
            frame, vnet = mutate.build(c, w, target.min_len)
            if target.send(frame, vnet):
                res.sent += 1
            else:
                res.refused += 1
        i += n
        res.frames = i - start
        if progress:
            progress.update(res.frames)
        if on_chunk:
            on_chunk(res.frames)
        problems: list[str] = []
        if not target.alive():
            problems = ["the router is gone"]
        elif (i - start) % check_every == 0 or i == end:
            problems = target.check()
            res.checkpoints.append(Checkpoint(res.frames, round(time.monotonic() - t0, 1),
                                              problems))
            log.info("checked after %d frames: %s", res.frames, "; ".join(problems) or "ok")
        if problems:
            res.failed = "; ".join(problems)
            pcap = out_dir / f"fuzz-{name}-seed{seed}-{good}-{i}.pcap"
            write_failure(pcap, w, mutate.cases(seed, good, i - good, w), target.min_len)
            res.pcap = str(pcap)
            res.replay = (f"scripts/fuzz.py --target {name} --seed {seed} --start {good} "
                          f"--frames {i - good} --check-every {mutate.CHUNK}")
            break
        if (i - start) % check_every == 0:
            good = i
    if progress:
        progress.end()
    res.seconds = round(time.monotonic() - t0, 1)
    if target.alive():
        res.counters = counters_rose(first, target.stats())
    return res


def counters_rose(before: dict, after: dict) -> dict[str, int]:
    """Frames read, what the router did with them, and each drop reason that rose."""
    out = {"read": read(after) - read(before)}
    for k in ("forwarded", "delivered_local"):
        out[k] = after[k] - before[k]
    out["arp_received"] = after["arp"]["received"] - before["arp"]["received"]
    out["nd6_received"] = after["nd6"]["received"] - before["nd6"]["received"]
    out.update({f"drop {k}": v - before["drops"][k] for k, v in after["drops"].items()
                if v != before["drops"][k]})
    return out

