"""netstat -m and vmstat -z: FreeBSD's exact format, FreeBSD's arithmetic, and
the numbers of the live mbuf zones read back from the printed lines."""
from __future__ import annotations

import json

from allocator_pyx import mbuf, uma
from allocator_pyx.mbuf import Mbuf
from allocator_pyx.netstat import (netstat_m, netstat_m_dict, parse_netstat_m, parse_vmstat_z,
                                   report, vmstat_z, vmstat_z_dict)

# The first lines of a FreeBSD 14 netstat -m, and the zone rows they come from.
FREEBSD_NETSTAT_M = """\
257/1018/1275 mbufs in use (current/cache/total)
256/506/762/109049 mbuf clusters in use (current/cache/total/max)
256/506 mbuf+clusters out of packet secondary zone in use (current/cache)
0/508/508/54524 4k (page size) jumbo clusters in use (current/cache/total/max)
0/0/0/16155 9k jumbo clusters in use (current/cache/total/max)
0/0/0/9087 16k jumbo clusters in use (current/cache/total/max)
576K/3298K/3874K bytes allocated to network (current/cache/total)
0/0/0 requests for mbufs denied (mbufs/clusters/mbuf+clusters)
0/0/0 requests for mbufs delayed (mbufs/clusters/mbuf+clusters)
0/0/0 requests for jumbo clusters delayed (4k/9k/16k)
0/0/0 requests for jumbo clusters denied (4k/9k/16k)
"""
FREEBSD_ZONES = {
    "mbuf_packet": dict(size=256, limit=0, used=256, free=506),
    "mbuf": dict(size=256, limit=0, used=1, free=512),
    "mbuf_cluster": dict(size=2048, limit=109049, used=762, free=0),
    "mbuf_jumbo_page": dict(size=4096, limit=54524, used=0, free=508),
    "mbuf_jumbo_9k": dict(size=9216, limit=16155, used=0, free=0),
    "mbuf_jumbo_16k": dict(size=16384, limit=9087, used=0, free=0),
}


def test_netstat_m_reproduces_freebsd_output():
    assert netstat_m(FREEBSD_ZONES) == FREEBSD_NETSTAT_M


def test_parse_netstat_m_reads_freebsd_output():
    p = parse_netstat_m(FREEBSD_NETSTAT_M + "0 sendfile syscalls\n")
    assert p["mbufs"] == {"current": 257, "cache": 1018, "total": 1275}
    assert p["clusters"] == {"current": 256, "cache": 506, "total": 762, "max": 109049}
    assert p["packets"] == {"current": 256, "cache": 506}
    assert p["jumbop"]["max"] == 54524 and p["jumbo16"]["max"] == 9087
    assert p["bytes_k"] == {"current": 576, "cache": 3298, "total": 3874}
    assert len(p) == 11


def test_vmstat_z_row_format():
    text = vmstat_z([dict(name="mbuf_cluster", size=2048, limit=262144, used=1152, free=6,
                          requests=1152, fails=0, sleeps=0)])
    lines = text.splitlines()
    assert lines[0] == "ITEM                   SIZE  LIMIT     USED     FREE      REQ FAIL SLEEP"
    assert lines[1] == ""
    assert lines[2] == "mbuf_cluster:          2048, 262144,    1152,       6,    1152,   0,   0"


def test_unlimited_max_prints_zero_and_missing_zones_count_zero():
    text = netstat_m({"mbuf_cluster": dict(size=2048, limit=0, used=3, free=1)})
    assert text.splitlines()[1] == "3/1/4/0 mbuf clusters in use (current/cache/total/max)"
    assert text.splitlines()[0] == "0/0/0 mbufs in use (current/cache/total)"
    assert "0/0/0/0 4k (page size) jumbo clusters" in text


def test_denied_and_delayed_columns():
    z = {k: dict(v) for k, v in FREEBSD_ZONES.items()}
    z["mbuf"].update(fails=1, sleeps=2)
    z["mbuf_cluster"].update(fails=3, sleeps=4)
    z["mbuf_packet"].update(fails=5, sleeps=6)
    z["mbuf_jumbo_page"].update(fails=7, sleeps=8)
    z["mbuf_jumbo_9k"].update(fails=9, sleeps=10)
    z["mbuf_jumbo_16k"].update(fails=11, sleeps=12)
    lines = netstat_m(z).splitlines()
    assert lines[7] == "1/3/5 requests for mbufs denied (mbufs/clusters/mbuf+clusters)"
    assert lines[8] == "2/4/6 requests for mbufs delayed (mbufs/clusters/mbuf+clusters)"
    assert lines[9] == "8/10/12 requests for jumbo clusters delayed (4k/9k/16k)"
    assert lines[10] == "7/9/11 requests for jumbo clusters denied (4k/9k/16k)"


