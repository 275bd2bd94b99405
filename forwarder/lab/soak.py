"""The soak: a real router under mixed load for minutes, sampled, and judged.

What runs
---------
:func:`run_soak` builds a dual-stack lab (:func:`forwarder.lab.topology.make_lab`,
router namespace and hosts h1, h2, h3 on TAPs), starts ``forwarder run`` and
offers, from h1 to h2, an IPv4 and an IPv6 UDP stream at once
(:mod:`forwarder.lab.soakload`: frames of 64 (IPv6: 78) to 1500 bytes, 128
flows per family by default, each from its own source address).  The rate is
half (``load``) of what a 2-second flat-out probe at the start delivered, unless
given.  The source link's queue towards the router is deepened from the TAP's
500 frames to 10 000 (:func:`deepen_queues`): on a small machine that other
work shares, the router losing its CPU for 20 ms would otherwise overflow it
and count as loss, though nothing in the router changed; a router that stops
reading for longer than 10 000 packets' time (about 0.2 s at 50 000 packets/s)
still loses.  Meanwhile, from the parent (:class:`Chores`):

* neighbour churn, one step every ``churn_every`` seconds in turn: the router's
  ARP and ND entries for h1 and h3 deleted (``arp.del`` / ``ndp.del``) and
  re-learnt by a ping from h1 to h3; and an address of h3 (IPv4 and IPv6)
  replaced by the next of eight, which is pinged, the old one's entries
  deleted.  The
  entries of h2, the load's destination, are left alone: deleting them would
  drop whatever exceeds the hold queue while the router resolves h2 again,
  loss by design rather than a defect;
* a tunable changed every ``sysctl_every`` seconds through the control socket
  (ICMP and ARP/ND rate limits, ARP entry lifetime and hold queue, the TTL of
  the router's own packets), each between its default and a second value;
* a config reload every ``reload_every`` seconds: the config file alternates
  between two versions (a static route and an ND tunable differ) and the
  router gets SIGHUP; the reload is confirmed by the router's reload counter.

The load runs in segments of one sample interval each (exact loss per interval
by sequence number, see soakload).  After each segment the router's RSS
(psutil) and its zones (``vmstat -z`` over the control socket: ``used`` and
``free``, the cached items) are sampled.  After the last one the load stops and
the zones are given ``settle`` seconds to come back to the baseline taken
before any load.

The verdict
-----------
:func:`verdict` is pure: a :class:`SoakRecord` in, a list of failure reasons
out (empty: pass).  The criteria (:class:`Criteria`):

* **RSS flat.** The warm-up is the first 20 % of the load's duration, at
  least the first sample, and at least up to the end of the sample the first
  reload falls in: pools, caches and the interpreter's arenas fill while the
  load ramps through its flows and sizes and the chores run each action once,
  and the first reload that changes something (here a route comes) runs code
  nothing ran before: the router's RSS grows by about 2 MiB then, once
  (measured; a reload of an unchanged config adds nothing, and later ones do
  not either).  A leak per reload still shows: a 30-minute soak reloads 60
  times.  The reference is the highest RSS seen during the warm-up (not its
  last sample, which may sit in a dip of the allocator); every later sample,
  and the one after settling, must stay within 1 MiB above it.  A leak of one
  2 KiB cluster per thousand packets at 50 000 packets/s would pass that
  within 10 s.
* **Zones back to baseline.** After the load stopped and settled, every zone's
  ``used`` equals its value before the load.  ``free`` (cached items) is
  recorded but not judged: caches fill under load and are kept on purpose,
  bounded by the zone limits.
* **No loss outside a reload.** Every lost packet must have been sent within a
  reload window, from ``reload_before`` (1 s) before a SIGHUP to
  ``reload_after`` (3 s) after it.  The loss of each interval is exact; the
  receiver dates it to 100 ms (``loss_at``, see soakload), and each dated
  bucket must touch a window.  A sample without dates (a record made
  otherwise) is judged by its interval: it must overlap a window.  A reload
  that failed is a failure too, and so is a sample taken after the router
  was gone.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from forwarder import netns as nn
from forwarder.control import ControlError

log = logging.getLogger("forwarder.soak")

SCHEMA = "mbuma-soak/1"
MIB = 1 << 20

# (tunable, its default, the other value the soak sets it to)
TUNABLES: tuple[tuple[str, int, int], ...] = (
    ("net.inet.icmp.icmplim", 200, 300),
    ("net.inet6.icmp6.errppslimit", 100, 150),
    ("net.link.ether.inet.request_ppslimit", 100, 150),
    ("net.inet6.icmp6.nd6_ns_ppslimit", 100, 150),
    ("net.link.ether.inet.max_age", 1200, 900),
    ("net.link.ether.inet.maxhold", 16, 32),
    ("net.inet.ip.ttl", 64, 60),
)
ADDRESSES = 8                                                     # h3's churned addresses
RELOAD_ROUTE = {"prefix": "198.51.100.0/24", "via": "10.3.0.2"}   # in every other config
RELOAD_TUNABLE = "net.inet6.icmp6.nd6_delay"                      # 5 and 6 in turn


# --- the record ---------------------------------------------------------------------------

@dataclass
class Sample:
    """One interval: its span (seconds since the load started), the loss in it
    (by family too), and the router as it was at its end."""
    t_start: float
    t_end: float
    sent: int
    received: int
    lost: int
    rss_bytes: int | None                     # None: the router was gone
    zones: dict[str, dict[str, int]]          # name -> {"used": n, "cached": n}
    by_family: dict[str, dict[str, int]] = field(default_factory=dict)
    reloads: list[float] = field(default_factory=list)   # SIGHUPs within the interval
    where: dict[str, Any] = field(default_factory=dict)  # where packets went missing
    loss_at: list[list[float]] = field(default_factory=list)  # [t, packets]: when (100 ms)


@dataclass
class Reload:
    t: float                  # seconds since the load started
    ok: bool
    detail: str = ""


@dataclass
class SoakRecord:
    """Everything a soak measured; :func:`verdict` judges it, JSON keeps it."""
    samples: list[Sample]
    reloads: list[Reload]
    baseline_zones: dict[str, int]            # used, before any load
    final_zones: dict[str, int]               # used, after the load and the settling
    final_rss_bytes: int | None = None
    settle_s: float = 0.0
    rate_pps: float | None = None
    capacity: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)

    def to_json(self, failures: Sequence[str] | None = None) -> dict[str, Any]:
        doc = {"schema": SCHEMA, **asdict(self)}
        if failures is not None:
            doc["verdict"] = {"pass": not failures, "failures": list(failures),
                              "criteria": asdict(Criteria())}
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "SoakRecord":
        d = {k: v for k, v in doc.items() if k not in ("schema", "verdict")}
        d["samples"] = [Sample(**s) for s in d["samples"]]
        d["reloads"] = [Reload(**r) for r in d["reloads"]]
        return cls(**d)


# --- the verdict ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Criteria:
    warmup_fraction: float = 0.2
    rss_growth_bytes: int = MIB
    reload_before: float = 1.0
    reload_after: float = 3.0


def warmup_end(samples: Sequence[Sample], reloads: Sequence[Reload] = (),
               c: Criteria = Criteria()) -> int:
    """How many samples the warm-up takes: those ending within the first
    ``warmup_fraction`` of the load's duration, at least one, and at least
    up to the one the first reload falls in."""
    if not samples:
        return 0
    limit = samples[0].t_start + c.warmup_fraction * (samples[-1].t_end - samples[0].t_start)
    if reloads:
        first = min(r.t for r in reloads)
        limit = max(limit, next((s.t_end for s in samples if s.t_end >= first), limit))
    return max(1, sum(1 for s in samples if s.t_end <= limit))


def verdict(rec: SoakRecord, c: Criteria = Criteria()) -> list[str]:
    """The reasons the soak failed; empty when it passed (module docstring)."""
    out: list[str] = []
    samples = rec.samples
    if not samples:
        return ["no samples"]
    for s in samples:
        if s.rss_bytes is None:
            out.append(f"router gone at t={s.t_end:.1f} s")
    # RSS flat after the warm-up
    n = warmup_end(samples, rec.reloads, c)
    warm = [s.rss_bytes for s in samples[:n] if s.rss_bytes is not None]
    later = [(s.t_end, s.rss_bytes) for s in samples[n:] if s.rss_bytes is not None]
    if rec.final_rss_bytes is not None:
        later.append((samples[-1].t_end + rec.settle_s, rec.final_rss_bytes))
    if not warm or not samples[n:]:
        out.append(f"too short to judge RSS: {len(samples)} samples, {n} of them warm-up")
    else:
        ref = max(warm)
        t, top = max(later, key=lambda x: x[1])
        if top - ref > c.rss_growth_bytes:
            out.append(f"RSS grew after the warm-up: {top / MIB:.2f} MiB at t={t:.1f} s, "
                       f"{(top - ref) / MIB:.2f} MiB above the warm-up's {ref / MIB:.2f} MiB "
                       f"(allowed {c.rss_growth_bytes / MIB:.2f} MiB)")
    # zones back to baseline
    for name in sorted(set(rec.baseline_zones) | set(rec.final_zones)):
        a, b = rec.baseline_zones.get(name), rec.final_zones.get(name)
        if a != b:
            out.append(f"zone {name}: {b} used after the load, {a} before "
                       f"(settled for {rec.settle_s:.1f} s)")
    # loss only around reloads
    windows = [(r.t - c.reload_before, r.t + c.reload_after) for r in rec.reloads]
    for s in samples:
        if not s.lost:
            continue
        if s.loss_at:               # dated: each 100 ms bucket must touch a window
            bad = [(t, n) for t, n in s.loss_at
                   if not any(lo <= t + 0.1 and t <= hi for lo, hi in windows)]
            if bad:
                n = int(sum(n for _, n in bad))
                out.append(f"{n} of {s.sent} packets lost in {s.t_start:.1f}-{s.t_end:.1f} s "
                           f"(at {', '.join(f'{t:.1f}' for t, _ in bad[:5])}"
                           f"{' ...' if len(bad) > 5 else ''} s), no reload near")
        elif not any(lo <= s.t_end and s.t_start <= hi for lo, hi in windows):
            out.append(f"{s.lost} of {s.sent} packets lost in {s.t_start:.1f}-{s.t_end:.1f} s, "
                       "no reload near")
    for r in rec.reloads:
        if not r.ok:
            out.append(f"reload at t={r.t:.1f} s failed: {r.detail}")
    return out


# --- the plot ---------------------------------------------------------------------------------

def plot(rec: SoakRecord, path: str | Path, failures: Sequence[str] = ()) -> None:
    """PNG: RSS with the warm-up and its allowance, zones used and cached, and
    loss per interval with the reloads marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = Criteria()
    s = rec.samples
    x = [v.t_end for v in s]
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    a1.plot(x, [(v.rss_bytes or 0) / MIB for v in s], "o-", ms=3, label="router RSS")
    n = warmup_end(s, rec.reloads, c)
    if s:
        a1.axvspan(s[0].t_start, s[n - 1].t_end, color="grey", alpha=0.2, label="warm-up")
        warm = [v.rss_bytes for v in s[:n] if v.rss_bytes]
        if warm:
            a1.axhline((max(warm) + c.rss_growth_bytes) / MIB, color="r", ls="--",
                       label="allowed (+1 MiB)")
    a1.set_ylabel("RSS (MiB)")
    a1.legend(loc="lower right")
    a1.grid(alpha=0.3)
    names = sorted({z for v in s for z in v.zones})
    for name in names:
        used = [v.zones.get(name, {}).get("used", 0) for v in s]
        cached = [v.zones.get(name, {}).get("cached", 0) for v in s]
        if any(used) or any(cached) or rec.baseline_zones.get(name):
            line, = a2.plot(x, used, "o-", ms=3, label=f"{name} used")
            a2.plot(x, cached, ":", color=line.get_color(), label=f"{name} cached")
    a2.set_ylabel("zone items")
    a2.legend(loc="upper left", fontsize="small", ncol=2)
    a2.grid(alpha=0.3)
    dated = [(t, n) for v in s for t, n in v.loss_at]
    undated = [v for v in s if v.lost and not v.loss_at]
    if dated:
        a3.bar([t for t, _ in dated], [n for _, n in dated], width=0.1, align="edge",
               color="r", label="lost (per 100 ms)")
    if undated:
        a3.bar([v.t_start for v in undated], [v.lost for v in undated],
               width=[v.t_end - v.t_start for v in undated], align="edge", color="r",
               alpha=0.5, label="lost (per interval)")
    if not dated and not undated:
        a3.text(0.5, 0.5, "no loss", transform=a3.transAxes, ha="center", va="center")
    for i, r in enumerate(rec.reloads):
        a3.axvspan(r.t - c.reload_before, r.t + c.reload_after, color="orange", alpha=0.25,
                   label="reload window" if i == 0 else None)
        for ax in (a1, a2):
            ax.axvline(r.t, color="orange", lw=0.8)
    a3.set_ylabel("packets lost")
    a3.set_xlabel("time since the load started (s)")
    a3.legend(loc="upper right")
    a3.grid(alpha=0.3)
    rate = f"{rec.rate_pps / 1e3:.1f} kpps" if rec.rate_pps else "?"
    fig.suptitle(f"soak: {len(s)} samples, {rate}, {len(rec.reloads)} reloads: "
                 + ("PASS" if not failures else f"FAIL ({len(failures)})"))
    fig.tight_layout()
    fig.savefig(str(path), dpi=90)
    plt.close(fig)


