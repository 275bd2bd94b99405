"""The router's view of the mbuf layer: zone limits from tunables, stats."""
from __future__ import annotations

from typing import Any

from allocator_pyx import mbuf
from allocator_pyx.netstat import netstat_m, netstat_m_dict
from forwarder.sysctl import MBUF_LIMITS, SysctlError, SysctlTree

# The zone each limit applies to, as FreeBSD's uma_zone_set_warning() pairs
# them ("[zone: mbuf_cluster] kern.ipc.nmbclusters limit reached").  The
# Packet zone follows nmbclusters too, but its denials show in mbuf_cluster's.
ZONE_LIMITS = {"mbuf": "kern.ipc.nmbufs", "mbuf_cluster": "kern.ipc.nmbclusters",
               "mbuf_jumbo_page": "kern.ipc.nmbjumbop", "mbuf_jumbo_9k": "kern.ipc.nmbjumbo9",
               "mbuf_jumbo_16k": "kern.ipc.nmbjumbo16"}


def apply_limits(tree: SysctlTree) -> dict:
    """Boot: every mbuf zone limit from the tunables, together."""
    try:
        return mbuf.set_limits(**{name: tree.get(name) for name in MBUF_LIMITS})
    except mbuf.LimitError as e:
        raise SysctlError(str(e)) from None


def set_limit(name: str, value: int, tree: SysctlTree) -> None:
    """Runtime: one limit, raised or lowered; an inconsistent result is
    vetoed (SysctlError) and nothing changes."""
    try:
        mbuf.set_limits(**{name: value})
    except mbuf.LimitError as e:
        raise SysctlError(str(e)) from None


def zone_stats() -> list[dict]:
    """vmstat -z rows of the mbuf zones (FreeBSD's order)."""
    return list(mbuf.zone_stats().values())


def in_use(zones: Any = None) -> dict[str, int]:
    """What is still in use, counted as netstat -m counts it (a cluster
    attached to a cached Packet-zone mbuf is cache, not use): {kind: n}.
    ``zones``: vmstat -z rows (another router's, from its control socket);
    default this process's zones."""
    d = netstat_m_dict(mbuf.zone_stats() if zones is None else zones)
    return {k: d[k]["current"] for k in ("mbufs", "clusters", "jumbop", "jumbo9", "jumbo16")
            if d[k]["current"]}


def netstat_text() -> str:
    return netstat_m(mbuf.zone_stats())


def netstat_dict() -> dict:
    """netstat -m's numbers (netstat -m --json)."""
    return netstat_m_dict(mbuf.zone_stats())
