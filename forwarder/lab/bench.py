"""`forwarder bench`: the same load through four forwarders, side by side.

  (a) router   this router: ``forwarder run`` in a namespace, TAPs to two hosts
  (b) kernel   Linux forwarding: a namespace with net.ipv4.ip_forward=1, veth to two hosts
  (c) copy     a minimal C read()/write() loop between two TAPs (compiled here with gcc):
               the per-packet syscall floor of any TAP forwarder; it does no routing,
               so its two hosts share one subnet
  (d) offload  the same C loop, its two TAPs opened with IFF_VNET_HDR and TUNSETOFFLOAD
               (checksum, TSO, USO, as the kernel accepts): the hosts' kernels hand it
               TCP super-frames of up to 64 KB behind a 10-byte struct virtio_net_hdr,
               and it writes each one, header unchanged, to the other TAP.  Both TAPs
               need the offloads, one for each direction of a TCP connection.  One
               read() and one write() per super-frame: the most TCP throughput that a
               forwarder on offloading TAPs can expect, as (c) is the least cost per
               packet.
  (e) attach   this router on veths handed to its namespace (``attach =``, forwarder/attach.py),
               as a container runtime wires it: a packet socket on each veth (attach_mode
               "packet", the default)
  (e') attach_tap  the same with attach_mode "tap": a TAP of the router's joined to each veth
               by tc redirects
  (f) bridge   this router with its TAPs left in its namespace, each bridged with a veth to its
               host by a Linux bridge: the way containers were wired before attach
               (``--attach`` runs (a), (e), (e') and (f): the ways to reach the router's hosts)
  (g) container  this router in its container image under a real Docker engine (a private
               dockerd, forwarder/lab/docker.py), run as docs/containers.md says with
               ``--network none`` and the image's own config, its hosts' veths moved into
               the container's namespace as eth1 and eth2 (``--docker`` runs (e) and (g):
               the same router and wiring, outside the container and inside it)

With ``--family 6`` every setup carries IPv6 instead: the hosts get addresses
of 2001:db8::/32 and IPv6 default routes, the kernel forwards with
net.ipv6.conf.all.forwarding, iperf3 runs over IPv6, and the smallest frame is
78 bytes (RFC 5180: 64 cannot hold Ethernet, IPv6 and UDP headers and the
measurement fields), in place of 64 everywhere below.

For each: 64-byte UDP pps and IMIX pps (flat out, as delivered), iperf3 TCP Gbit/s
(one stream, and four in parallel: ``-P 4``, the sum of the streams as received),
one-way latency p50/p99 at half of that forwarder's own 64-byte rate, the CPU time
the forwarding process spends per 64-byte packet, and its peak RSS (psutil samples
and the kernel's VmHWM).  All the setups are up at once and take turns within each
round, so background load on the machine hits them alike; every figure is repeated
``--reps`` times (median and spread), and the router's figures are given as ratios
to (b), (c) and (d).

The load generator and its receiver run on the same machine and compete with the
forwarder for the CPUs; on 2 cores that caps what can be measured (see
benchmarks/README.md).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

from forwarder import netns as nn
from forwarder.lab.path import resolve_path
from forwarder.lab.report import fmt_rate
from forwarder.lab.run import run_load
from forwarder.lab.spec import BENCH_SETUPS, MIN_FRAME, LoadSpec
from forwarder.lab.topology import make_lab

log = logging.getLogger(__name__)

BENCH_SCHEMA = "forwarder.bench/1"
SETUPS = BENCH_SETUPS
TITLES = {"router": "router (a)", "kernel": "kernel veth (b)", "copy": "C copy loop (c)",
          "offload": "C copy loop, offloads (d)",
          "attach": "router, attached veths, packet sockets (e)",
          "attach_tap": "router, attached veths, TAPs and tc (e')",
          "bridge": "router, bridged TAPs (f)", "container": "router in its image (g)"}
BASELINES = ("kernel", "copy", "offload")     # the router's figures as ratios to these
# and those of the container wirings to the TAP-in-namespace router and the bridge
RATIOS = tuple(("router", b) for b in BASELINES) + (
    ("attach", "router"), ("attach_tap", "router"), ("attach", "attach_tap"), ("attach", "bridge"),
    ("container", "attach"))
FLOWS = 8
IPERF_PORT = 5201
IPERF_STREAMS = 4          # the second TCP figure: iperf3 -P 4

TAPCOPY_C = r"""
/* tapcopy FD_A FD_B: copy Ethernet frames between two open TAP descriptors.
 * One read() and one write() per frame, poll() when both are empty, bursts of 32
 * per descriptor per wake-up (as the router's DP_BURST).  No parsing, no routing:
 * the per-packet system-call floor of a userspace TAP forwarder.
 *
 * The same binary serves TAPs opened with IFF_VNET_HDR and TUNSETOFFLOAD: each
 * read() is then a struct virtio_net_hdr and a frame of up to 64 KB (a TSO
 * super-frame), written on unchanged, header included.  The buffer holds the
 * largest such read; a shorter one would make read() truncate without a word. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

/* virtio_net_hdr + the largest IP packet + Ethernet header + one VLAN tag */
#define BUF_SIZE (10 + 65535 + 14 + 4)

