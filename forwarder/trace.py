"""The packet trace, as an operator reads it: `forwarder trace start|show|stop`.

The dataplane records, for each selected packet, the points it passed as
numbers (net/dp_trace.pxi; the points and their formats are one list,
dp_trace.h).  This module turns those records into text and JSON:

    Packet 3  2026-12-02T10:04:05.123456Z  tap1  98 bytes
      02:00:00:00:01:02 > 02:00:00:00:00:01 IPv4 10.1.0.2 > 10.2.0.2 ICMP echo request ttl 64
      +0us  ether_input: IPv4 02:00:00:00:01:02 > 02:00:00:00:00:01
      +1us  ip_input: ok 10.1.0.2 > 10.2.0.2 hlen=20 len=84 proto=1
      +1us  ip_lookup: 10.2.0.0/24 forward via 0.0.0.0 dev tap2
      ...
      end: transmitted tap2

Rendering happens in the router (the control socket answers `trace.show`
with the JSON document), so every client sees the same names and a reader of
the JSON needs no table of codes.  Formats are str.format strings over the
step's fields (x, a, b, c, d and data) with conversions of our own
(`{a:ip4}`, `{data@16:mac}`, `{d:if}`): see dp_trace.h.

The header line decodes the first bytes kept of the frame (Ethernet, ARP,
IPv4, IPv6, ICMP, TCP, UDP) without scapy: the router does not depend on
the lab extra.
"""
from __future__ import annotations

import ipaddress
import string
import struct
import time
from datetime import datetime, timezone
from typing import Any

from forwarder.dataplane import DROP_REASONS, TRACE_MAX, TRACE_POINTS
from forwarder.route import NH_TYPES

DEFAULT_COUNT = 10

_DROPS = list(DROP_REASONS)
_ETHERTYPES = {0x0800: "IPv4", 0x0806: "ARP", 0x86DD: "IPv6", 0x8100: "802.1Q"}
_GSO = {0: "none", 1: "tcpv4", 3: "udp", 4: "tcpv6", 5: "udp_l4", 0x80: "ecn"}
_ARPOPS = {1: "request", 2: "reply"}
_ICMP = {0: "echo reply", 3: "unreachable", 5: "redirect", 8: "echo request",
         11: "time exceeded", 12: "parameter problem"}
_ICMP6 = {1: "unreachable", 2: "packet too big", 3: "time exceeded", 4: "parameter problem",
          128: "echo request", 129: "echo reply", 133: "router solicitation",
          134: "router advertisement", 135: "neighbor solicitation",
          136: "neighbor advertisement"}
_NH = {**{v: k for k, v in NH_TYPES.items()}, 6: "multipath", 0xff: "no route",
       0xffffffff: "no route"}
_ND6_STATES = ("free", "incomplete", "reachable", "stale", "delay", "probe")
_NOSEND = {1: "about a non-initial fragment", 2: "about an ICMP error",
           3: "to a broadcast, multicast or martian source", 4: "rate limit",
           5: "no buffer"}
# ICMP (type, code) of an "icmp error" end, as operators name them.
_ICMP_END = {(3, 0): "net unreachable", (3, 1): "host unreachable", (3, 4): "frag needed",
             (3, 13): "administratively prohibited", (11, 0): "time exceeded"}
_ICMP6_END = {(1, 0): "no route", (1, 1): "administratively prohibited",
              (1, 2): "beyond scope", (1, 3): "address unreachable",
              (1, 4): "port unreachable", (2, 0): "packet too big", (3, 0): "time exceeded",
              (4, 1): "unknown next header"}


def _mac(b: bytes) -> str:
    return ":".join(f"{v:02x}" for v in b[:6])


class _StepFormatter(string.Formatter):
    """str.format over a step, with the conversions of dp_trace.h."""

    def __init__(self, ifnames: list[str]) -> None:
        super().__init__()
        self.ifnames = ifnames

    def get_field(self, field_name: str, args: Any, kwargs: dict) -> tuple[Any, str]:
        if field_name.startswith("data@"):
            return kwargs["data"][int(field_name[5:]):], field_name
        return kwargs[field_name], field_name

    def format_field(self, value: Any, spec: str) -> str:
        if spec == "ip4":
            return str(ipaddress.IPv4Address(value))
        if spec == "ip6":
            return str(ipaddress.IPv6Address(bytes(value[:16])))
        if spec == "mac":
            return _mac(value)
        if spec == "via":
            return f"via {ipaddress.IPv4Address(value)}" if value else ""
        if spec == "via6":
            a = ipaddress.IPv6Address(bytes(value[:16]))
            return f"via {a}" if int(a) else ""
        if spec == "dev":
            return "" if value == 0xffffffff else "dev " + self.format_field(value, "if")
        if spec == "if":
            if value == 0xffffffff:
                return "-"
            return self.ifnames[value] if value < len(self.ifnames) else f"#{value}"
        if spec == "drop":
            return _DROPS[value] if value < len(_DROPS) else f"reason {value}"
        if spec == "hex":
            return f"0x{value:08x}"
        if spec == "nh":
            return _NH.get(value, f"type {value}")
        if spec == "ethertype":
            return _ETHERTYPES.get(value, f"0x{value:04x}")
        if spec == "gso":
            return _GSO.get(value & 0x7f, str(value)) + (" ecn" if value & 0x80 else "")
        if spec == "arpop":
            return _ARPOPS.get(value, f"op {value}")
        if spec == "icmp":
            return _ICMP.get(value, f"type {value}")
        if spec == "icmp6":
            return _ICMP6.get(value, f"type {value}")
        if spec == "nd6state":
            return _ND6_STATES[value] if value < len(_ND6_STATES) else str(value)
        if spec == "nosend":
            return _NOSEND.get(value, str(value))
        return super().format_field(value, spec)


