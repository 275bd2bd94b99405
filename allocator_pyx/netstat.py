"""netstat -m and vmstat -z for the mbuf zones, in FreeBSD 14's formats.

Pure Python over plain dicts, so that the same functions format stats read
in this process (``allocator_pyx.mbuf.zone_stats()``) or fetched from a
running router over its control socket.  ``stats`` is either a mapping
``{zone name: row}`` or an iterable of rows that carry a ``"name"``; a row
has the vmstat -z fields ``size limit used free requests fails sleeps``
(missing zones and fields count as 0).

How netstat -m computes its lines (usr.bin/netstat/mbuf.c):

* mbufs: current = mbuf.used + packet.used, cache = mbuf.free + packet.free.
  A Packet-zone item is an mbuf, so both zones count.
* clusters: current = cluster.used - packet.free (the clusters sitting on
  cached Packet items are in use as far as the cluster zone knows, but are
  cache to the network), cache = cluster.free + packet.free,
  total = cluster.used + cluster.free, max = the limit (0 when unlimited).
* bytes: current and cache in those terms times the item sizes, plus the
  jumbo zones; each printed in KiB, rounded down separately.
* denied = zone failures (M_NOWAIT at a limit), delayed = zone sleeps
  (M_WAITOK at a limit).

FreeBSD then prints sendfile(2) counters; there is no sendfile here, so the
output stops after the jumbo-cluster lines.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

MBUF_ZONES = ("mbuf_packet", "mbuf", "mbuf_cluster", "mbuf_jumbo_page", "mbuf_jumbo_9k",
              "mbuf_jumbo_16k")
VMSTAT_FIELDS = ("size", "limit", "used", "free", "requests", "fails", "sleeps")

_DEFAULT_SIZES = {"mbuf_packet": 256, "mbuf": 256, "mbuf_cluster": 2048,
                  "mbuf_jumbo_page": 4096, "mbuf_jumbo_9k": 9216, "mbuf_jumbo_16k": 16384}

Stats = Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]]


def _rows(stats: Stats) -> dict[str, dict[str, int]]:
    """Normalise stats to {name: {field: int}}, keeping the given order."""
    if isinstance(stats, Mapping):
        items = [(str(name), row) for name, row in stats.items()]
    else:
        items = [(str(row["name"]), row) for row in stats]
    out: dict[str, dict[str, int]] = {}
    for name, row in items:
        out[name] = {f: int(row.get(f, 0) or 0) for f in VMSTAT_FIELDS}
    return out


def _zone(rows: dict[str, dict[str, int]], name: str) -> dict[str, int]:
    row = rows.get(name)
    if row is None:
        row = {f: 0 for f in VMSTAT_FIELDS}
        row["size"] = _DEFAULT_SIZES.get(name, 0)
    elif not row["size"]:
        row = dict(row, size=_DEFAULT_SIZES.get(name, 0))
    return row


def netstat_m_dict(stats: Stats) -> dict[str, Any]:
    """The numbers netstat -m prints, JSON-able (bytes in bytes, not KiB)."""
    rows = _rows(stats)
    mb, cl, pk = _zone(rows, "mbuf"), _zone(rows, "mbuf_cluster"), _zone(rows, "mbuf_packet")
    jp, j9, j16 = (_zone(rows, "mbuf_jumbo_page"), _zone(rows, "mbuf_jumbo_9k"),
                   _zone(rows, "mbuf_jumbo_16k"))
    mbuf_size, cluster_size = mb["size"], cl["size"]

    def jumbo(z: dict[str, int]) -> dict[str, int]:
        return {"current": z["used"], "cache": z["free"], "total": z["used"] + z["free"],
                "max": z["limit"], "size": z["size"]}

    bytes_inuse = ((mb["used"] + pk["used"]) * mbuf_size
                   + (cl["used"] - pk["free"]) * cluster_size
                   + jp["used"] * jp["size"] + j9["used"] * j9["size"]
                   + j16["used"] * j16["size"])
    bytes_incache = ((mb["free"] + pk["free"]) * mbuf_size
                     + (cl["free"] + pk["free"]) * cluster_size
                     + jp["free"] * jp["size"] + j9["free"] * j9["size"]
                     + j16["free"] * j16["size"])
    return {
        "mbufs": {"current": mb["used"] + pk["used"], "cache": mb["free"] + pk["free"],
                  "total": mb["used"] + pk["used"] + mb["free"] + pk["free"]},
        "clusters": {"current": cl["used"] - pk["free"], "cache": cl["free"] + pk["free"],
                     "total": cl["used"] + cl["free"], "max": cl["limit"]},
        "packets": {"current": pk["used"], "cache": pk["free"]},
        "jumbop": jumbo(jp),
        "jumbo9": jumbo(j9),
        "jumbo16": jumbo(j16),
        "bytes": {"current": bytes_inuse, "cache": bytes_incache,
                  "total": bytes_inuse + bytes_incache},
        "denied": {"mbufs": mb["fails"], "clusters": cl["fails"], "packets": pk["fails"],
                   "jumbop": jp["fails"], "jumbo9": j9["fails"], "jumbo16": j16["fails"]},
        "delayed": {"mbufs": mb["sleeps"], "clusters": cl["sleeps"], "packets": pk["sleeps"],
                    "jumbop": jp["sleeps"], "jumbo9": j9["sleeps"], "jumbo16": j16["sleeps"]},
    }


def netstat_m(stats: Stats) -> str:
    """netstat -m, FreeBSD 14's lines and wording (without sendfile's)."""
    d = netstat_m_dict(stats)
    m, c, p, b = d["mbufs"], d["clusters"], d["packets"], d["bytes"]
    den, dly = d["denied"], d["delayed"]
    lines = [
        f"{m['current']}/{m['cache']}/{m['total']} mbufs in use (current/cache/total)",
        f"{c['current']}/{c['cache']}/{c['total']}/{c['max']} "
        "mbuf clusters in use (current/cache/total/max)",
        f"{p['current']}/{p['cache']} "
        "mbuf+clusters out of packet secondary zone in use (current/cache)",
    ]
    for key, label in (("jumbop", "{k}k (page size)"), ("jumbo9", "{k}k"), ("jumbo16", "{k}k")):
        j = d[key]
        lines.append(f"{j['current']}/{j['cache']}/{j['total']}/{j['max']} "
                     f"{label.format(k=j['size'] // 1024)} "
                     "jumbo clusters in use (current/cache/total/max)")
    lines += [
        f"{b['current'] // 1024}K/{b['cache'] // 1024}K/{b['total'] // 1024}K "
        "bytes allocated to network (current/cache/total)",
        f"{den['mbufs']}/{den['clusters']}/{den['packets']} "
        "requests for mbufs denied (mbufs/clusters/mbuf+clusters)",
        f"{dly['mbufs']}/{dly['clusters']}/{dly['packets']} "
        "requests for mbufs delayed (mbufs/clusters/mbuf+clusters)",
        f"{dly['jumbop']}/{dly['jumbo9']}/{dly['jumbo16']} "
        "requests for jumbo clusters delayed (4k/9k/16k)",
        f"{den['jumbop']}/{den['jumbo9']}/{den['jumbo16']} "
        "requests for jumbo clusters denied (4k/9k/16k)",
    ]
    return "\n".join(lines) + "\n"


_NUMS = r"(\d+(?:/\d+)*)"
_PATTERNS = [
    ("mbufs", re.compile(_NUMS + r" mbufs in use \(current/cache/total\)$"),
     ("current", "cache", "total")),
    ("clusters", re.compile(_NUMS + r" mbuf clusters in use \(current/cache/total/max\)$"),
     ("current", "cache", "total", "max")),
    ("packets", re.compile(_NUMS + r" mbuf\+clusters out of packet secondary zone in use "
                                   r"\(current/cache\)$"), ("current", "cache")),
    ("jumbop", re.compile(_NUMS + r" \d+k \(page size\) jumbo clusters in use "
                                  r"\(current/cache/total/max\)$"),
     ("current", "cache", "total", "max")),
    ("jumbo9", re.compile(_NUMS + r" 9k jumbo clusters in use \(current/cache/total/max\)$"),
     ("current", "cache", "total", "max")),
    ("jumbo16", re.compile(_NUMS + r" 16k jumbo clusters in use \(current/cache/total/max\)$"),
     ("current", "cache", "total", "max")),
    ("bytes_k", re.compile(r"(\d+)K/(\d+)K/(\d+)K bytes allocated to network "
                           r"\(current/cache/total\)$"), ("current", "cache", "total")),
    ("denied", re.compile(_NUMS + r" requests for mbufs denied \(mbufs/clusters/mbuf\+clusters\)$"),
     ("mbufs", "clusters", "packets")),
    ("delayed", re.compile(_NUMS + r" requests for mbufs delayed "
                                   r"\(mbufs/clusters/mbuf\+clusters\)$"),
     ("mbufs", "clusters", "packets")),
    ("jumbo_delayed", re.compile(_NUMS + r" requests for jumbo clusters delayed \(4k/9k/16k\)$"),
     ("jumbop", "jumbo9", "jumbo16")),
    ("jumbo_denied", re.compile(_NUMS + r" requests for jumbo clusters denied \(4k/9k/16k\)$"),
     ("jumbop", "jumbo9", "jumbo16")),
]


def parse_netstat_m(text: str) -> dict[str, dict[str, int]]:
    """Parse netstat -m output (ours or FreeBSD's first lines) back into
    numbers: {"mbufs": {...}, "clusters": {...}, ..., "bytes_k": {...}}.
    Unrecognised lines (sendfile's) are ignored."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        line = line.strip()
        for key, rx, fields in _PATTERNS:
            mo = rx.match(line)
            if mo is None:
                continue
            nums = [int(x) for x in "/".join(mo.groups()).split("/")]
            if len(nums) != len(fields):
                raise ValueError(f"netstat -m line with {len(nums)} numbers: {line!r}")
            out[key] = dict(zip(fields, nums))
            break
    return out


def vmstat_z(stats: Stats) -> str:
    """vmstat -z for the given zones, in their order, FreeBSD's columns:
    ``ITEM SIZE LIMIT USED FREE REQ FAIL SLEEP``."""
    rows = _rows(stats)
    out = [f"{'ITEM':<20} {'SIZE':>6} {'LIMIT':>6} {'USED':>8} {'FREE':>8} {'REQ':>8} "
           f"{'FAIL':>4} {'SLEEP':>4}", ""]
    for name, r in rows.items():
        out.append(f"{name + ':':<20} {r['size']:6d}, {r['limit']:6d},{r['used']:8d},"
                   f"{r['free']:8d},{r['requests']:8d},{r['fails']:4d},{r['sleeps']:4d}")
    return "\n".join(out) + "\n"


def vmstat_z_dict(stats: Stats) -> list[dict[str, Any]]:
    """vmstat -z as JSON-able rows: name and the seven columns."""
    return [dict(name=name, **row) for name, row in _rows(stats).items()]


def parse_vmstat_z(text: str) -> dict[str, dict[str, int]]:
    """Parse vmstat -z rows back into {name: {size, limit, used, ...}}."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep or not rest.strip():
            continue
        nums = [x.strip() for x in rest.split(",")]
        if len(nums) != len(VMSTAT_FIELDS) or not all(x.isdigit() for x in nums):
            continue
        out[name.strip()] = dict(zip(VMSTAT_FIELDS, (int(x) for x in nums)))
    return out


def mbuf_stats() -> dict[str, dict[str, int]]:
    """The mbuf zones' stats of this process (imports the Cython module)."""
    from allocator_pyx import mbuf
    return mbuf.zone_stats()


def report(stats: Stats | None = None) -> dict[str, Any]:
    """Everything as one JSON-able dict: netstat -m numbers and vmstat -z rows."""
    if stats is None:
        stats = mbuf_stats()
    return {"netstat_m": netstat_m_dict(stats), "vmstat_z": vmstat_z_dict(stats)}
