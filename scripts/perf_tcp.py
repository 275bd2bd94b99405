#!/usr/bin/env python3
"""Where the router's cycles go under TCP: iperf3 through the bench's router
setup while `perf record` samples the router process.

    sudo python3 scripts/perf_tcp.py [--seconds 6] [--streams 1] [--top 30] [--keep DIR]

Prints iperf3's rate, then perf's view by shared object and by symbol
(self time, all of the router's threads: the forwarding thread is nearly all
of it).  Needs root, iperf3 and perf (Debian: linux-perf).  Everything runs in
namespaces the bench creates and removes.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from forwarder.lab import bench  # noqa: E402

log = logging.getLogger("perf_tcp")


def perf_report(data: Path, sort: str, top: int) -> str:
    cp = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
                         "--sort", sort, "--percent-limit", "0.5"],
                        capture_output=True, text=True, timeout=300)
    rows = [ln for ln in cp.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    return "\n".join(rows[:top])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--keep", type=Path, help="keep perf.data here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not 1 <= args.seconds <= 60 or not 1 <= args.streams <= 16:
        ap.error("--seconds 1..60, --streams 1..16")
    if shutil.which("perf") is None or shutil.which("iperf3") is None:
        log.error("needs perf and iperf3")
        return 1
    work = Path(tempfile.mkdtemp(prefix="perf-tcp-"))
    data = (args.keep or work) / "perf.data"
    data.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, float] = {}
    with bench.setup_router(work) as st:
        def load() -> None:
            result["gbps"] = bench.iperf3(st, args.seconds, None, streams=args.streams)
        t = threading.Thread(target=load)
        t.start()
        subprocess.run(["perf", "record", "-q", "-g", "-p", str(st.pid), "-o", str(data), "--",
                        "sleep", str(max(1.0, args.seconds - 1.5))],
                       capture_output=True, timeout=args.seconds + 60)
        t.join(args.seconds + 60)
    log.info("iperf3 TCP through the router, %d stream(s): %.2f Gbit/s", args.streams,
             result.get("gbps", float("nan")))
    log.info("\n-- by shared object (self) --\n%s", perf_report(data, "dso", args.top))
    log.info("\n-- by symbol (self) --\n%s", perf_report(data, "dso,symbol", args.top))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