# --- the run -----------------------------------------------------------------------------------

@dataclass
class SoakOptions:
    minutes: float = 30.0
    interval: float = 10.0
    rate: float | None = None          # packets/s, both families together; None: from the probe
    load: float = 0.5                  # without a rate: this fraction of the probe's delivered rate
    seed: int = 1
    flows: int = 128                   # per family
    probe_s: float = 2.0
    churn_every: float = 2.0
    sysctl_every: float = 5.0
    reload_every: float = 30.0
    settle: float = 15.0
    queue: int = 10_000                # the source link's queue, frames (0: the TAP's own)


def _zones(router: Any) -> dict[str, dict[str, int]]:
    return {z["name"]: {"used": int(z["used"]), "cached": int(z["free"])}
            for z in router.call("zones")}


def _counters(router: Any, streams: Sequence[Any], pid: int) -> dict[str, Any]:
    """What tells where a loss happened: the router's drop counters and
    rx_nobuf, the kernel's drops on each source link (frames the router did
    not read in time: its TAP's queue was full), and what the router had of
    the CPU (its CPU seconds and the times it was preempted) on a machine as
    busy as the load average says."""
    import psutil
    from forwarder.lab.path import link_stats_at
    st = router.call("stats")
    try:
        cpu = psutil.Process(pid).cpu_times()
        cpu_s = cpu.user + cpu.system
    except psutil.Error:
        cpu_s = 0.0
    preempted = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):      # every thread's
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    preempted += int(line.split()[1])
    src = {(x.path.src_netns, x.path.src_ifindex) for x in streams}
    dst = {(x.path.dst_netns, x.path.dst_ifindex) for x in streams}
    return {"drops": {k: v for k, v in st["drops"].items() if v},
            "rx_nobuf": sum(i["rx_nobuf"] for i in st["interfaces"]),
            "link_dropped": sum(link_stats_at(*k)["tx_dropped"] for k in src),
            "dst_dropped": sum(link_stats_at(*k)["rx_dropped"] for k in dst),
            "cpu_s": cpu_s, "preempted": preempted}


