"""The lab's subcommands of `forwarder`: lab, loadgen and bench.

Their parsers are always there (`forwarder --help` lists them), so this module
imports nothing of the lab extra; each command first checks that the extra is
installed (:func:`forwarder.lab.missing`) and says which extra to install when
it is not, then imports what it runs.  An ImportError past that point is a real
defect and surfaces as one, with its traceback.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import textwrap
from ipaddress import ip_address
from typing import Any, Callable

from forwarder.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from forwarder.lab import EXTRA, INSTALL_HINT, missing
from forwarder.lab.signals import Terminated, cleanup_signals
from forwarder.lab.spec import (BENCH_ATTACH, BENCH_DEFAULT, BENCH_DOCKER, BENCH_SETUPS, FAMILIES,
                                MAX_DURATION, MIN_FRAME, PROTOCOLS, LoadgenError, LoadSpec)

EXIT_INTERRUPTED = 130         # 128 + SIGINT; the others are `forwarder`'s own
Command = Callable[[argparse.Namespace], int]


def needs_extra(run: Command) -> Command:
    """``run``, once the lab extra is found importable; else a message naming it."""
    @functools.wraps(run)
    def command(args: argparse.Namespace) -> int:
        absent = missing()
        if absent:
            print(f"forwarder {args.cmd}: needs the '{EXTRA}' extra, not installed here "
                  f"(no {', '.join(absent)}): {INSTALL_HINT}", file=sys.stderr)
            return EXIT_ERROR
        return run(args)
    return command


def _parser(sub: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    paragraphs = [*description.split("\n\n"), f"Needs the lab extra: {INSTALL_HINT}"]
    return sub.add_parser(name, help=f"{help_text} (the lab extra)",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          description="\n\n".join(textwrap.fill(p, 78) for p in paragraphs))


def _say(message: str) -> None:
    print(message, flush=True)


def _needs_root(cmd: str) -> bool:
    if os.geteuid() != 0:
        print(f"forwarder {cmd}: needs root (network namespaces and TAP devices)",
              file=sys.stderr)
        return True
    return False


# --- forwarder lab -----------------------------------------------------------------------

@needs_extra
def cmd_lab(args: argparse.Namespace) -> int:
    from forwarder import netns as nn
    from forwarder.lab.demo import run_lab
    if _needs_root("lab"):
        return EXIT_ERROR
    spec = LoadSpec(proto=args.proto, sizes=args.size or str(MIN_FRAME[args.family]),
                    flows=args.flows, rate=args.rate or None, duration=args.duration,
                    family=args.family)
    try:
        spec.check()
    except LoadgenError as e:
        print(f"forwarder lab: {e}", file=sys.stderr)
        return EXIT_USAGE
    made: list[str] = []
    try:
        with cleanup_signals():
            return run_lab(args.config, spec, _say, made, keep=args.keep, json_path=args.json,
                           plot_path=args.plot, attach=args.attach, with_bgp=args.bgp)
    except KeyboardInterrupt as e:
        left = [n for n in made if nn.netns_exists(n)]
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"\nforwarder lab: {what}; removed the lab"
              + (f" (left behind: {left})" if left else ""), flush=True)
        return EXIT_INTERRUPTED
    except ImportError:
        raise
    except (ValueError, RuntimeError, OSError) as e:
        print(f"forwarder lab: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - config and loadgen errors: one line, no traceback
        print(f"forwarder lab: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR


def add_lab(sub: Any) -> None:
    p = _parser(sub, "lab", "build a lab topology, ping, trace, load-test, report",
                "Build the lab of lab.toml in private network namespaces (router + one host "
                "per link), ping across it, trace the route, run a short load test, print a "
                "summary and netstat -m, then remove everything.")
    p.add_argument("-c", "--config", help="lab topology (a router config; default: the "
                                          "shipped lab.toml, also configs/lab.toml)")
    p.add_argument("--keep", action="store_true",
                   help="leave the lab up until Ctrl-C and print how to enter each host")
    p.add_argument("--attach", action="store_true",
                   help="wire it as a container runtime does: the router attaches to veths "
                   "eth1, eth2, ... handed to its namespace after it started")
    p.add_argument("--bgp", action="store_true",
                   help="give the router a control plane: FRR's bgpd there peers with BIRD on "
                   "the second host, which announces 200 prefixes (needs frr and bird2)")
    g = p.add_argument_group("load test")
    g.add_argument("-P", "--proto", choices=PROTOCOLS, default="udp")
    g.add_argument("--family", type=int, choices=FAMILIES, default=4,
                   help="load over IPv4 or IPv6 (default 4)")
    g.add_argument("-s", "--size", default=None, metavar="N|imix",
                   help="frame size (default 64; IPv6 78)")
    g.add_argument("-f", "--flows", type=int, default=8)
    g.add_argument("-r", "--rate", type=float, default=50000, metavar="PPS",
                   help="offered packets/s (default 50000; 0 = flat out)")
    g.add_argument("-d", "--duration", type=float, default=2.0, metavar="S",
                   help="seconds (default 2)")
    g.add_argument("--json", metavar="FILE", help="also write the load result as JSON")
    g.add_argument("--plot", metavar="FILE", help="also write a PNG of the load test")
    p.set_defaults(func=cmd_lab)


# --- forwarder loadgen ----------------------------------------------------------------

@needs_extra
def cmd_loadgen(args: argparse.Namespace) -> int:
    from forwarder.lab.path import host_path, resolve_path
    from forwarder.lab.topology import lab_up
    spec = LoadSpec(proto=args.proto, sizes=args.size or str(MIN_FRAME[args.family]),
                    flows=args.flows, rate=args.rate, duration=args.duration, count=args.count,
                    procs=args.procs, src_addrs=args.src_addrs, family=args.family)
    try:
        spec.check()
    except LoadgenError as e:
        print(f"forwarder loadgen: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        family = ip_address(args.dst_ip).version if args.dst_ip else args.family
    except ValueError:
        family = 0
    if family != args.family:
        print(f"forwarder loadgen: --dst-ip {args.dst_ip}: not an IPv{args.family} address "
              f"(--family {args.family})", file=sys.stderr)
        return EXIT_USAGE
    if bool(args.src) != bool(args.dst):
        print("forwarder loadgen: give both --src and --dst (or neither: a lab is built)",
              file=sys.stderr)
        return EXIT_USAGE
    rates = None
    if args.sweep_rates:
        try:
            rates = [float(x) for x in args.sweep_rates.split(",") if x]
        except ValueError:
            print("forwarder loadgen: --sweep-rates wants PPS,PPS,...", file=sys.stderr)
            return EXIT_USAGE
    say = (lambda _m: None) if args.quiet else _say
    try:
        with cleanup_signals():
            if args.src:
                path = resolve_path(args.src, args.dst, args.dst_ip,
                                    router_socket=args.router_socket, family=args.family)
                return _loadgen(spec, path, args, rates, say)
            with lab_up(args.config, report=lambda what, text: say(f"lab: {what:<12} {text}")
                        ) as lab:
                return _loadgen(spec, host_path(lab, args.src_host, args.dst_host, args.family),
                                args, rates, say)
    except KeyboardInterrupt:
        print("\nforwarder loadgen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except LoadgenError as e:
        print(f"forwarder loadgen: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyError as e:
        print(f"forwarder loadgen: no lab host {e}", file=sys.stderr)
        return EXIT_USAGE


def _loadgen(spec: LoadSpec, path: Any, args: argparse.Namespace, rates: list[float] | None,
             say: Callable[[str], None]) -> int:
    from forwarder.lab.report import Progress, format_result, format_sweep, write_json
    from forwarder.lab.run import run_load, sweep
    swept = bool(args.sweep or rates)
    if swept:
        say(f"rate sweep {path.src_netns} -> {path.dst_ip}: {spec.proto} {spec.sizes} B, "
            f"{spec.flows} flows, {spec.duration:g} s per step")
        doc = sweep(spec, path, rates, steps=args.sweep or 8, say=say)
        print(format_sweep(doc))
    else:
        doc = run_load(spec, path, progress=None if args.quiet else Progress("load", spec.duration))
        print(format_result(doc))
    if args.json:
        write_json(doc, args.json)
        say(f"JSON: {args.json}")
    if args.plot:
        from forwarder.lab.plot import plot_result, plot_sweep     # matplotlib: only when asked
        (plot_sweep if swept else plot_result)(doc, args.plot)
        say(f"plot: {args.plot}")
    return EXIT_OK


def add_loadgen(sub: Any) -> None:
    p = _parser(sub, "loadgen", "scapy-built load between lab hosts",
                "Send scapy-built frames from one lab namespace to another and measure loss, "
                "reordering and latency.\n\nWithout --src/--dst a lab is built from lab.toml "
                "(as `forwarder lab` does), the load runs from --from to --to, and the lab is "
                "removed again.  With --src/--dst it runs between namespaces of a lab that is "
                "already up (`forwarder lab --keep`).")
    w = p.add_argument_group("where")
    w.add_argument("--src", metavar="NETNS", help="source namespace (of a running lab)")
    w.add_argument("--dst", metavar="NETNS", help="destination namespace")
    w.add_argument("--dst-ip", help="destination address (default: the first in --dst)")
    w.add_argument("--router-socket", metavar="PATH",
                   help="a router's control socket: report its drop counters")
    w.add_argument("-c", "--config", help="lab config when building a lab (default: lab.toml)")
    w.add_argument("--from", dest="src_host", default="h1", help="lab host sending (default h1)")
    w.add_argument("--to", dest="dst_host", default="h2", help="lab host receiving (default h2)")
    g = p.add_argument_group("load")
    g.add_argument("-P", "--proto", choices=PROTOCOLS, default="udp",
                   help="default: udp (icmp: ICMPv6 echo with --family 6)")
    g.add_argument("--family", type=int, choices=FAMILIES, default=4,
                   help="IPv4 or IPv6 frames (default 4)")
    g.add_argument("-s", "--size", default=None, metavar="N[,N..]|imix",
                   help="frame size(s) in bytes with FCS (64..1518; IPv6 from 78, RFC 5180), "
                   "or imix; default the smallest: 64, IPv6 78")
    g.add_argument("-f", "--flows", type=int, default=8, help="flows (default 8)")
    g.add_argument("-r", "--rate", type=float, default=None, metavar="PPS",
                   help="offered packets/s (token bucket); default: flat out")
    g.add_argument("-d", "--duration", type=float, default=5.0, metavar="S",
                   help=f"seconds (default 5; at most {MAX_DURATION:.0f})")
    g.add_argument("-n", "--count", type=int, default=None,
                   help="packets at most (the duration still bounds the run)")
    g.add_argument("--procs", type=int, default=1, help="sender processes (default 1)")
    g.add_argument("--src-addrs", type=int, default=1,
                   help="distinct source addresses the flows use (default 1)")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write the result as JSON")
    o.add_argument("--plot", metavar="FILE", help="write a PNG plot")
    o.add_argument("--sweep", nargs="?", type=int, const=8, default=0, metavar="STEPS",
                   help="rate sweep: probe flat out, then STEPS rates up to 125 %% of it")
    o.add_argument("--sweep-rates", metavar="PPS,PPS,..", help="rate sweep over these rates")
    o.add_argument("-q", "--quiet", action="store_true", help="only the result")
    p.set_defaults(func=cmd_loadgen)


# --- forwarder bench --------------------------------------------------------------------

@needs_extra
def cmd_bench(args: argparse.Namespace) -> int:
    from forwarder.lab import bench
    from forwarder.lab.report import write_json
    if _needs_root("bench"):
        return EXIT_ERROR
    default = BENCH_DOCKER if args.docker else BENCH_ATTACH if args.attach else BENCH_DEFAULT
    only = tuple(x for x in (args.only.split(",") if args.only else default) if x)
    bad = [x for x in only if x not in bench.SETUPS]
    if bad:
        print(f"forwarder bench: --only: unknown {bad} ({', '.join(bench.SETUPS)})",
              file=sys.stderr)
        return EXIT_USAGE
    if args.quick:
        p = bench.Params(reps=args.reps or 3, duration=args.duration or 0.4, iperf_seconds=1,
                         iperf_bytes="8M", family=args.family)
    else:
        p = bench.Params(reps=args.reps or 3, duration=args.duration or 2.0,
                         iperf_seconds=args.iperf_seconds, family=args.family)
    if p.reps < 1 or not 0 < p.duration <= 60:
        print("forwarder bench: --reps >= 1 and 0 < --duration <= 60", file=sys.stderr)
        return EXIT_USAGE
    m = bench.machine()
    _say(f"forwarder bench: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, "
         f"Python {m['python']}; IPv{p.family}; {p.reps} runs per figure")
    try:
        with cleanup_signals():
            doc = bench.run_bench(p, only, say=_say)
    except KeyboardInterrupt:
        print("\nforwarder bench: interrupted; everything removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        print(f"forwarder bench: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
    doc["command"] = "forwarder " + " ".join(sys.argv[1:])
    print()
    print(bench.format_table(doc))
    print(f"({doc['seconds']:.0f} s)")
    if args.json:
        write_json(doc, args.json)
        print(f"JSON: {args.json}")
    return EXIT_OK


def add_bench(sub: Any) -> None:
    p = _parser(sub, "bench", "side-by-side benchmark",
                "The same load through (a) this router, (b) Linux kernel forwarding, (c) a "
                "C read()/write() loop between two TAPs and (d) the same loop on TAPs with "
                "offloads (virtio-net header, TSO): 64-byte and IMIX pps, iperf3 Gbit/s with "
                "1 and 4 streams, latency at half load, CPU per packet, peak RSS; the router's "
                "figures also as ratios to (b), (c) and (d).  With --family 6, all of it over "
                "IPv6 (78-byte frames in place of 64: RFC 5180).  Numbers and method: "
                "benchmarks/README.md.")
    p.add_argument("--family", type=int, choices=FAMILIES, default=4,
                   help="IPv4 or IPv6 through every setup (default 4)")
    p.add_argument("--attach", action="store_true",
                   help="the container wirings instead: this router on TAPs moved into its "
                   "hosts (a), attached to veths through packet sockets (e) or through TAPs "
                   "and tc (e'), its TAPs bridged with veths (f)")
    p.add_argument("--docker", action="store_true",
                   help="this router in its container image under a private Docker engine (g) "
                   "against the same router and wiring outside it (e); builds the image from "
                   "the source checkout, or finds it cached (benchmarks/README.md)")
    p.add_argument("--quick", action="store_true",
                   help="short runs (0.4 s loads, 8 MB iperf3): for tests, not for numbers")
    p.add_argument("--reps", type=int, default=None, help="runs per figure (default 3)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="seconds per load run (default 2)")
    p.add_argument("--iperf-seconds", type=float, default=3.0, metavar="S")
    p.add_argument("--only", metavar="LIST", help="some of " + ",".join(BENCH_SETUPS))
    p.add_argument("--json", metavar="FILE", help="write everything as JSON")
    p.set_defaults(func=cmd_bench)


def add_parsers(sub: Any) -> None:
    """The lab, loadgen and bench subcommands, on `forwarder`'s subparsers."""
    add_lab(sub)
    add_loadgen(sub)
    add_bench(sub)
