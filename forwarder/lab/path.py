"""The path of a load between two lab hosts: resolved once, used for many runs.

:func:`resolve_path` finds the source host's link and next hop towards the
destination (one ping fills the ARP caches on the way: the host's, and the
router's for the destination) and the destination's link.  Only namespaces made
by :class:`forwarder.netns.Topology` (names ``fwXXXXXX-...``) are accepted: the
load generator never sends anywhere else.  The kernel's counters of both links
(what `ip -s link` shows) are read before and after each run, so a report can
tell where packets were lost.  :func:`host_path` is the path between two hosts
of a :class:`forwarder.lab.topology.Lab`.
"""
from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from typing import Iterator

from forwarder import netns as nn
from forwarder.lab.spec import FLOW_SRC_NET, LoadgenError
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
                 router_socket: str | None = None, timeout: float = 5.0) -> PathInfo:
    """Find the links and the next hop's MAC from ``src_ns`` towards ``dst_ns``.

    One ping from the source to the destination fills the ARP caches on the way
    (the host's, and the router's for the destination)."""
    check_ours(src_ns)
    check_ours(dst_ns)
    with nn.iproute(dst_ns) as ipr:
        addrs = [(a.get_attr("IFA_ADDRESS"), a["index"]) for a in ipr.get_addr(family=2)]
        addrs = [(a, i) for a, i in addrs if not a.startswith("127.")]
        if dst_ip is not None:
            addrs = [(a, i) for a, i in addrs if a == dst_ip]
        if not addrs:
            raise LoadgenError(f"no IPv4 address {dst_ip or ''} in {dst_ns}".replace("  ", " "))
        dst_ip, dst_idx = addrs[0]
        dst_if = ipr.get_links(dst_idx)[0].get_attr("IFLA_IFNAME")
    with nn.iproute(src_ns) as ipr:
        try:
            r = ipr.route("get", dst=dst_ip)[0]
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
        nn.run_in_netns(src_ns, ["ping", "-n", "-q", "-c", "1", "-W", "1", dst_ip], timeout=5)
        with nn.iproute(src_ns) as ipr:
            for n in ipr.get_neighbours(ifindex=oif, family=2):
                if n.get_attr("NDA_DST") == hop and n.get_attr("NDA_LLADDR") and \
                        n["state"] not in (0x01, 0x20):   # not INCOMPLETE / FAILED
                    mac = n.get_attr("NDA_LLADDR")
        if mac is None and time.monotonic() > deadline:
            raise LoadgenError(f"cannot resolve next hop {hop} from {src_ns} "
                               f"(no ARP answer; is the path up?)")
    return PathInfo(src_netns=src_ns, src_if=src_if, src_ifindex=oif, src_mac=src_mac,
                    src_mtu=src_mtu, dst_netns=dst_ns, dst_if=dst_if, dst_ifindex=dst_idx,
                    dst_ip=dst_ip, next_hop=hop, next_hop_mac=mac, router_socket=router_socket)


def host_path(lab: Lab, src: str, dst: str) -> PathInfo:
    """:func:`resolve_path` from lab host ``src`` to lab host ``dst`` (names or
    namespaces), with the lab's router's socket for its drop counters."""
    s, d = lab.host(src), lab.host(dst)
    return resolve_path(s.netns, d.netns, str(d.address.ip), router_socket=str(lab.socket))


@contextlib.contextmanager
def blackhole_replies(dst_ns: str) -> Iterator[None]:
    """The destination host must not answer the load (echo replies, TCP resets,
    port unreachables) back through the path: route the flows' sources to a
    blackhole in its namespace while the load runs."""
    added = False
    with nn.iproute(dst_ns) as ipr:
        try:
            ipr.route("add", dst=str(FLOW_SRC_NET), type="blackhole")
            added = True
        except Exception:  # noqa: BLE001 - already there (a run in parallel, or a kept lab)
            pass
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(Exception), nn.iproute(dst_ns) as ipr:
                ipr.route("del", dst=str(FLOW_SRC_NET), type="blackhole")

