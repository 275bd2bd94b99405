#!/usr/bin/env python3
"""Fuzz the router with structure-aware mutations of valid frames.

    scripts/fuzz.py --frames 10000000                 # a real router in a namespace lab
    scripts/fuzz.py --target dataplane --frames 1e6   # the dataplane in this process
    scripts/fuzz.py --seed 7 --start 2000000 --frames 10000 --check-every 10000   # replay

Seeded and reproducible: frame i of run --seed S is always the same frame.
Every --check-every frames (default 1 000 000) and at the end it checks that
the router is alive and healthy, that every frame it read is accounted for,
that the zones' USED are back at the baseline and that a ping passes
(forwarder/lab/fuzz.py says how).  On a failure it writes the frames since
the last good check as a pcap into --out, prints the command that replays
them, and exits 1.  --json writes the run's result.  As root (namespaces,
TAPs); the lab is removed on exit, also on errors and Ctrl-C.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from forwarder import netns as nn  # noqa: E402
from forwarder.lab import fuzz  # noqa: E402

log = logging.getLogger("forwarder.fuzz")


def count(text: str) -> int:
    """10000000, 1e7 or 10M."""
    t = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--target", choices=("lab", "dataplane"), default="lab",
                    help="a router process in a namespace lab (default), or the dataplane here")
    ap.add_argument("--frames", type=count, default=1_000_000, help="how many (default 1M)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", type=count, default=0, help="the first frame's index in the run")
    ap.add_argument("--check-every", type=count, default=1_000_000)
    ap.add_argument("--out", type=Path, default=Path("."), help="where a failure's pcap goes")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    progress = fuzz.Progress(args.frames)
    if args.target == "dataplane":
        target: fuzz.Target = fuzz.InProcess()
        topo = None
    else:
        if os.geteuid() != 0:
            ap.error("the lab target needs root (namespaces and TAPs)")
        topo = nn.Topology()
        work = tempfile.TemporaryDirectory(prefix="fuzz-")
    try:
        if topo is not None:
            log.info("starting the router (%s)", work.name)
            target = fuzz.LabTarget(Path(work.name), topo)
        log.info("fuzzing the %s: %d frames from %d, seed %d, checked every %d", args.target,
                 args.frames, args.start, args.seed, args.check_every)
        res = fuzz.fuzz(target, args.frames, seed=args.seed, start=args.start,
                        check_every=args.check_every, out_dir=args.out, name=args.target,
                        progress=progress)
        target.close()
    finally:
        if topo is not None:
            topo.close()
            work.cleanup()
    if args.json:
        args.json.write_text(res.to_json())
    rate = res.frames / res.seconds / 1e3 if res.seconds else 0.0
    log.info("%d frames (%d sent, %d refused by the sender's kernel) in %.0f s (%.1f kframes/s), "
             "%d checks: %s", res.frames, res.sent, res.refused, res.seconds, rate,
             len(res.checkpoints), "ok" if res.ok else f"FAILED: {res.failed}")
    if not res.ok:
        log.error("the frames since the last good check: %s; replay: %s", res.pcap, res.replay)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
