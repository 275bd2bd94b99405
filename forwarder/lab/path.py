"""The path of a load between two lab hosts: resolved once, used for many runs.

:func:`resolve_path` finds the source host's link and next hop towards the
destination (one ping fills the ARP caches on the way: the host's, and the
router's for the destination) and the destination's link.  Only namespaces made
by :class:`forwarder.netns.Topology` (names ``fwXXXXXX-...``) are accepted: the
load generator never sends anywhere else.  The kernel's counters of both links
(what `ip -s link` shows) are read before and after each run, so a report can
tell where packets were lost.  :func:`host_path` is the path between two hosts
of a :class:`forwarder.lab.topology.Lab`.  Paths are IPv4 or IPv6, as their
destination address is.
"""
from __future__ import annotations

import contextlib
import re
import socket
import time
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Iterator

from forwarder import netns as nn
from forwarder.lab.spec import FLOW_SRC_NET, FLOW_SRC_NET6, LoadgenError
from forwarder.lab.topology import Lab

OURS = re.compile(r"^fw[0-9a-f]{6}-")


@dataclass
class PathInfo:
    """Where the load goes: resolved once, reusable for several runs."""
    src_netns: str
    src_if: str
    src_ifindex: int
    src_mac: str
    src_mtu: int
    dst_netns: str
    dst_if: str
    dst_ifindex: int
    dst_ip: str
    next_hop: str
    next_hop_mac: str
    router_socket: str | None = None

    @property
    def family(self) -> int:
        return 6 if ":" in self.dst_ip else 4


def check_ours(ns: str) -> None:
    """Refuse namespaces that forwarder.netns.Topology did not make."""
    if not OURS.match(ns) or "/" in ns:
        raise LoadgenError(f"netns {ns!r} was not made by forwarder (names fwXXXXXX-...); "
                           "the load generator only sends into its own lab namespaces")
    if not nn.netns_exists(ns):
        raise LoadgenError(f"netns {ns!r} does not exist")


def link_stats_at(ns: str, ifindex: int) -> dict[str, int]:
    """The kernel's counters of link ``ifindex`` in ``ns`` (what `ip -s link` shows)."""
    with nn.iproute(ns) as ipr:
        link = ipr.get_links(ifindex)[0]
        s = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS")
        return {k: int(s[k]) for k in ("rx_packets", "rx_bytes", "rx_dropped", "tx_packets",
                                       "tx_bytes", "tx_dropped")}


def resolve_path(src_ns: str, dst_ns: str, dst_ip: str | None = None, *,
                 router_socket: str | None = None, timeout: float = 5.0,
                 family: int | None = None) -> PathInfo:
    """Find the links and the next hop's MAC from ``src_ns`` towards ``dst_ns``.

    One ping from the source to the destination fills the ARP (or neighbour)
    caches on the way (the host's, and the router's for the destination).  The
    family is ``dst_ip``'s, else ``family`` (default 4); an IPv6 destination is
    a global address of ``dst_ns`` (not link-local, not loopback)."""
    check_ours(src_ns)
    check_ours(dst_ns)
    if dst_ip is not None:
        dst_ip = str(ip_address(dst_ip))
        family = ip_address(dst_ip).version
    family = family or 4
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with nn.iproute(dst_ns) as ipr:
        addrs = [(a.get_attr("IFA_ADDRESS"), a["index"]) for a in ipr.get_addr(family=af)]
        addrs = [(a, i) for a, i in addrs
                 if not (ip_address(a).is_loopback or ip_address(a).is_link_local)]
        if dst_ip is not None:
            addrs = [(a, i) for a, i in addrs if a == dst_ip]
        if not addrs:
            raise LoadgenError(f"no IPv{family} address {dst_ip or ''} in {dst_ns}"
                               .replace("  ", " "))
        dst_ip, dst_idx = addrs[0]
        dst_if = ipr.get_links(dst_idx)[0].get_attr("IFLA_IFNAME")
    with nn.iproute(src_ns) as ipr:
        try:
            r = ipr.route("get", dst=dst_ip, family=af)[0]
        except Exception as e:  # noqa: BLE001 - netlink says "network unreachable"
            raise LoadgenError(f"no route from {src_ns} to {dst_ip}: {e}") from None
        oif = r.get_attr("RTA_OIF")
        hop = r.get_attr("RTA_GATEWAY") or dst_ip
        link = ipr.get_links(oif)[0]
        src_if, src_mac, src_mtu = (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_ADDRESS"),
                                    link.get_attr("IFLA_MTU"))
    deadline = time.monotonic() + timeout
    mac = None
    while mac is None:
        nn.run_in_netns(src_ns, ["ping", f"-{family}", "-n", "-q", "-c", "1", "-W", "1", dst_ip],
                        timeout=5)
        with nn.iproute(src_ns) as ipr:
            for n in ipr.get_neighbours(ifindex=oif, family=af):
                if n.get_attr("NDA_DST") == hop and n.get_attr("NDA_LLADDR") and \
                        n["state"] not in (0x01, 0x20):   # not INCOMPLETE / FAILED
                    mac = n.get_attr("NDA_LLADDR")
        if mac is None and time.monotonic() > deadline:
            raise LoadgenError(f"cannot resolve next hop {hop} from {src_ns} "
                               f"(no {'ARP' if family == 4 else 'ND'} answer; is the path up?)")
    return PathInfo(src_netns=src_ns, src_if=src_if, src_ifindex=oif, src_mac=src_mac,
                    src_mtu=src_mtu, dst_netns=dst_ns, dst_if=dst_if, dst_ifindex=dst_idx,
                    dst_ip=dst_ip, next_hop=hop, next_hop_mac=mac, router_socket=router_socket)


def host_path(lab: Lab, src: str, dst: str, family: int = 4) -> PathInfo:
    """:func:`resolve_path` from lab host ``src`` to lab host ``dst`` (names or
    namespaces) over IPv4 or IPv6, with the lab's router's socket for its drop
    counters."""
    s, d = lab.host(src), lab.host(dst)
    a = d.address if family == 4 else d.address6
    if a is None:
        raise LoadgenError(f"lab host {d.name} has no IPv6 address")
    return resolve_path(s.netns, d.netns, str(a.ip), router_socket=str(lab.socket))


@contextlib.contextmanager
def blackhole_replies(dst_ns: str, family: int = 4) -> Iterator[None]:
    """The destination host must not answer the load (echo replies, TCP resets,
    port unreachables) back through the path: route the flows' sources to a
    blackhole in its namespace while the load runs."""
    added = False
    net = str(FLOW_SRC_NET if family == 4 else FLOW_SRC_NET6)
    with nn.iproute(dst_ns) as ipr:
        try:
            ipr.route("add", dst=net, type="blackhole")
            added = True
        except Exception:  # noqa: BLE001 - already there (a run in parallel, or a kept lab)
            pass
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(Exception), nn.iproute(dst_ns) as ipr:
                ipr.route("del", dst=net, type="blackhole")

