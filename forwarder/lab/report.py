"""What a load run reports: its JSON schema, tables for the terminal, JSON files,
and a progress bar while it runs.

A result (:func:`forwarder.lab.run.run_load`) follows :data:`RESULT_SCHEMA`
(``"schema": SCHEMA``, checked by :func:`check_schema`); a sweep
(:func:`forwarder.lab.run.sweep`) is ``SWEEP_SCHEMA`` with one result per step.
The loss is placed where it happened: refused by the full source link queue,
in the router (its drop counters, when its socket is known), or at the
receiver (its ring was full).
"""
from __future__ import annotations

import json
import sys
from typing import Any

SCHEMA = "forwarder.loadgen/1"
SWEEP_SCHEMA = "forwarder.loadgen.sweep/1"

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
RESULT_SCHEMA: dict[str, Any] = {
    "schema": str,
    "spec": {"proto": str, "family": int, "sizes": list, "imix": bool, "flows": int, "rate_pps": _OPT_NUM,
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


def fmt_rate(pps: float) -> str:
    """Packets per second, scaled: pps, kpps, Mpps."""
    if pps >= 1e6:
        return f"{pps / 1e6:.2f} Mpps"
    if pps >= 1e3:
        return f"{pps / 1e3:.1f} kpps"
    return f"{pps:.0f} pps"


def fmt_us(v: float | None) -> str:
    """Microseconds, or milliseconds from 1000 on; "-" for none."""
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.1f} µs"


def fmt_offered(pps: float | None) -> str:
    """An offered rate: "at 50.0 kpps", or "flat out" for none."""
    return "flat out" if pps is None else f"at {fmt_rate(pps)}"


def fmt_sizes(spec: dict) -> str:
    """A result's frame sizes: "imix" or "64,1518"."""
    return "imix" if spec.get("imix") else ",".join(map(str, spec.get("sizes") or []))


def fmt_drops(drops: dict[str, int]) -> str:
    """The router's drop counters, most first; "none" for none."""
    return ", ".join(f"{n} {v:,}" for n, v in sorted(drops.items(), key=lambda kv: -kv[1])) \
        or "none"


def format_result(r: dict) -> str:
    """`forwarder loadgen`'s table of one result."""
    s, rc, lat = r["sent"], r["received"], r["latency_us"]
    spec = r["spec"]
    lines = [f"{spec['proto']}{'6' if spec['family'] == 6 else ''} {fmt_sizes(spec)} B, {spec['flows']} flows, "
             f"{fmt_offered(spec['rate_pps'])}, "
             f"{r['path']['src_netns']} -> {r['path']['dst_ip']} ({r['path']['dst_netns']})",
             f"{'':<14}{'offered':>16}{'delivered':>16}",
             f"{'packets':<14}{s['packets']:>16,}{rc['packets']:>16,}",
             f"{'rate':<14}{fmt_rate(s['pps']):>16}{fmt_rate(rc['pps']):>16}",
             f"{'Mbit/s':<14}{s['mbps']:>16.1f}{rc['mbps']:>16.1f}",
             f"{'loss':<14}{r['loss']['packets']:>16,} ({100 * r['loss']['ratio']:.3f} %; "
             f"{r['loss']['source_link']:,} refused by the full source link queue, "
             f"{r['loss']['receiver']:,} at the receiver)",
             f"{'reordered':<14}{r['reordered']:>16,}",
             f"{'latency':<14}p50 {fmt_us(lat['p50'])}   p99 {fmt_us(lat['p99'])}   "
             f"max {fmt_us(lat['max'])}   ({lat['samples']:,} samples)"]
    k = r["kernel"]
    lines.append(f"{'kernel':<14}src {r['path']['src_if']} tx {k['src']['tx_packets']:,} "
                 f"dropped {k['src']['tx_dropped']:,}; dst {r['path']['dst_if']} rx "
                 f"{k['dst']['rx_packets']:,}; receiver ring drops "
                 f"{k['receiver_socket']['drops']:,}")
    if r.get("router") is not None:
        rt = r["router"]
        lines.append(f"{'router':<14}forwarded {rt['forwarded']:,}; drops: "
                     f"{fmt_drops(rt['drops'])}")
    return "\n".join(lines)


def format_sweep(sw: dict) -> str:
    """One row per step of a sweep, and its saturation point."""
    lines = [f"{'offered':>12}{'delivered':>12}{'loss %':>9}{'p50':>11}{'p99':>11}"]
    for p in sw["points"]:
        lines.append(f"{fmt_rate(p['sent']['pps']):>12}{fmt_rate(p['received']['pps']):>12}"
                     f"{100 * p['loss']['ratio']:>9.2f}{fmt_us(p['latency_us']['p50']):>11}"
                     f"{fmt_us(p['latency_us']['p99']):>11}")
    sat = sw["saturation_pps"]
    lines.append(f"saturation (loss <= 0.1 %): {fmt_rate(sat) if sat else 'not reached'}; "
                 f"peak delivered: {fmt_rate(sw['peak_pps'])}")
    return "\n".join(lines)


def format_summary(r: dict) -> str:
    """The lab demo's box: offered, delivered, loss, latency and the router's drops."""
    lat = r["latency_us"]
    drops = r["router"]["drops"] if r["router"] else {}
    rows = [("offered", f"{fmt_rate(r['sent']['pps'])}  ({r['sent']['packets']:,} packets, "
                        f"{r['sent']['mbps']:.1f} Mbit/s)"),
            ("delivered", f"{fmt_rate(r['received']['pps'])}  ({r['received']['packets']:,} "
                          f"packets, {r['received']['mbps']:.1f} Mbit/s)"),
            ("loss", f"{r['loss']['packets']:,} packets ({100 * r['loss']['ratio']:.3f} %), "
                     f"{r['reordered']:,} reordered"),
            ("latency", f"p50 {fmt_us(lat['p50'])}   p99 {fmt_us(lat['p99'])}   "
                        f"max {fmt_us(lat['max'])}"),
            ("router drops", fmt_drops(drops))]
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * 64 + "+"
    out = [line]
    for k, v in rows:
        out.append(f"| {k:<{width}} | {v:<62} |")
    out.append(line)
    return "\n".join(out)


def write_json(doc: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


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