def _where(before: Mapping[str, Any], after: Mapping[str, Any], seg: Any) -> dict[str, Any]:
    drops = {k: v - before["drops"].get(k, 0) for k, v in after["drops"].items()}
    return {"router_drops": {k: v for k, v in drops.items() if v},
            "rx_nobuf": after["rx_nobuf"] - before["rx_nobuf"],
            "link_dropped": after["link_dropped"] - before["link_dropped"],
            "dst_dropped": after["dst_dropped"] - before["dst_dropped"],
            "router_cpu_s": round(after["cpu_s"] - before["cpu_s"], 2),
            "router_preempted": after["preempted"] - before["preempted"],
            "loadavg": os.getloadavg()[0],
            "source_refused": sum(r.refused for r in seg.streams),
            "receiver_drops": sum(r.receiver_drops for r in seg.streams)}


def drain(router: Any, timeout: float = 3.0) -> Callable[[], None]:
    """The segments' wait for frames in flight: until the router's count of
    frames read stays the same for 100 ms (with deep source queues, a router
    short of CPU may still hold a few hundred milliseconds of load when the
    senders stop), at most ``timeout`` seconds."""
    def read() -> int:
        return sum(i["rx_packets"] for i in router.call("stats")["interfaces"])

    def wait() -> None:
        deadline = time.monotonic() + timeout
        last = read()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = read()
            if now == last:
                return
            last = now
    return wait


