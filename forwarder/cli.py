"""The `forwarder` command: one entry point, one subcommand per job.

  forwarder run -c CONFIG [-o NAME=VALUE ...] [--frr] [--log-format text|json]
                                                  run a router (foreground; --frr: and FRR)
  forwarder sysctl [-a | -d NAME | NAME[=VALUE] ...]
  forwarder netstat -m | vmstat -z | stats
  forwarder route [list | add PREFIX (via GW | dev IF | TYPE) | del PREFIX]
  forwarder arp -a | -d IP [-i IF]
  forwarder ndp -a | -d IP [-i IF]
  forwarder health | reload
  forwarder trace start [-n N] [-i IF] [--filter EXPR] | trace show | trace stop
                                                  per-stage packet trace (forwarder/trace.py)
  forwarder capture IF|drops [-w FILE|-] [-n N] [-d SECONDS] [-Q in|out|inout] [--filter EXPR]
                                                  pcap/pcapng of a port or of drops (capture.py)
  forwarder debug stall SECONDS | debug resume
  forwarder lab | loadgen | bench                 the lab (pip install 'mbuma-forwarder[lab]')

Every command but run talks to a running router, chosen with -c CONFIG,
--name NAME or --socket PATH (default: the only socket in /run/forwarder);
--timeout SECONDS bounds the wait for its answer (default 10).  The commands
that read take --json: one JSON document, its schema in forwarder/schemas/
(docs/json.md).

Exit status: 0 done; 1 the router refused (unknown tunable, bad or out of
range value, boot-only tunable at runtime, no such route, broken config on
reload, ...) and nothing changed; 2 a usage error (the command line has the
wrong shape); 3 the router cannot be reached (no socket, nobody listening,
no answer in time, not a forwarder socket).  `health` exits 0 or 1 only
(container health checks reserve other codes).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from forwarder.logformat import FORMATS, json_line
from forwarder.logformat import configure as configure_logging

log = logging.getLogger("forwarder")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# --- choosing the router ----------------------------------------------------------

def socket_path(args: argparse.Namespace) -> Path:
    from forwarder.config import SOCKET_DIR
    if getattr(args, "socket", None):
        return Path(args.socket)
    if getattr(args, "name", None):
        return SOCKET_DIR / f"{args.name}.sock"
    if getattr(args, "config", None):
        from forwarder.config import ConfigError, load_config
        try:
            return load_config(args.config).router.socket
        except ConfigError as e:
            raise CliError(str(e), EXIT_USAGE) from None
    socks = sorted(SOCKET_DIR.glob("*.sock")) if SOCKET_DIR.is_dir() else []
    if len(socks) == 1:
        return socks[0]
    if not socks:
        raise CliError(f"no router socket in {SOCKET_DIR}; is a router running? "
                       "(select one with -c CONFIG, --name NAME or --socket PATH)",
                       EXIT_UNREACHABLE)
    raise CliError(f"several routers in {SOCKET_DIR} ({', '.join(s.stem for s in socks)}): "
                   "choose one with --name NAME", EXIT_USAGE)


def call(args: argparse.Namespace, command: str, **kw: Any) -> Any:
    from forwarder.control import Client, ControlError
    try:
        return Client(socket_path(args), timeout=getattr(args, "timeout", None) or 10.0
                      ).call(command, **kw)
    except ControlError as e:
        raise CliError(str(e), EXIT_UNREACHABLE if e.kind == "unreachable" else EXIT_ERROR) from None


def emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> int:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    else:
        out = text(data)
        if out:
            print(out)
    return EXIT_OK


# --- run ---------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from forwarder import mbufs
    from forwarder.config import ConfigError, load_config
    from forwarder.control import ControlError, ControlServer
    from forwarder.router import Router

    try:
        config = load_config(args.config, args.option or [])
    except ConfigError as e:
        return _run_failed(args, f"forwarder: {e}", EXIT_USAGE)
    except FileNotFoundError:
        return _run_failed(args, f"forwarder: {args.config}: no such file", EXIT_USAGE)
    if not args.verbose:
        logging.getLogger().setLevel(config.router.log_level.upper())

    frr = None
    if args.frr:
        from forwarder.frr import Frr, FrrError
        try:
            frr = Frr(config)
            frr.check()
        except FrrError as e:
            return _run_failed(args, f"forwarder run --frr: {e}", EXIT_ERROR)
    router = Router(config, overrides=tuple(args.option or ()),
                    manage_log_level=not args.verbose)
    stop = threading.Event()
    hup = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    try:
        server = ControlServer(config.router.socket, router)
    except (ControlError, OSError) as e:
        return _run_failed(args, f"forwarder: control socket: {e}", EXIT_ERROR)
    metrics = None
    try:
        router.start()
        server.start()
        if config.metrics.address:
            from forwarder.metrics import start_metrics
            metrics = start_metrics(router, *config.metrics.address)
        log.info("router %s running (pid %d, socket %s)", config.router.name,
                 os.getpid(), config.router.socket)
        if frr is not None:                # the mirrors are there: FRR's interfaces
            frr.start()
        while not stop.wait(0.2):
            if frr is not None:
                frr.poll()
            if hup.is_set():
                hup.clear()
                log.info("SIGHUP: reloading %s", config.path)
                try:
                    router.reload()
                except Exception:  # noqa: BLE001 - logged and counted by reload()
                    pass
            if not router.running:
                log.error("dataplane thread exited; stopping")
                return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - TAP, netns (pyroute2), metrics port, limits
        log.error("cannot start: %s", e or type(e).__name__)
        return EXIT_ERROR
    finally:
        if frr is not None:                # first: its sessions close through the dataplane
            frr.stop()
        if metrics is not None:
            metrics.shutdown()
        server.close()
        router.stop()
    leaked = mbufs.in_use()
    if args.log_format == "json":           # the final netstat -m as one more JSON line
        print(json_line("forwarder", "netstat -m at exit", netstat_m=mbufs.netstat_dict()),
              flush=True)
    else:
        print(mbufs.netstat_text())
    if leaked:
        log.error("mbufs still in use at exit: %s", leaked)
        return EXIT_ERROR
    return EXIT_OK


def _run_failed(args: argparse.Namespace, message: str, code: int) -> int:
    """`forwarder run` cannot start: say why on stderr, in the log format."""
    if args.log_format == "json":
        log.error("%s", message)
    else:
        print(message, file=sys.stderr)
    return code


# --- sysctl ------------------------------------------------------------------------

def cmd_sysctl(args: argparse.Namespace) -> int:
    from forwarder.sysctl import SysctlError, format_get, format_set, parse_assignment
    sets = [n for n in args.names if "=" in n]
    gets = [n for n in args.names if "=" not in n]
    if args.describe:
        if sets:
            raise CliError("sysctl -d takes names, not NAME=VALUE", EXIT_USAGE)
        if not gets and not args.all:
            raise CliError("sysctl -d needs a NAME (or -a for every tunable)", EXIT_USAGE)
        infos = call(args, "sysctl.get", names=gets) if gets else call(args, "sysctl.list")
        return emit(args, infos, lambda d: "\n".join(
            i["description"] if args.values_only else f"{i['name']}: {i['description']}"
            for i in d))
    if sets and gets:
        raise CliError("give either NAME ... or NAME=VALUE ..., not both", EXIT_USAGE)
    if args.all and args.names:
        raise CliError("sysctl -a lists every tunable; it takes no NAME", EXIT_USAGE)
    if sets:
        assignments: dict[str, str] = {}
        for text in sets:
            try:
                name, value = parse_assignment(text)
            except SysctlError as e:
                raise CliError(str(e), EXIT_USAGE) from None
            if name in assignments:
                raise CliError(f"{name} given twice", EXIT_USAGE)
            assignments[name] = value
        changed = call(args, "sysctl.set", assignments=assignments)
        data = [{"name": n, "old": o, "new": v} for n, o, v in changed]
        return emit(args, data, lambda d: "\n".join(
            f"{x['old']} -> {x['new']}" if args.values_only
            else format_set(x["name"], x["old"], x["new"]) for x in d))
    infos = call(args, "sysctl.get", names=gets) if gets else call(args, "sysctl.list")
    return emit(args, infos, lambda d: "\n".join(
        str(i["value"]) if args.values_only else format_get(i["name"], i["value"]) for i in d))


# --- observability -------------------------------------------------------------------

def cmd_netstat(args: argparse.Namespace) -> int:
    from allocator_pyx.netstat import netstat_m, netstat_m_dict
    if not args.m:
        raise CliError("netstat: only -m (mbuf statistics) is supported", EXIT_USAGE)
    zones = call(args, "zones")
    if args.json:
        print(json.dumps(netstat_m_dict(zones), indent=2))
        return EXIT_OK
    print(netstat_m(zones))
    return EXIT_OK


def cmd_vmstat(args: argparse.Namespace) -> int:
    from allocator_pyx.netstat import vmstat_z
    if not args.z:
        raise CliError("vmstat: only -z (zone statistics) is supported", EXIT_USAGE)
    zones = call(args, "zones")
    return emit(args, zones, vmstat_z)


def format_stats(s: dict) -> str:
    lines = [f"{'interface':<12}{'rx pkts':>12}{'rx bytes':>14}{'rx nobuf':>10}{'rx err':>8}"
             f"{'tx pkts':>12}{'tx bytes':>14}{'tx err':>8}"]
    for i in s["interfaces"]:
        lines.append(f"{i['name']:<12}{i['rx_packets']:>12}{i['rx_bytes']:>14}{i['rx_nobuf']:>10}"
                     f"{i['rx_errors']:>8}{i['tx_packets']:>12}{i['tx_bytes']:>14}{i['tx_errors']:>8}")
    for i in s["interfaces"]:
        a = i.get("attach")
        if a is not None and i["link"] == "down":
            lines.append(f"{i['name']}: link down: {a['link']} is not there (gone {a['losses']} "
                         "times); what would leave by it is dropped as interface_down")
        elif i.get("link", "up") != "up":
            lines.append(f"{i['name']}: device {i['link']}, no longer polled")
        if a is not None:
            lines.append(f"{i['name']}: attached to {a['link']} (joined {a['joins']} times, "
                         f"gone {a['losses']})")
    lines.append("")
    lines.append(f"{'interface':<12}{'offloads':<38}{'rx gso':>10}{'segments':>12}"
                 f"{'tx gso':>10}{'segments':>12}{'sw gso':>10}{'sw csum':>10}")
    for i in s["interfaces"]:
        offl = ",".join(i["offloads"]) or ("none" if i["vnet_hdr"] else "off")
        if i["offloads_refused"]:
            offl += f" (refused {','.join(i['offloads_refused'])})"
        lines.append(f"{i['name']:<12}{offl:<38}{i['rx_gso']:>10}{i['rx_gso_segments']:>12}"
                     f"{i['tx_gso']:>10}{i['tx_gso_segments']:>12}{i['gso_software']:>10}"
                     f"{i['csum_software']:>10}")
    lines.append("")
    lines.append(f"forwarded {s['forwarded']}, delivered locally {s['delivered_local']}, "
                 f"fragments created {s['fragments_created']}")
    ic = s["icmp"]
    lines.append(f"icmp: {ic['errors_sent']} errors sent ({ic['unreachable']} unreachable, "
                 f"{ic['time_exceeded']} time exceeded), {ic['echo_replies']} echo replies, "
                 f"{ic['ratelimited']} rate-limited")
    a = s["arp"]
    lines.append(f"arp: {a['received']} received, {a['requests_sent']} requests sent, {a['replies_sent']} replies sent, "
                 f"{a['entries']} entries")
    n = s["nd6"]
    lines.append(f"nd6: {n['received']} received, {n['solicitations_sent']} solicitations sent "
                 f"({n['probes_sent']} unicast probes), "
                 f"{n['advertisements_sent']} advertisements sent, {n['entries']} entries; "
                 f"icmp6: {s['icmp6']['echo_replies']} echo replies")
    reasons = s.get("drop_reasons")
    if reasons:             # stats -v: every reason, with what it means
        lines.append("drops:")
        width = max(map(len, reasons))
        for k in reasons:
            lines.append(f"  {s['drops'].get(k, 0):>12} {k:<{width}}  {reasons[k]}")
    else:
        drops = {k: v for k, v in s["drops"].items() if v}
        lines.append("drops:" + ("" if drops else " none"))
        for k, v in sorted(drops.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {v:>12} {k}")
    r = s.get("reloads")
    if r:
        lines.append(f"reloads: {r['ok']} ok, {r['failed']} failed"
                     + (f" (last error: {r['last_error']})" if r["last_error"] else ""))
    ri = s.get("route_import")
    if ri:
        skipped = ", ".join(f"{v} {k}" for k, v in sorted(ri["skipped"].items()))
        lines.append(f"route import from {ri['netns']}: {ri['routes']} routes; {ri['imported']} "
                     f"installed, {ri['removed']} removed, {ri['resyncs']} resyncs, "
                     f"{ri['overruns']} overruns" + (f"; skipped: {skipped}" if skipped else ""))
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    if args.describe:
        return emit(args, call(args, "stats", describe=True), format_stats)
    return emit(args, call(args, "stats"), format_stats)


def format_routes(routes: list[dict]) -> str:
    lines = [f"{'destination':<20}{'gateway':<17}{'interface':<12}{'type':<12}origin"]
    for r in routes:
        origin = r.get("origin", "")
        if r.get("shadows"):
            origin += f" (over {r['shadows']})"
        paths = r.get("paths")
        if paths:                   # multipath: a line per next hop, as `ip route`'s nexthop lines
            lines.append(f"{r['prefix']:<20}{'-':<17}{'-':<12}{r['type']:<12}{origin}")
            lines.extend(f"{'':<20}{p['via'] or '-':<17}{p['interface'] or '-':<12}"
                         f"weight {p['weight']}" for p in paths)
            continue
        lines.append(f"{r['prefix']:<20}{r['via'] or '-':<17}{r['interface'] or '-':<12}"
                     f"{r['type']:<12}{origin}")
    return "\n".join(lines)


def cmd_route(args: argparse.Namespace) -> int:
    words = args.words
    if not words or words[0] in ("list", "show"):
        return emit(args, call(args, "route.list"), format_routes)
    op, rest = words[0], words[1:]
    if op in ("del", "delete"):
        if len(rest) != 1:
            raise CliError("usage: forwarder route del PREFIX", EXIT_USAGE)
        call(args, "route.del", prefix=rest[0])
        print(f"route {rest[0]} deleted")
        return EXIT_OK
    if op == "add":
        if not rest:
            raise CliError("usage: forwarder route add PREFIX (via GW | dev IF | blackhole "
                           "| unreachable | prohibit)", EXIT_USAGE)
        prefix, spec = rest[0], rest[1:]
        kw: dict[str, str] = {}
        if len(spec) == 2 and spec[0] == "via":
            kw["via"] = spec[1]
        elif len(spec) == 2 and spec[0] in ("dev", "interface"):
            kw["interface"] = spec[1]
        elif len(spec) == 1 and spec[0] in ("blackhole", "unreachable", "prohibit"):
            kw["type"] = spec[0]
        else:
            raise CliError(f"route add {prefix}: expected 'via GW', 'dev IF' or a type "
                           "(blackhole, unreachable, prohibit)", EXIT_USAGE)
        r = call(args, "route.add", prefix=prefix, **kw)
        print(f"route {r['prefix']} added")
        return EXIT_OK
    raise CliError(f"route: unknown operation {op!r} (list, add, del)", EXIT_USAGE)


def format_arp(entries: list[dict]) -> str:
    lines = []
    for e in entries:
        mac = e["mac"] or "(incomplete)"
        exp = f"expires in {e['expires_in']:.0f} seconds" if e["expires_in"] is not None \
            else f"{e['held']} packets held"
        lines.append(f"? ({e['ip']}) at {mac} on {e['interface']} {exp} [ethernet]")
    return "\n".join(lines)


def neighbours(args: argparse.Namespace, table: str, fmt: Callable[[list[dict]], str]) -> int:
    """arp(8) and ndp(8): -a lists the table, -d IP [-i IF] deletes."""
    if args.delete and args.all:
        raise CliError(f"{table}: -a lists, -d deletes: give one of them", EXIT_USAGE)
    if args.interface and not args.delete:
        raise CliError(f"{table}: -i IF goes with -d IP", EXIT_USAGE)
    if args.delete:
        n = call(args, f"{table}.del", ip=args.delete, interface=args.interface)
        print(f"{args.delete} ({n} entr{'y' if n == 1 else 'ies'}) deleted")
        return EXIT_OK
    return emit(args, call(args, f"{table}.list"), fmt)


def cmd_arp(args: argparse.Namespace) -> int:
    return neighbours(args, "arp", format_arp)


# ndp(8)'s letters for RFC 4861's states.
NDP_STATE_LETTERS = {"incomplete": "I", "reachable": "R", "stale": "S", "delay": "D", "probe": "P"}


def format_ndp(entries: list[dict]) -> str:
    """ndp(8) -a's columns: neighbour, link-layer address, interface, expiry
    (the state's deadline), state (ndp(8)'s letter: I, R, S, D, P)."""
    lines = [f"{'Neighbor':<40}{'Linklayer Address':<20}{'Netif':<10}{'Expire':<10}S"]
    for e in entries:
        exp = f"{e['expires_in']:.0f}s" if e["expires_in"] is not None else "-"
        state = NDP_STATE_LETTERS.get(e["state"], "?")
        if e["state"] == "incomplete":
            state += f" ({e['held']} held)"
        lines.append(f"{e['ip']:<40}{e['mac'] or '(incomplete)':<20}{e['interface']:<10}"
                     f"{exp:<10}{state}")
    return "\n".join(lines)


def cmd_ndp(args: argparse.Namespace) -> int:
    return neighbours(args, "ndp", format_ndp)


def cmd_health(args: argparse.Namespace) -> int:
    try:
        h = call(args, "health")
    except CliError as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(h))
    elif h["healthy"]:
        print(f"healthy: dataplane went round {h['progress_age']:.3f} s ago"
              + (f"; still waiting for {h['waiting_for']}" if h.get("waiting_for") else ""))
    elif not h.get("ready", True):
        print(f"unhealthy: not ready: waiting for {h['waiting_for']}", file=sys.stderr)
    else:
        age = h["progress_age"]
        print("unhealthy: dataplane " + ("not running" if age is None else
                                         f"stalled for {age:.1f} s"), file=sys.stderr)
    return EXIT_OK if h["healthy"] else EXIT_ERROR


def cmd_debug(args: argparse.Namespace) -> int:
    if args.what == "stall":
        if args.seconds is None:
            raise CliError("usage: forwarder debug stall SECONDS", EXIT_USAGE)
        r = call(args, "debug.stall", seconds=args.seconds)
        return emit(args, r, lambda d: f"dataplane stalled for {d['seconds']:g} s "
                                       "(forwarder debug resume ends it)")
    if args.seconds is not None:
        raise CliError("usage: forwarder debug resume", EXIT_USAGE)
    r = call(args, "debug.resume")
    return emit(args, r, lambda d: "dataplane resumed" if d["resumed"] else "dataplane was not stalled")


def cmd_trace(args: argparse.Namespace) -> int:
    """trace start | show | stop: VPP's trace add / show trace / clear trace."""
    if args.what != "start" and (args.count is not None or args.interface or args.filter):
        raise CliError("-n, -i and --filter go with trace start", EXIT_USAGE)
    if args.what == "start":
        from forwarder.trace import DEFAULT_COUNT
        r = call(args, "trace.start", count=DEFAULT_COUNT if args.count is None else args.count,
                 interface=args.interface, filter=args.filter)
        on = f" on {r['interface']}" if r["interface"] else ""
        flt = f" matching {r['filter']!r}" if r["filter"] else ""
        print(f"tracing the next {r['count']} packets{on}{flt} (forwarder trace show)")
        return EXIT_OK
    if args.what == "stop":
        r = call(args, "trace.stop")
        left = f" ({r['remaining']} not taken)" if r["remaining"] else ""
        print(f"trace stopped{left}; forwarder trace show has what was traced")
        return EXIT_OK
    from forwarder.trace import format_text
    return emit(args, call(args, "trace.show"), format_text)