int main(int argc, char **argv)
{
    static unsigned char buf[BUF_SIZE];
    unsigned long long frames[2] = {0, 0}, errors = 0;
    struct sigaction sa = {0};
    int fd[2], i, k;

    if (argc != 3) {
        fprintf(stderr, "usage: tapcopy FD_A FD_B\n");
        return 2;
    }
    fd[0] = atoi(argv[1]);
    fd[1] = atoi(argv[2]);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct pollfd p[2] = {{fd[0], POLLIN, 0}, {fd[1], POLLIN, 0}};
    while (!stop) {
        if (poll(p, 2, 200) < 0) {
            if (errno == EINTR)
                continue;
            perror("tapcopy: poll");
            return 1;
        }
        for (i = 0; i < 2; i++) {
            if (!(p[i].revents & POLLIN))
                continue;
            for (k = 0; k < 32; k++) {
                ssize_t len = read(fd[i], buf, sizeof buf);
                if (len < 0)
                    break;                      /* EAGAIN: drained */
                if (write(fd[1 - i], buf, (size_t)len) != len)
                    errors++;
                else
                    frames[i]++;
            }
        }
    }
    printf("tapcopy: %llu frames a->b, %llu b->a, %llu write errors\n",
           frames[0], frames[1], errors);
    return 0;
}
"""


def compile_tapcopy(workdir: Path) -> Path:
    """gcc -O2 the copy loop into ``workdir``; return the binary."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("the C copy loop needs gcc (scripts/install.sh installs it)")
    src = workdir / "tapcopy.c"
    src.write_text(TAPCOPY_C)
    out = workdir / "tapcopy"
    cp = subprocess.run([gcc, "-O2", "-Wall", "-o", str(out), str(src)],
                        capture_output=True, text=True, timeout=60)
    if cp.returncode != 0:
        raise RuntimeError(f"gcc failed:\n{cp.stderr}")
    return out


# --- the four setups -------------------------------------------------------------------------

@dataclass
class Setup:
    name: str
    topo: nn.Topology
    src_ns: str
    dst_ns: str
    src_ip: str
    dst_ip: str
    pid: int | None = None           # the forwarding process, when there is one
    router_socket: str | None = None
    offloads: list[str] | None = None  # TUN_F_* names both TAPs accepted, for (d)


def _route_default(ns: str, gw: str) -> None:
    with nn.iproute(ns) as ipr:
        ipr.route("add", dst="::/0" if ":" in gw else "0.0.0.0/0", gateway=gw)


def _net(family: int, v4: str, v6: str) -> str:
    """The address of a setup's link in ``family``: "10.9.0.{h}/24" or its IPv6 twin."""
    return v4 if family == 4 else v6