def deepen_queues(streams: Sequence[Any], qlen: int) -> None:
    """The source links' queues towards the router, ``qlen`` frames (a TAP's
    default is 500: 12 ms at 40 000 packets/s), so that the router losing its
    CPU for a moment to other processes of a small, shared machine is absorbed
    instead of counted; a router that stops reading for longer still loses.
    Only the hosts' ends in the lab's own namespaces are changed."""
    for ns, idx in {(x.path.src_netns, x.path.src_ifindex) for x in streams}:
        with nn.iproute(ns) as ipr:
            ipr.link("set", index=idx, txqlen=qlen)
            got = ipr.get_links(idx)[0].get_attr("IFLA_TXQLEN")
        if got != qlen:
            raise RuntimeError(f"{ns}: the source link's queue is {got} frames, not {qlen}")


def _rss(pid: int) -> int | None:
    import psutil
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


class Chores:
    """The soak's side work on a schedule (seeded): neighbour churn, tunable
    changes and reloads.  :meth:`tick` does what is due; it is called from the
    load's segment loop, so the chores run while packets flow."""

    def __init__(self, lab: Any, opts: SoakOptions, t0: float) -> None:
        self.lab, self.opts, self.t0 = lab, opts, t0
        self.router = lab.router
        self.rng = random.Random(opts.seed)
        self.reloads: list[Reload] = []
        self.events = {"neighbour_deletes": 0, "address_changes": 0, "pings": 0,
                       "pings_failed": 0, "sysctl_sets": 0}
        self.next = {"churn": opts.churn_every, "sysctl": opts.sysctl_every,
                     "reload": opts.reload_every}
        self.step = 0
        self.tunables = {name: default for name, default, _ in TUNABLES}
        self.reload_variant = 0
        self.h1, self.h3 = lab.host("h1"), lab.host("h3")
        self.extra: tuple[IPv4Interface, IPv6Interface] | None = None

    def now(self) -> float:
        return time.time() - self.t0

    def tick(self) -> None:
        t = self.now()
        if t >= self.next["churn"]:
            self.next["churn"] = t + self.opts.churn_every
            self.churn()
        if t >= self.next["sysctl"]:
            self.next["sysctl"] = t + self.opts.sysctl_every
            self.sysctl()
        if t >= self.next["reload"]:
            self.next["reload"] = t + self.opts.reload_every
            self.reload()

    # neighbours
    def _delete(self, ip: object) -> None:
        cmd = "ndp.del" if ":" in str(ip) else "arp.del"
        with contextlib.suppress(ControlError):      # already gone: aged, or never learnt
            self.router.call(cmd, ip=str(ip))
            self.events["neighbour_deletes"] += 1
            log.debug("t=%.1f %s %s", self.now(), cmd, ip)

    def _ping(self, dst: object) -> None:
        fam = "-6" if ":" in str(dst) else "-4"
        cp = nn.run_in_netns(self.h1.netns, ["ping", fam, "-n", "-q", "-c", "1", "-W", "1",
                                             str(dst)], timeout=5)
        self.events["pings"] += 1
        if cp.returncode != 0:
            self.events["pings_failed"] += 1

    def churn(self) -> None:
        k = self.step % 5
        self.step += 1
        if k < 4:
            host = self.h1 if k < 2 else self.h3
            a = host.address if k % 2 == 0 else host.address6
            self._delete(a.ip)
            self._ping(self.h3.address.ip if k % 2 == 0 else self.h3.address6.ip)
            return
        # an address of h3 comes, the previous one goes: eight in turn, so that
        # each was new once within the warm-up (measured without load: the first
        # 200 churn steps over 40 new addresses grew the router's RSS by 190 KiB,
        # the next 600 steps over the same ones by 8 KiB)
        n = 10 + self.events["address_changes"] % ADDRESSES
        new = (IPv4Interface(f"10.3.0.{n}/24"), IPv6Interface(f"2001:db8:3::{n:x}/64"))
        with nn.iproute(self.h3.netns) as ipr:
            idx = ipr.link_lookup(ifname=self.h3.ifname)[0]
            for a in new:
                kw = {"flags": nn.IFA_F_NODAD} if a.version == 6 else {}
                ipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen,
                         **kw)
            if self.extra:
                for a in self.extra:
                    with contextlib.suppress(Exception):
                        ipr.addr("del", index=idx, address=str(a.ip),
                                 prefixlen=a.network.prefixlen)
        old, self.extra = self.extra, new
        self.events["address_changes"] += 1
        log.debug("t=%.1f h3 takes %s and %s%s", self.now(), *new,
                  f", gives up {old[0]} and {old[1]}" if old else "")
        for a in new:
            self._ping(a.ip)
        for a in old or ():
            self._delete(a.ip)

    def sysctl(self) -> None:
        name, default, other = self.rng.choice(TUNABLES)
        value = other if self.tunables[name] == default else default
        self.router.call("sysctl.set", assignments={name: value})
        self.tunables[name] = value
        self.events["sysctl_sets"] += 1
        log.debug("t=%.1f sysctl %s=%d", self.now(), name, value)

    # reloads
    def config_text(self, variant: int) -> str:
        from forwarder.lab.tomlwrite import to_toml
        routes = [RELOAD_ROUTE] if variant else []
        return to_toml(self.lab.config_doc(self.router.socket, routes=routes,
                                           sysctl={RELOAD_TUNABLE: 5 + variant}),
                       "generated by the soak (forwarder/lab/soak.py)")

    def reload(self) -> None:
        self.reload_variant ^= 1
        self.router.config.write_text(self.config_text(self.reload_variant))
        before = self.router.call("stats")["reloads"]
        t = self.now()
        self.router.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            now = self.router.call("stats")["reloads"]
            if now["ok"] > before["ok"]:
                self.reloads.append(Reload(t=t, ok=True))
                log.debug("t=%.1f reload (config variant %d) ok", t, self.reload_variant)
                return
            if now["failed"] > before["failed"]:
                self.reloads.append(Reload(t=t, ok=False, detail=str(now["last_error"])))
                return
            time.sleep(0.02)
        self.reloads.append(Reload(t=t, ok=False, detail="no reload counted within 5 s"))