def expected_from_zones(st: dict) -> dict:
    """FreeBSD's netstat -m arithmetic, written out again independently."""
    mb, cl, pk = st["mbuf"], st["mbuf_cluster"], st["mbuf_packet"]
    js = [st["mbuf_jumbo_page"], st["mbuf_jumbo_9k"], st["mbuf_jumbo_16k"]]
    inuse = ((mb["used"] + pk["used"]) * 256 + (cl["used"] - pk["free"]) * 2048
             + sum(j["used"] * j["size"] for j in js))
    cache = ((mb["free"] + pk["free"]) * 256 + (cl["free"] + pk["free"]) * 2048
             + sum(j["free"] * j["size"] for j in js))
    return {
        "mbufs": {"current": mb["used"] + pk["used"], "cache": mb["free"] + pk["free"],
                  "total": mb["used"] + pk["used"] + mb["free"] + pk["free"]},
        "clusters": {"current": cl["used"] - pk["free"], "cache": cl["free"] + pk["free"],
                     "total": cl["used"] + cl["free"], "max": cl["limit"]},
        "packets": {"current": pk["used"], "cache": pk["free"]},
        "bytes_k": {"current": inuse // 1024, "cache": cache // 1024,
                    "total": (inuse + cache) // 1024},
        "denied": {"mbufs": mb["fails"], "clusters": cl["fails"], "packets": pk["fails"]},
        "delayed": {"mbufs": mb["sleeps"], "clusters": cl["sleeps"], "packets": pk["sleeps"]},
    }


def test_live_netstat_m_lines_match_the_zone_stats():
    mbuf.drain()
    base = parse_netstat_m(netstat_m(mbuf.zone_stats()))
    held = ([Mbuf.getcl() for _ in range(7)] + [Mbuf.get() for _ in range(5)]
            + [Mbuf.get().clget() for _ in range(3)] + [Mbuf.getjcl(4096) for _ in range(2)]
            + [Mbuf.getjcl(16384)])
    copies = [m.copym() for m in held[:2]]          # shared clusters: mbufs, no clusters
    st = mbuf.zone_stats()
    p = parse_netstat_m(netstat_m(st))
    want = expected_from_zones(st)
    for key in want:
        assert p[key] == want[key], key
    assert p["mbufs"]["current"] - base["mbufs"]["current"] == 7 + 5 + 3 + 2 + 1 + 2
    assert p["clusters"]["current"] - base["clusters"]["current"] == 7 + 3
    assert p["packets"]["current"] - base["packets"]["current"] == 7
    assert p["jumbop"]["current"] - base["jumbop"]["current"] == 2
    assert p["jumbo16"]["current"] - base["jumbo16"]["current"] == 1
    assert p["clusters"]["max"] == mbuf.get_limits()["nmbclusters"]
    assert p["jumbop"]["max"] == mbuf.get_limits()["nmbjumbop"]
    for m in held + copies:
        m.freem()
    after = parse_netstat_m(netstat_m(mbuf.zone_stats()))
    assert after["mbufs"]["current"] == base["mbufs"]["current"]
    assert after["clusters"]["current"] == base["clusters"]["current"]
    # freed Packet items stay paired in the cache
    assert after["packets"]["cache"] >= 7


def test_live_vmstat_z_round_trips():
    st = mbuf.zone_stats()
    text = vmstat_z(st)
    assert [line.split(":")[0] for line in text.splitlines()[2:]] == list(mbuf.ZONE_NAMES)
    back = parse_vmstat_z(text)
    for name, row in st.items():
        assert back[name] == {k: row[k] for k in ("size", "limit", "used", "free", "requests",
                                                   "fails", "sleeps")}
    # every uma zone, in the same format, from the list form
    rows = uma.vmstat()
    assert set(parse_vmstat_z(vmstat_z(rows))) == {r["name"] for r in rows}


def test_json_forms():
    st = mbuf.zone_stats()
    doc = json.loads(json.dumps(report(st)))
    assert doc["netstat_m"] == netstat_m_dict(st)
    assert [r["name"] for r in doc["vmstat_z"]] == list(mbuf.ZONE_NAMES)
    assert doc["vmstat_z"] == vmstat_z_dict(st)
    assert netstat_m(list(st.values())) == netstat_m(st)     # rows with "name" work too
    assert report()["vmstat_z"][0]["name"] == "mbuf_packet"