WIRINGS = {"router": {}, "attach": dict(attach=(1, 2)), "attach_tap": dict(attach=(1, 2)),
           "bridge": dict(bridge=(1, 2))}
ATTACH_MODES = {"attach": "packet", "attach_tap": "tap"}     # [router] attach_mode


@contextlib.contextmanager
def setup_router(workdir: Path, family: int = 4, name: str = "router") -> Iterator[Setup]:
    """This router between two hosts: a two-link lab (h1 10.1.0.2, h2 10.2.0.2;
    with family 6 also 2001:db8:1::2 and 2001:db8:2::2), its TAPs moved into
    them (a), attached to veths (e, ``attach``) or bridged with veths (f,
    ``bridge``)."""
    with nn.Topology() as topo:
        lab = make_lab(topo, n_hosts=2, name="bench" if name == "router" else f"bench-{name}",
                       ipv6=family == 6, **WIRINGS[name])
        lab.log_level = "warning"
        lab.attach_delay = 0.2
        lab.attach_mode = ATTACH_MODES.get(name)
        rp = lab.start_router(workdir / name)
        h1, h2 = lab.hosts
        a1, a2 = (h1.address, h2.address) if family == 4 else (h1.address6, h2.address6)
        try:
            yield Setup(name, topo, h1.netns, h2.netns, str(a1.ip), str(a2.ip),
                        pid=rp.pid, router_socket=str(rp.socket))
        finally:
            code, out = rp.stop()
            if code != 0:
                log.warning("the router (%s) exited %d:\n%s", name, code, out[-2000:])


@contextlib.contextmanager
def setup_container(workdir: Path, family: int = 4) -> Iterator[Setup]:
    """This router in its image, under a private Docker engine: the image built
    from the source tree this package runs from (or found in the engine's
    cache), run with ``--network none`` and its default config, whose ports
    attach to eth1 and eth2; the hosts' veths are moved into the container's
    namespace under those names, as for (e).  IPv4 only: the image's config
    has no IPv6 addresses."""
    from forwarder.lab import docker
    if family != 4:
        raise ValueError("setup container: IPv4 only (the image's default config)")
    tree = docker.source_tree()
    with docker.Engine() as engine, nn.Topology() as topo:
        image = docker.build_image(engine, tree)
        name = f"{topo.prefix}bench"
        with docker.running(engine, name, image):
            pid = engine.pid(name)
            lab = docker.container_lab(topo, f"/proc/{pid}/ns/net")
            for h in lab.hosts:
                lab.hand_over(h)
            sock = docker.control_socket(pid)
            docker.wait_ready(sock, 30)
            lab.configure_hosts()
            h1, h2 = lab.hosts
            yield Setup("container", topo, h1.netns, h2.netns, str(h1.address.ip),
                        str(h2.address.ip), pid=pid, router_socket=str(sock))


@contextlib.contextmanager
def setup_kernel(family: int = 4) -> Iterator[Setup]:
    def a(k: int, h: int) -> str:
        return _net(family, f"10.{k}.0.{h}/24", f"2001:db8:{k}::{h}/64")

    def ip(k: int, h: int) -> str:
        return a(k, h).split("/")[0]
    with nn.Topology() as topo:
        k, s, d = topo.netns("k"), topo.netns("s"), topo.netns("d")
        topo.veth("eth0", s, "v1", k, addresses_a=[a(1, 2)], addresses_b=[a(1, 1)])
        topo.veth("v2", k, "eth0", d, addresses_a=[a(2, 1)], addresses_b=[a(2, 2)])
        for ns in (k, d):
            for conf in ("all", "default"):
                nn.write_sysctl(ns, f"net.ipv4.conf.{conf}.rp_filter", 0)
        nn.write_sysctl(k, "net.ipv4.ip_forward" if family == 4
                        else "net.ipv6.conf.all.forwarding", 1)
        _route_default(s, ip(1, 1))
        _route_default(d, ip(2, 1))
        yield Setup("kernel", topo, s, d, ip(1, 2), ip(2, 2))