def cmd_capture(args: argparse.Namespace) -> int:
    """capture IF|drops: tcpdump's -w/-c/-Q/-s, bounded by count and time."""
    from forwarder import capture as cap
    from forwarder.pcap import PcapngWriter, PcapWriter
    fmt = args.format or ("pcapng" if args.interface == "drops" else "pcap")
    out = None
    state: dict[str, Any] = {}

    def header(h: dict) -> None:
        nonlocal out
        what = "drops" if h["drops"] else f"{h['interface']} ({h['direction']})"
        log.info("capturing %s: up to %d packets or %g s", what, h["count"], h["timeout"])
        state.update(h)
        if args.write is None:
            return
        f = sys.stdout.buffer if args.write == "-" else open(args.write, "wb")
        state["file"] = f
        out = (PcapngWriter(f, h["snaplen"], h["interfaces"]) if fmt == "pcapng"
               else PcapWriter(f, h["snaplen"]))

    def records(rs: list[cap.Record]) -> None:
        off = state["clock_offset_ns"]
        for r in rs:
            if out is None:
                print(cap.line(r, state["interfaces"], off), flush=True)
            else:
                out.packet(r.time_ns + off, r.data, r.origlen, r.ifindex,
                           cap.direction_flag(r), cap.comment(r))
        if out is not None and args.write == "-":
            state["file"].flush()           # `| tcpdump -r -` sees packets as they come

    kw = {"interface": args.interface, "count": args.count, "timeout": args.duration,
          "direction": args.direction, "filter": args.filter}
    if args.snaplen:
        kw["snaplen"] = args.snaplen
    try:
        totals = cap.stream(socket_path(args), kw, header, records, args.timeout)
    except cap.CaptureError as e:
        raise CliError(str(e)) from None
    finally:
        f = state.get("file")
        if f is not None and f is not sys.stdout.buffer:
            f.close()
        elif f is not None:
            f.flush()
    print(f"{totals['captured']} packets captured ({totals['ended']}), "
          f"{totals['lost']} lost (capture ring full), "
          f"{totals['filtered']} not matching the filter", file=sys.stderr)
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    changes = call(args, "reload")
    print("reloaded: " + ("; ".join(changes) if changes else "no changes"))
    return EXIT_OK