def _format(s: Sample) -> str:
    fam = ", ".join(f"v{f} {d['lost']}" for f, d in sorted(s.by_family.items()))
    used = " ".join(f"{k.removeprefix('mbuf_') or 'mbuf'} {z['used']}/{z['cached']}"
                    for k, z in s.zones.items() if z["used"] or z["cached"])
    rss = "gone" if s.rss_bytes is None else f"{s.rss_bytes / MIB:.2f} MiB"
    w = s.where
    where = ", ".join(f"{k} {v}" for k, v in {**w.get("router_drops", {}),
                                               **{k: v for k, v in w.items()
                                                  if k != "router_drops"}}.items() if v)
    return (f"t={s.t_end:6.1f} s  rss {rss}  sent {s.sent}  lost {s.lost} ({fam}"
            + (f"; {where}" if s.lost and where else "") + f")  zones used/cached: {used or '-'}"
            + (f"  reload at {', '.join(f'{r:.1f}' for r in s.reloads)} s" if s.reloads else ""))


def run_soak(opts: SoakOptions) -> SoakRecord:
    """A lab, a router, the load and the chores for ``opts.minutes``; removed
    afterwards, on errors and Ctrl-C too.  Returns the record (not judged)."""
    from forwarder.lab.path import blackhole_replies, host_path
    from forwarder.lab.signals import cleanup_signals
    from forwarder.lab.soakload import Stream, run_segment
    from forwarder.lab.topology import make_lab, tear_down

    with cleanup_signals(), nn.Topology() as topo:
        workdir = Path(tempfile.mkdtemp(prefix=f"{topo.prefix}soak-"))
        lab = None
        try:
            lab = make_lab(topo, 3, ipv6=True)
            router = lab.start_router(workdir, header="generated by the soak")
            pid = int(router.call("hello")["pid"])
            log.info("router pid %d in %s; hosts %s", pid, lab.router_ns,
                     ", ".join(f"{h.name} {h.address.ip} {h.address6.ip}" for h in lab.hosts))
            streams = [Stream(host_path(lab, "h1", "h2", fam), flows=opts.flows).build()
                       for fam in (4, 6)]
            if opts.queue:
                deepen_queues(streams, opts.queue)
            baseline = {k: z["used"] for k, z in _zones(router).items()}
            with blackhole_replies(streams[0].path.dst_netns, 4), \
                    blackhole_replies(streams[0].path.dst_netns, 6):
                capacity = None
                rate = opts.rate
                if rate is None:
                    seg = run_segment(streams, None, opts.probe_s, drained=drain(router))
                    pps = seg.received / max(seg.end - seg.start, 1e-9)
                    capacity = {"seconds": seg.end - seg.start, "sent": seg.sent,
                                "received": seg.received, "delivered_pps": pps}
                    rate = pps * opts.load
                    log.info("capacity probe: %.0f pps delivered flat out over %.1f s; "
                             "soak at %.0f pps (%g of it)", pps, seg.end - seg.start, rate,
                             opts.load)
                    _wait_zones(router, baseline, opts.settle)
                samples: list[Sample] = []
                t0 = time.time()
                chores = Chores(lab, opts, t0)
                end = t0 + opts.minutes * 60
                while time.time() < end - 0.5:
                    dur = min(opts.interval, end - time.time())
                    before = _counters(router, streams, pid)
                    seg = run_segment(streams, rate, dur, chores.tick, drain(router))
                    alive = router.proc.poll() is None
                    a, b = seg.start - t0, seg.end - t0
                    s = Sample(t_start=round(a, 3), t_end=round(b, 3), sent=seg.sent,
                               received=seg.received, lost=seg.lost,
                               rss_bytes=_rss(pid) if alive else None,
                               zones=_zones(router) if alive else {},
                               by_family={str(r.family): r.as_dict() for r in seg.streams},
                               reloads=[r.t for r in chores.reloads
                                        if samples_end(samples) <= r.t < b],
                               where=_where(before, _counters(router, streams, pid), seg)
                               if alive else {},
                               loss_at=[[round(a + t, 1), n] for t, n in seg.loss_at()])
                    samples.append(s)
                    log.info("%s", _format(s))
            t = time.monotonic()
            final = _wait_zones(router, baseline, opts.settle)
            settle = time.monotonic() - t
            rec = SoakRecord(samples=samples, reloads=chores.reloads, baseline_zones=baseline,
                             final_zones=final, final_rss_bytes=_rss(pid), settle_s=settle,
                             rate_pps=rate, capacity=capacity,
                             options=asdict(opts), events=dict(chores.events))
            log.info("load stopped; zones used %s after %.1f s (before: %s); rss %.2f MiB; %s",
                     final, settle, baseline, (rec.final_rss_bytes or 0) / MIB, chores.events)
            return rec
        finally:
            tear_down(lab, topo, workdir,
                      lambda code, out: log.error("router exited %s:\n%s", code, out[-3000:]))


def samples_end(samples: Sequence[Sample]) -> float:
    """Where the next sample's reloads start: the previous sample's end."""
    return samples[-1].t_end if samples else float("-inf")


def _wait_zones(router: Any, baseline: Mapping[str, int], timeout: float) -> dict[str, int]:
    """Poll the zones until ``used`` is at ``baseline`` again (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        used = {k: z["used"] for k, z in _zones(router).items()}
        if used == dict(baseline) or time.monotonic() > deadline:
            return used
        time.sleep(0.2)


def judge(rec: SoakRecord, *, json_path: str | Path | None = None,
          png_path: str | Path | None = None,
          say: Callable[[str], None] = log.info) -> list[str]:
    """The verdict, written with the record to JSON and PNG when asked."""
    import json
    failures = verdict(rec)
    if json_path:
        Path(json_path).write_text(json.dumps(rec.to_json(failures), indent=1) + "\n")
    if png_path:
        plot(rec, png_path, failures)
    say("verdict: " + ("PASS" if not failures else "FAIL\n  " + "\n  ".join(failures)))
    return failures
