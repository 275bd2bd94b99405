"""PNGs of a load run and of a rate sweep (matplotlib, Agg: no display needed).

A run: offered and delivered rate over time (100 ms buckets) beside the latency
distribution (log scale, p50 and p99 marked).  A sweep: delivered vs offered
with the line where they are equal, the saturation point, and the loss.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from forwarder.lab.report import fmt_rate, fmt_sizes, fmt_us  # noqa: E402


def plot_result(r: dict, path: str) -> None:
    """PNG: offered vs delivered rate over time, and the latency distribution."""
    ts = r["timeseries"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    n = len(ts["offered_pps"])
    x = [(i + 0.5) * ts["interval_s"] for i in range(n)]
    ax1.plot(x, [v / 1e3 for v in ts["offered_pps"]], label="offered", drawstyle="steps-mid")
    ax1.plot(x, [v / 1e3 for v in ts["delivered_pps"]], label="delivered",
             drawstyle="steps-mid")
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("kpps")
    ax1.set_title("rate over time")
    ax1.grid(alpha=0.3)
    ax1.legend()
    h = r["latency_histogram"]
    if h["counts"]:
        edges = h["edges_us"]
        ax2.stairs(h["counts"], edges, fill=True, alpha=0.6)
        ax2.set_xscale("log")
        lat = r["latency_us"]
        for q in ("p50", "p99"):
            if lat[q] is not None:
                ax2.axvline(lat[q], color="k" if q == "p50" else "r", ls="--",
                            label=f"{q} {fmt_us(lat[q])}")
        ax2.legend()
    ax2.set_xlabel("one-way latency (µs)")
    ax2.set_ylabel("packets")
    ax2.set_title("latency distribution")
    spec = r["spec"]
    fig.suptitle(f"{spec['proto']} {fmt_sizes(spec)} B, "
                 f"{spec['flows']} flows: {fmt_rate(r['sent']['pps'])} offered, "
                 f"{fmt_rate(r['received']['pps'])} delivered, "
                 f"loss {100 * r['loss']['ratio']:.2f} %")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_sweep(sw: dict, path: str) -> None:
    """PNG: delivered vs offered rate over the steps of a sweep, and the loss."""
    off = [p["sent"]["pps"] / 1e3 for p in sw["points"]]
    dlv = [p["received"]["pps"] / 1e3 for p in sw["points"]]
    loss = [100 * p["loss"]["ratio"] for p in sw["points"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(off, dlv, "o-", label="delivered")
    top = max(off + dlv + [1])
    ax.plot([0, top], [0, top], ":", color="grey", label="delivered = offered")
    if sw["saturation_pps"]:
        ax.axhline(sw["saturation_pps"] / 1e3, color="g", ls="--",
                   label=f"saturation {fmt_rate(sw['saturation_pps'])}")
    ax.set_xlabel("offered (kpps)")
    ax.set_ylabel("delivered (kpps)")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(off, loss, "s--", color="r", label="loss %")
    ax2.set_ylabel("loss (%)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left")
    spec = sw["spec"] or {}
    ax.set_title(f"rate sweep: {spec.get('proto')} {fmt_sizes(spec)} B, "
                 f"{spec.get('flows')} flows")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