def summary(head: bytes) -> str:
    """One line about a frame from its first bytes (tcpdump-like, short)."""
    if len(head) < 14:
        return f"{len(head)} bytes (runt)"
    dst, src, et = head[0:6], head[6:12], struct.unpack_from("!H", head, 12)[0]
    out = f"{_mac(src)} > {_mac(dst)} {_ETHERTYPES.get(et, f'ethertype 0x{et:04x}')}"
    p = head[14:]
    if et == 0x0806 and len(p) >= 28:
        op = struct.unpack_from("!H", p, 6)[0]
        spa, tpa = ipaddress.IPv4Address(p[14:18]), ipaddress.IPv4Address(p[24:28])
        return out + (f" who-has {tpa} tell {spa}" if op == 1 else
                      f" {spa} is-at {_mac(p[8:14])}" if op == 2 else f" op {op}")
    if et == 0x0800 and len(p) >= 20:
        hl = (p[0] & 0x0F) * 4
        out += (f" {ipaddress.IPv4Address(p[12:16])} > {ipaddress.IPv4Address(p[16:20])}"
                f" ttl {p[8]} len {struct.unpack_from('!H', p, 2)[0]}")
        return out + _l4(p[9], p[hl:], _ICMP)
    if et == 0x86DD and len(p) >= 40:
        out += (f" {ipaddress.IPv6Address(p[8:24])} > {ipaddress.IPv6Address(p[24:40])}"
                f" hlim {p[7]}")
        return out + _l4(p[6], p[40:], _ICMP6)
    return out


def _l4(proto: int, p: bytes, icmp_names: dict[int, str]) -> str:
    if proto in (1, 58) and p:
        return f" ICMP{'v6' if proto == 58 else ''} {icmp_names.get(p[0], f'type {p[0]}')}"
    if proto in (6, 17) and len(p) >= 4:
        sport, dport = struct.unpack_from("!HH", p, 0)
        return f" {'TCP' if proto == 6 else 'UDP'} {sport} > {dport}"
    return f" proto {proto}"


def _end(kind: str, arg: int, ifnames: list[str], steps: list[dict]) -> dict:
    """The end as JSON: {kind, detail}."""
    if kind == "transmitted" or kind == "punted":
        detail = ifnames[arg] if arg < len(ifnames) else f"#{arg}"
    elif kind == "dropped":
        detail = _DROPS[arg] if arg < len(_DROPS) else f"reason {arg}"
    elif kind == "icmp error":
        v6 = any(s["stage"] == "icmp6_error" for s in steps)
        table, names = (_ICMP6_END, _ICMP6) if v6 else (_ICMP_END, _ICMP)
        t, c = arg >> 8, arg & 0xFF
        detail = table.get((t, c)) or f"{names.get(t, f'type {t}')} code {c}"
    else:
        detail = None
    return {"kind": kind, "detail": detail}


def render(raw: dict) -> dict:
    """The dataplane's raw trace (Dataplane.trace_records) as the JSON
    document of `forwarder trace show --json` (schema: trace-show)."""
    ifnames = raw["ifnames"]
    fmt = _StepFormatter(ifnames)
    wall = time.time_ns() - raw["now_ns"]          # CLOCK_MONOTONIC -> wall clock
    packets = []
    for r in raw["packets"]:
        steps = []
        for point, x, dt, a, b, c, d, data in r["steps"]:
            stage, f = TRACE_POINTS[point]
            try:
                text = " ".join(fmt.format(f, x=x, a=a, b=b, c=c, d=d, data=data).split())
            except (ValueError, IndexError, KeyError) as e:   # a record made of garbage
                text = f"(unreadable: {e})"
            steps.append({"stage": stage, "text": text, "dt_us": dt})
        t = datetime.fromtimestamp((r["time_ns"] + wall) / 1e9, tz=timezone.utc)
        ifindex = r["ifindex"]
        packets.append({
            "id": r["id"],
            "time": t.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "interface": ifnames[ifindex] if 0 <= ifindex < len(ifnames) else f"#{ifindex}",
            "length": r["len"],
            "summary": summary(r["head"]),
            "head": r["head"].hex(),
            "steps": steps,
            "lost_steps": r["lost_steps"],
            "end": _end(r["end"], r["end_arg"], ifnames, steps),
        })
    return {"remaining": raw["remaining"], "filtered": raw["filtered"], "packets": packets}


def format_text(doc: dict) -> str:
    """`forwarder trace show`: one block per packet, VPP's `show trace` shape."""
    lines = []
    for p in doc["packets"]:
        lines.append(f"Packet {p['id']}  {p['time']}  {p['interface']}  {p['length']} bytes")
        lines.append(f"  {p['summary']}")
        for s in p["steps"]:
            lines.append(f"  +{s['dt_us']}us  {s['stage']}: {s['text']}")
        if p["lost_steps"]:
            lines.append(f"  ({p['lost_steps']} more steps not kept)")
        e = p["end"]
        lines.append(f"  end: {e['kind']}" + (f" {e['detail']}" if e["detail"] else ""))
        lines.append("")
    n = len(doc["packets"])
    tail = f"{n} packet{'s' if n != 1 else ''} traced"
    if doc["remaining"]:
        tail += f", {doc['remaining']} still to take (trace running)"
    if doc["filtered"]:
        tail += f", {doc['filtered']} frames not matching the filter"
    lines.append(tail)
    return "\n".join(lines)


def check_count(count: int) -> int:
    if not 1 <= count <= TRACE_MAX:
        raise ValueError(f"count {count} out of range (1..{TRACE_MAX}: the trace keeps "
                         f"{TRACE_MAX} packets)")
    return count