def _start_tapcopy(topo: nn.Topology, ns: str, binary: Path, fds: tuple[int, int],
                   logfile: Path) -> subprocess.Popen:
    """Run the copy loop in ``ns`` on two TAP fds; fail at once if it does not start."""
    with open(logfile, "w") as out:
        proc = topo.popen(ns, [str(binary), *map(str, fds)], pass_fds=fds,
                          stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    time.sleep(0.05)
    if proc.poll() is not None:
        raise RuntimeError("tapcopy exited: " + logfile.read_text())
    return proc


@contextlib.contextmanager
def setup_copy(binary: Path, workdir: Path, family: int = 4) -> Iterator[Setup]:
    x, y = _net(family, "10.9.0.1/24", "2001:db8:9::1/64"), _net(family, "10.9.0.2/24",
                                                                  "2001:db8:9::2/64")
    with nn.Topology() as topo:
        c, s, d = topo.netns("c"), topo.netns("s"), topo.netns("d")
        a = topo.tap("tap1", c, host_ns=s, host_addresses=[x])
        b = topo.tap("tap2", c, host_ns=d, host_addresses=[y])
        proc = _start_tapcopy(topo, c, binary, (a.fd, b.fd), workdir / "tapcopy.log")
        yield Setup("copy", topo, s, d, x.split("/")[0], y.split("/")[0], pid=proc.pid)


def _offload_tap(topo: nn.Topology, name: str, fwd_ns: str, host_ns: str,
                 address: str) -> tuple[nn.Tap, int]:
    """As :meth:`Topology.tap`, but opened with IFF_VNET_HDR and TUNSETOFFLOAD: the
    forwarder's end reads and writes a virtio_net_hdr before every frame, and the
    host's kernel may hand it unsegmented TSO/USO frames with partial checksums.
    Returns the TAP (closed with ``topo``) and the TUN_F_* flags the kernel accepted."""
    fd = nn.tap_open(name, fwd_ns, extra_flags=nn.IFF_VNET_HDR)
    tap = nn.Tap(name=name, fd=fd, router_ns=fwd_ns, host_ns=host_ns)
    topo.taps.append(tap)
    flags = nn.tap_set_offload(fd)
    nn.link_move(name, host_ns, src=fwd_ns)
    nn.configure_host(name, host_ns, [address])
    return tap, flags


@contextlib.contextmanager
def setup_offload(binary: Path, workdir: Path, family: int = 4) -> Iterator[Setup]:
    """The copy loop of (c) between two offloading TAPs.  Offloads on both TAPs: the
    data of a TCP connection goes one way, its ACKs the other, and a super-frame read
    from one TAP can only be written to a TAP that has IFF_VNET_HDR too."""
    x, y = _net(family, "10.9.1.1/24", "2001:db8:9:1::1/64"), _net(family, "10.9.1.2/24",
                                                                    "2001:db8:9:1::2/64")
    with nn.Topology() as topo:
        c, s, d = topo.netns("c"), topo.netns("s"), topo.netns("d")
        a, fa = _offload_tap(topo, "tap1", c, s, x)
        b, fb = _offload_tap(topo, "tap2", c, d, y)
        if not fa & fb & (nn.TUN_F_TSO4 if family == 4 else nn.TUN_F_TSO6):
            log.warning("the kernel refused TSO on the TAPs (accepted: %s): setup (d) "
                        "measures no more than (c)", ",".join(nn.tun_flag_names(fa & fb)))
        proc = _start_tapcopy(topo, c, binary, (a.fd, b.fd), workdir / "tapcopy-offload.log")
        yield Setup("offload", topo, s, d, x.split("/")[0], y.split("/")[0], pid=proc.pid,
                    offloads=nn.tun_flag_names(fa & fb))


# --- measurements --------------------------------------------------------------------------

class RssSampler:
    """Peak RSS of a process: psutil samples every 50 ms, and the kernel's VmHWM."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    def __enter__(self) -> "RssSampler":
        if self.pid is not None:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self) -> None:
        try:
            p = psutil.Process(self.pid)
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, p.memory_info().rss)
        except psutil.Error:
            pass

    def hwm(self) -> int:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join(2)
        if self.pid is not None:
            self.peak = max(self.peak, self.hwm())


def iperf3(setup: Setup, seconds: float | None, nbytes: str | None, streams: int = 1) -> float:
    """TCP Gbit/s from src to dst over ``streams`` parallel connections (iperf3 -P),
    as received: iperf3's sum over the streams.  ``nbytes`` is for all of them."""
    server = setup.topo.popen(setup.dst_ns, ["iperf3", "-s", "-1", "-p", str(IPERF_PORT),
                                             "-B", setup.dst_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
    try:
        amount = ["-n", nbytes] if nbytes else ["-t", str(max(1, int(round(seconds or 1))))]
        limit = (seconds or 5) + 20
        for attempt in range(20):
            cp = nn.run_in_netns(setup.src_ns, ["iperf3", "-c", setup.dst_ip, "-p",
                                                str(IPERF_PORT), "-J", "-P", str(streams),
                                                *amount],
                                 timeout=limit)
            try:
                doc = json.loads(cp.stdout)
            except json.JSONDecodeError:
                doc = {"error": cp.stdout + cp.stderr}
            if "error" in doc and "connect" in str(doc["error"]) and attempt < 19:
                time.sleep(0.1)         # the server is not listening yet
                continue
            if "error" in doc:
                raise RuntimeError(f"iperf3 ({setup.name}): {doc['error']}")
            return doc["end"]["sum_received"]["bits_per_second"] / 1e9
        raise RuntimeError(f"iperf3 ({setup.name}): the server did not come up")
    finally:
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (its softirq work on its own writes included)."""
    if pid is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def summarize(values: list[float]) -> dict:
    vals = [float(v) for v in values]
    med = statistics.median(vals) if vals else 0.0
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 0.0)
    return {"runs": vals, "median": med, "min": lo, "max": hi,
            "spread_pct": (100.0 * (hi - lo) / 2 / med) if med else 0.0}


@dataclass
class Params:
    reps: int = 3
    duration: float = 2.0          # seconds per pps / latency run
    iperf_seconds: float = 3.0
    iperf_bytes: str | None = None # quick mode: a byte count instead of a time
    procs: int = 1
    family: int = 4                # IPv4 or IPv6 through every setup

    @property
    def small(self) -> int:
        """The smallest frame: 64 bytes, IPv6's 78 (RFC 5180)."""
        return MIN_FRAME[self.family]


def measure_all(setups: list[Setup], p: Params, say: Callable[[str], None]) -> dict:
    """Every figure, ``p.reps`` times, the setups taking turns within each round, so
    that whatever else the machine is doing meanwhile hits them all alike."""
    paths = {st.name: resolve_path(st.src_ns, st.dst_ns, st.dst_ip,
                                   router_socket=st.router_socket) for st in setups}
    raw: dict[str, dict[str, list[float]]] = {st.name: {} for st in setups}

    def load(st: Setup, **kw: Any) -> dict:
        spec = LoadSpec(proto="udp", flows=FLOWS, duration=p.duration, procs=p.procs,
                        family=p.family, **kw)
        return run_load(spec, paths[st.name])

    def record(st: Setup, **values: float) -> None:
        for k, v in values.items():
            raw[st.name].setdefault(k, []).append(float(v))

    samplers = {st.name: RssSampler(st.pid) for st in setups}
    for smp in samplers.values():
        smp.__enter__()
    try:
        for rep in range(p.reps):
            for st in setups:
                cpu0 = _cpu_seconds(st.pid)
                r = load(st, sizes=str(p.small))
                record(st, pps64=r["received"]["pps"], offered64=r["sent"]["pps"])
                cpu1 = _cpu_seconds(st.pid)
                if cpu0 is not None and cpu1 is not None and r["received"]["packets"]:
                    record(st, cpu_us_per_packet64=(cpu1 - cpu0) * 1e6 / r["received"]["packets"])
            for st in setups:
                r = load(st, sizes="imix")
                record(st, pps_imix=r["received"]["pps"], mbps_imix=r["received"]["mbps"])
            for st in setups:
                record(st, iperf3_gbps=iperf3(st, p.iperf_seconds, p.iperf_bytes))
            for st in setups:
                record(st, iperf3_p4_gbps=iperf3(st, p.iperf_seconds, p.iperf_bytes,
                                                 streams=IPERF_STREAMS))
            say(f"  round {rep + 1}/{p.reps}: " + "; ".join(
                f"{st.name} {fmt_rate(raw[st.name]['pps64'][-1])} {p.small} B, "
                f"{fmt_rate(raw[st.name]['pps_imix'][-1])} IMIX, "
                f"{raw[st.name]['iperf3_gbps'][-1]:.2f}/"
                f"{raw[st.name]['iperf3_p4_gbps'][-1]:.2f} Gbit/s" for st in setups))
        half = {st.name: max(statistics.median(raw[st.name]["pps64"]) / 2, 100.0)
                for st in setups}
        for rep in range(p.reps):
            for st in setups:
                r = load(st, sizes=str(p.small), rate=half[st.name])
                record(st, latency_p50_us=r["latency_us"]["p50"] or 0.0,
                       latency_p99_us=r["latency_us"]["p99"] or 0.0,
                       latency_loss_pct=100 * r["loss"]["ratio"])
            say(f"  latency {rep + 1}/{p.reps}: " + "; ".join(
                f"{st.name} p50 {raw[st.name]['latency_p50_us'][-1]:.1f} µs, p99 "
                f"{raw[st.name]['latency_p99_us'][-1]:.1f} µs at {fmt_rate(half[st.name])}"
                for st in setups))
    finally:
        for smp in samplers.values():
            smp.__exit__(None, None, None)
    out: dict[str, dict] = {}
    for st in setups:
        res: dict[str, Any] = {k: summarize(v) for k, v in raw[st.name].items()}
        res["latency_rate_pps"] = half[st.name]
        res["peak_rss_bytes"] = samplers[st.name].peak if st.pid is not None else None
        if st.offloads is not None:
            res["tap_offloads"] = st.offloads
        out[st.name] = res
    return out


FIGURES = (  # key, label, unit formatter, higher is better
    ("pps64", "64 B pps (delivered)", "pps", True),
    ("pps_imix", "IMIX pps (delivered)", "pps", True),
    ("mbps_imix", "IMIX Mbit/s", "num", True),
    ("iperf3_gbps", "iperf3 TCP Gbit/s (1 stream)", "num", True),
    ("iperf3_p4_gbps", f"iperf3 TCP Gbit/s ({IPERF_STREAMS} streams)", "num", True),
    ("cpu_us_per_packet64", "CPU µs/packet (64 B)", "num", False),
    ("latency_p50_us", "latency p50 µs @50%", "num", False),
    ("latency_p99_us", "latency p99 µs @50%", "num", False),
)


def ratios(results: dict) -> dict:
    """Medians over medians, for each pair of :data:`RATIOS` that was measured:
    "router/kernel", "router/copy", "router/offload", "attach/router",
    "attach_tap/router", "attach/attach_tap", "attach/bridge"; None where the
    second one's median is 0."""
    out: dict[str, dict[str, float | None]] = {}
    for one, other in RATIOS:
        a, b = results.get(one), results.get(other)
        if not a or not b:
            continue
        r: dict[str, float | None] = {}
        for key, *_ in FIGURES:
            if key not in a or key not in b:
                continue
            x, y = a[key]["median"], b[key]["median"]
            r[key] = x / y if y else None
        out[f"{one}/{other}"] = r
    return out


def machine() -> dict:
    model = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) * 1024
    return {"cpu": model, "cores": os.cpu_count(), "memory_bytes": mem,
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_before": list(os.getloadavg())}


def _fmt(v: float | None, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "pps":
        return f"{v / 1e3:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}"


def _cell(s: dict | None, kind: str) -> str:
    return "-" if s is None else "%s ±%.0f%%" % (_fmt(s["median"], kind), s["spread_pct"])


def format_table(doc: dict) -> str:
    """One column per setup, then one per ratio; each as wide as its widest cell."""
    res = doc["results"]
    names = [n for n in SETUPS if n in res]
    rat = doc["ratios"]
    ratio_keys = [f"{a}/{b}" for a, b in RATIOS if f"{a}/{b}" in rat]
    family = doc["params"].get("family", 4)
    small = f"{MIN_FRAME[family]} B"
    rows: list[list[str]] = [[f"IPv{family}"] + [TITLES[n] for n in names] + ratio_keys]
    for key, label, kind, _ in FIGURES:
        rows.append([label.replace("64 B", small)] + [_cell(res[n].get(key), kind) for n in names]
                    + ["-" if rat[k].get(key) is None else f"{rat[k][key]:.2f}x"
                       for k in ratio_keys])
    rows.append(["peak RSS MiB"]
                + ["-" if res[n]["peak_rss_bytes"] is None
                   else f"{res[n]['peak_rss_bytes'] / 2**20:.1f}" for n in names]
                + [""] * len(ratio_keys))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [(f"{r[0]:<{widths[0]}}"
              + "".join(f"{c:>{w + 2}}" for c, w in zip(r[1:], widths[1:]))).rstrip()
             for r in rows]
    if "offload" in res and res["offload"].get("tap_offloads") is not None:
        lines.append("(d)'s TAPs: " + (",".join(res["offload"]["tap_offloads"]) or "no offloads"))
    lines.append("")
    lines.append("median of %d runs ± half the min-max range; latency at half of each "
                 "forwarder's own %s rate; ratio > 1: the router is ahead (for CPU/packet "
                 "and latency: behind)" % (doc["params"]["reps"], small))
    return "\n".join(lines)


def run_bench(p: Params, only: tuple[str, ...] = SETUPS,
              say: Callable[[str], None] = lambda _m: None) -> dict:
    doc: dict[str, Any] = {"schema": BENCH_SCHEMA, "machine": machine(),
                           "params": {"reps": p.reps, "duration_s": p.duration,
                                      "iperf_seconds": p.iperf_seconds,
                                      "iperf_bytes": p.iperf_bytes, "flows": FLOWS,
                                      "procs": p.procs, "setups": list(only),
                                      "family": p.family, "small_frame": p.small},
                           "results": {}}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fwbench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        setups: list[Setup] = []
        tapcopy: Path | None = None          # one binary for (c) and (d)
        for name in only:
            if name == "router":
                st = stack.enter_context(setup_router(work, p.family))
            elif name == "kernel":
                st = stack.enter_context(setup_kernel(p.family))
            elif name in ("attach", "attach_tap", "bridge"):
                st = stack.enter_context(setup_router(work, p.family, name))
            elif name == "container":
                st = stack.enter_context(setup_container(work, p.family))
            else:
                tapcopy = tapcopy or compile_tapcopy(work)
                make = setup_offload if name == "offload" else setup_copy
                st = stack.enter_context(make(tapcopy, work, p.family))
            say(f"[{name}] {TITLES[name]}: namespaces {st.topo.prefix}*"
                + (f", forwarding process pid {st.pid}" if st.pid else "")
                + (f", TAP offloads {','.join(st.offloads) or 'none'}"
                   if st.offloads is not None else ""))
            setups.append(st)
        doc["results"] = measure_all(setups, p, say)
    doc["ratios"] = ratios(doc["results"])
    doc["seconds"] = time.monotonic() - t_start
    doc["machine"]["loadavg_after"] = list(os.getloadavg())
    return doc
