#!/usr/bin/env python3
"""Soak: a real router under mixed load for minutes; RSS, zones and loss sampled.

    python3 scripts/soak.py --minutes 30 [--json soak.json] [--png soak.png]
                            [--rate PPS | --load FRACTION] [--seed N] [--interval S]
                            [--reload-every S] [--sysctl-every S] [--churn-every S]
                            [--flows N] [--queue FRAMES] [-v]

A dual-stack lab (router and three hosts in namespaces of their own) carries an
IPv4 and an IPv6 UDP stream from h1 to h2 (64/78 to 1500-byte frames, 128 flows
each) at half the rate a 2-second flat-out probe delivered (``--load``; or ``--rate``),
while neighbour entries are deleted and re-learnt, an address of h3 comes and
goes, tunables change and the config is reloaded (SIGHUP).  Every interval
(10 s) a line: the router's RSS, the loss in the interval, the zones' used and
cached items.  Pass: RSS flat after the warm-up (within 1 MiB), zones back to
their baseline once the load stopped, no loss outside the seconds around a
reload.  Exit status 0 on pass, 1 on fail, 2 when the soak could not run.
Design and criteria: forwarder/lab/soak.py.  Needs root and /dev/net/tun.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from forwarder.lab.soak import SoakOptions, judge, run_soak  # noqa: E402

log = logging.getLogger("forwarder.soak")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = SoakOptions()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=d.minutes,
                   help=f"load duration (default {d.minutes:g})")
    p.add_argument("--interval", type=float, default=d.interval,
                   help=f"seconds per sample (default {d.interval:g})")
    p.add_argument("--rate", type=float, default=None,
                   help="packets/s, both families together (default: --load of the probe's)")
    p.add_argument("--load", type=float, default=d.load, metavar="FRACTION",
                   help=f"without --rate: this fraction of the probe's rate (default {d.load:g})")
    p.add_argument("--seed", type=int, default=d.seed, help="the chores' order")
    p.add_argument("--flows", type=int, default=d.flows, help="flows per family")
    p.add_argument("--reload-every", type=float, default=d.reload_every, metavar="S")
    p.add_argument("--sysctl-every", type=float, default=d.sysctl_every, metavar="S")
    p.add_argument("--churn-every", type=float, default=d.churn_every, metavar="S")
    p.add_argument("--queue", type=int, default=d.queue, metavar="FRAMES",
                   help=f"the source link's queue (default {d.queue}; 0: the TAP's own)")
    p.add_argument("--json", metavar="PATH", help="write the samples and the verdict")
    p.add_argument("--png", metavar="PATH", help="write the plot")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    if not 0 < a.minutes <= 24 * 60 or not 1 <= a.interval <= 600:
        p.error("--minutes: more than 0, at most a day; --interval: 1..600 s")
    if a.rate is not None and not 0 < a.rate <= 1e8:
        p.error("--rate: more than 0 packets/s")
    if not 0 < a.load <= 1:
        p.error("--load: more than 0, at most 1")
    if not 1 <= a.flows <= 1024:
        p.error("--flows: 1..1024")
    if not 0 <= a.queue <= 1_000_000:
        p.error("--queue: 0..1000000 frames")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    if a.verbose:
        logging.getLogger("forwarder").setLevel(logging.DEBUG)
    opts = SoakOptions(minutes=a.minutes, interval=a.interval, rate=a.rate, load=a.load,
                       seed=a.seed,
                       flows=a.flows, reload_every=a.reload_every,
                       sysctl_every=a.sysctl_every, churn_every=a.churn_every,
                       queue=a.queue)
    try:
        rec = run_soak(opts)
    except KeyboardInterrupt:
        log.error("interrupted; everything removed")
        return 2
    except Exception as e:  # noqa: BLE001 - said once, with the cause
        log.error("the soak could not run: %s: %s", type(e).__name__, e,
                  exc_info=a.verbose)
        return 2
    return 1 if judge(rec, json_path=a.json, png_path=a.png) else 0


if __name__ == "__main__":
    sys.exit(main())