# --- the parser ------------------------------------------------------------------------

def _positive_seconds(text: str) -> float:
    from forwarder.dataplane import MAX_STALL
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v <= MAX_STALL:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 < SECONDS <= {MAX_STALL}")
    return v


def build_parser(extras: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``extras=False`` leaves out the lab, loadgen and
    bench commands (forwarder.lab.cli): a `forwarder health` run by a container
    health check need not even look at them.  Their parsers need nothing of the
    lab extra; the commands themselves say when it is missing."""
    p = argparse.ArgumentParser(prog="forwarder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    which = argparse.ArgumentParser(add_help=False)
    g = which.add_argument_group("which router")
    g.add_argument("-c", "--config", help="the router's config file")
    g.add_argument("--name", help="the router's name ([router] name)")
    g.add_argument("--socket", help="the control socket's path")
    g.add_argument("--timeout", type=_positive_seconds, default=10.0, metavar="SECONDS",
                   help="give up when the router does not answer in time (default 10)")
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="JSON output")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("run", help="run a router in the foreground")
    r.add_argument("-c", "--config", required=True, help="config file (TOML)")
    r.add_argument("-o", "--option", action="append", metavar="NAME=VALUE",
                   help="override a tunable at boot (repeatable; kept across reloads)")
    r.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="more logging than [router] log_level (-vv: debug)")
    r.add_argument("--frr", action="store_true",
                   help="also run FRR's daemons (/etc/frr/daemons, frr.conf) in [control_plane] "
                        "netns once the mirrors are there, and stop them first "
                        "(forwarder/frr.py)")
    r.add_argument("--log-format", choices=FORMATS, default="text",
                   help="text (the default) or json: one JSON object a line on stderr, with "
                        "time (RFC 3339, UTC), level, logger, message and exception "
                        "(forwarder/logformat.py)")

    s = sub.add_parser("sysctl", parents=[which, js], help="read or set tunables")
    s.add_argument("-a", "--all", action="store_true", help="list every tunable")
    s.add_argument("-d", "--describe", action="store_true", help="describe NAME")
    s.add_argument("-n", dest="values_only", action="store_true", help="print values only")
    s.add_argument("names", nargs="*", metavar="NAME[=VALUE]")

    n = sub.add_parser("netstat", parents=[which, js], help="mbuf statistics (-m)")
    n.add_argument("-m", action="store_true", help="memory (mbuf) statistics")
    v = sub.add_parser("vmstat", parents=[which, js], help="UMA zone statistics (-z)")
    v.add_argument("-z", action="store_true", help="zone statistics")
    st = sub.add_parser("stats", parents=[which, js], help="interface counters and drop reasons")
    st.add_argument("-v", dest="describe", action="store_true",
                    help="every drop reason, with its description")
    rt = sub.add_parser("route", parents=[which, js], help="list, add or delete routes")
    rt.add_argument("words", nargs="*", metavar="list | add PREFIX ... | del PREFIX")
    a = sub.add_parser("arp", parents=[which, js], help="the ARP table")
    a.add_argument("-a", "--all", action="store_true", help="list entries (default)")
    a.add_argument("-d", "--delete", metavar="IP", help="delete the entry for IP")
    a.add_argument("-i", "--interface", help="with -d: only on this interface")
    n = sub.add_parser("ndp", parents=[which, js], help="the IPv6 neighbour cache")
    n.add_argument("-a", "--all", action="store_true", help="list entries (default)")
    n.add_argument("-d", "--delete", metavar="IP", help="delete the entry for IP")
    n.add_argument("-i", "--interface", help="with -d: only on this interface")
    sub.add_parser("health", parents=[which, js],
                   help="exit 0 if the dataplane made progress in the last 2 s, else 1")
    sub.add_parser("reload", parents=[which], help="re-read the config file (as SIGHUP)")
    c = sub.add_parser("capture", parents=[which],
                       help="capture a port's frames, or the dropped packets, as pcap/pcapng")
    c.add_argument("interface", metavar="IF|drops",
                   help="a port, or 'drops': every dropped packet with its reason")
    c.add_argument("-w", "--write", metavar="FILE",
                   help="write packets to FILE (- for stdout: `| tcpdump -r -`); "
                        "without it, print a line per packet")
    c.add_argument("-n", "--count", type=int, default=1000, metavar="N",
                   help="stop after N packets (default 1000; tcpdump's -c, which is --config here)")
    c.add_argument("-d", "--duration", type=float, default=60.0, metavar="SECONDS",
                   help="stop after SECONDS (default 60, at most 3600)")
    c.add_argument("-Q", "--direction", choices=("in", "out", "inout"), default="inout",
                   help="a port's received, sent or both (default)")
    c.add_argument("-s", "--snaplen", type=int, metavar="BYTES",
                   help="bytes kept of each packet (default and at most 262144)")
    c.add_argument("--format", choices=("pcap", "pcapng"),
                   help="with -w: pcap (default for a port) or pcapng (default for drops: "
                        "the reason is each packet's comment)")
    c.add_argument("--filter", metavar="EXPR", help="only packets matching a tcpdump expression")
    t = sub.add_parser("trace", parents=[which, js],
                       help="trace packets through the dataplane's stages")
    t.add_argument("what", choices=("start", "show", "stop"))
    t.add_argument("-n", "--count", type=int, metavar="N",
                   help="start: packets to trace (default 10, at most 512)")
    t.add_argument("-i", "--interface", metavar="IF", help="start: only packets received on IF")
    t.add_argument("--filter", metavar="EXPR",
                   help="start: only packets matching a tcpdump (BPF) expression, "
                        "e.g. 'icmp and host 10.2.0.2'")
    d = sub.add_parser("debug", parents=[which, js],
                       help="debug facilities: stall the forwarding loop (health then fails)")
    d.add_argument("what", choices=("stall", "resume"))
    d.add_argument("seconds", nargs="?", type=float, metavar="SECONDS")
    if extras:
        from forwarder.lab.cli import add_parsers
        add_parsers(sub)
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "sysctl": cmd_sysctl, "netstat": cmd_netstat, "vmstat": cmd_vmstat,
    "stats": cmd_stats, "route": cmd_route, "arp": cmd_arp, "ndp": cmd_ndp,
    "health": cmd_health,
    "reload": cmd_reload, "debug": cmd_debug, "trace": cmd_trace,
    "capture": cmd_capture,
}


def main(argv: list[str] | None = None) -> int:
    from forwarder.container import expand_argv
    words = expand_argv(sys.argv[1:] if argv is None else argv)   # FORWARDER_OPTS for `run`
    first = next((w for w in words if not w.startswith("-")), None)
    args = build_parser(extras=first not in COMMANDS).parse_args(words)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    configure_logging(level, getattr(args, "log_format", "text"))
    fn = COMMANDS.get(args.cmd) or getattr(args, "func", None)
    try:
        return fn(args)
    except CliError as e:
        print(f"forwarder {args.cmd}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:            # `forwarder sysctl -a | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
