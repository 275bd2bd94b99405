"""A load run, and a sweep of runs at rising rates.

:func:`run_load` builds and checks the templates, forks one receiver in the
destination namespace and ``spec.procs`` senders in the source namespace (each
owns the flows ``f % procs == p``), starts the senders at one instant, and waits
for their results, bounded in time however the children behave.  Around it, the
kernel's counters of both links and the router's counters (with its socket) are
read, and the destination's replies to the load are routed to a blackhole so
that they do not load the path back.  The result follows
:data:`forwarder.lab.report.RESULT_SCHEMA`.

:func:`sweep` steps the offered rate (by default up to 125 % of a flat-out
probe); the saturation point is the highest delivered rate with loss <= 0.1 %.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import asdict
from typing import Any, Callable, Sequence

from forwarder.control import Client
from forwarder.lab.frames import build_template, verify_template
from forwarder.lab.path import PathInfo, blackhole_replies, link_stats_at
from forwarder.lab.receiver import receiver_main
from forwarder.lab.report import SCHEMA, SWEEP_SCHEMA, Progress, fmt_rate, fmt_us
from forwarder.lab.sender import sender_main
from forwarder.lab.spec import BUCKET_NS, LoadgenError, LoadSpec, parse_sizes


def _router_stats(sock: str | None) -> dict | None:
    if not sock:
        return None
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


def reap(children: Sequence[Any]) -> None:
    """Join the load's child processes; terminate one still running after 2 s."""
    for p in children:
        p.join(2)
        if p.is_alive():
            p.terminate()
            p.join(2)


def recv_results(conns: list[Any], procs: list[Any], what: str, timeout: float) -> list[Any]:
    """Each child's ("ok"|"error", value) from its pipe, in order; LoadgenError
    when one fails, exits without a word, or is silent past ``timeout``."""
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


def run_load(spec: LoadSpec, path: PathInfo, *, progress: Progress | None = None) -> dict:
    """Run one load from path.src to path.dst; return the result (schema SCHEMA)."""
    spec.check()
    pattern, imix = parse_sizes(spec.sizes, spec.family)
    if path.family != spec.family:
        raise LoadgenError(f"an IPv{spec.family} load on a path to {path.dst_ip}")
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
            raw = build_template(spec.proto, s, f, src_mac=path.src_mac,
                                 dst_mac=path.next_hop_mac, dst_ip=path.dst_ip,
                                 src_addrs=spec.src_addrs, ttl=spec.ttl, family=spec.family)
            if f < 2:                   # the others differ only in addresses and ports
                verify_template(spec.proto, raw, f, spec.family)
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
    before_src = link_stats_at(path.src_netns, path.src_ifindex)
    before_dst = link_stats_at(path.dst_netns, path.dst_ifindex)
    before_router = _router_stats(path.router_socket)
    try:
        with blackhole_replies(path.dst_netns, spec.family):
            rconn, rchild = ctx.Pipe(duplex=False)
            receiver = ctx.Process(target=receiver_main, name="loadgen-rx", daemon=True,
                                   args=(rchild, path.dst_netns, path.dst_if, spec.proto,
                                         spec.flows, t0_val, recv_val, rstop,
                                         spec.duration + 30, spec.family))
            receiver.start()
            children.append(receiver)
            rchild.close()
            sconns, senders = [], []
            for p in range(procs_n):
                c, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=sender_main, name=f"loadgen-tx{p}", daemon=True,
                                   args=(child, path.src_netns, path.src_if, bufs, flow_of,
                                         scheds[p], spec.proto, spec.flows, counts[p],
                                         per_proc_rate, spec.duration, start_evt, t0_val,
                                         sent_vals[p], stop_evt, spec.family))
                proc.start()
                child.close()
                children.append(proc)
                senders.append(proc)
                sconns.append(c)
            recv_results([rconn], [receiver], "receiver", 10)
            recv_results(sconns, senders, "sender", 10)
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
            results = recv_results(sconns, senders, "sender", 10)
            time.sleep(0.05)            # frames in flight
            rstop.set()
            rres = recv_results([rconn], [receiver], "receiver", 15)[0]
            if progress is not None:
                progress.done()
    except BaseException:
        stop_evt.set()
        rstop.set()
        raise
    finally:
        reap(children)
    after_src = link_stats_at(path.src_netns, path.src_ifindex)
    after_dst = link_stats_at(path.dst_netns, path.dst_ifindex)
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
        "spec": {"proto": spec.proto, "family": spec.family,
                 "sizes": sorted(set(pattern)), "imix": imix,
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



def sweep(spec: LoadSpec, path: PathInfo, rates: Sequence[float] | None = None, steps: int = 8,
          *, say: Callable[[str], None] = lambda _m: None,
          progress: bool | None = None) -> dict:
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
            f"p99 {fmt_us(r['latency_us']['p99'])}")
    ok = [p for p in points if p["loss"]["ratio"] <= 0.001]
    sat = max(ok, key=lambda p: p["received"]["pps"]) if ok else None
    peak = max(points, key=lambda p: p["received"]["pps"])
    return {"schema": SWEEP_SCHEMA, "spec": points[0]["spec"] if points else None,
            "probe": probe, "points": points,
            "saturation_pps": sat["received"]["pps"] if sat else None,
            "peak_pps": peak["received"]["pps"]}

