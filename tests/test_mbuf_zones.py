"""The mbuf zones: the Packet zone's cached pairs, the shared mbuf keg, the
kern.ipc.nmb* limits (denied, raised, lowered, unlimited, inconsistent),
defaults from memory, and reading / writing frames through real fds."""
from __future__ import annotations

import errno
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

import pytest

from allocator_pyx import mbuf
from allocator_pyx.mbuf import LimitError, Mbuf, MbufDenied
from allocator_pyx.netstat import netstat_m, netstat_m_dict, parse_netstat_m

ALL_CLUSTERS_UNLIMITED = dict(nmbclusters=0, nmbjumbop=0, nmbjumbo9=0, nmbjumbo16=0)


def ns() -> dict:
    return netstat_m_dict(mbuf.zone_stats())


def freeall(chains) -> None:
    for c in chains:
        c.freem()
    chains.clear()


# --- the zones ------------------------------------------------------------------------

def test_zones_names_and_sizes():
    st = mbuf.zone_stats()
    assert tuple(st) == mbuf.ZONE_NAMES == (
        "mbuf_packet", "mbuf", "mbuf_cluster", "mbuf_jumbo_page", "mbuf_jumbo_9k",
        "mbuf_jumbo_16k")
    assert [st[z]["size"] for z in mbuf.ZONE_NAMES] == [256, 256, 2048, 4096, 9216, 16384]
    zs = mbuf.zones()
    # the Packet zone lives on the mbuf keg: same slab geometry
    assert zs["mbuf_packet"].slab_size == zs["mbuf"].slab_size
    assert zs["mbuf_packet"].items_per_slab == zs["mbuf"].items_per_slab


INIT_PROBE = """
import json
from allocator_pyx import mbuf, uma
zones = lambda: sorted((r["name"], r["size"]) for r in uma.vmstat())
out = {"at_import": mbuf.get_limits(), "defaults": mbuf.default_limits(), "zones": zones()}
mbuf.set_limits(nmbclusters=1234, nmbjumbo16=0)
mbuf.init()
mbuf.init()
out.update(after=mbuf.get_limits(), zones_after=zones())
m = mbuf.Mbuf.getcl()
out["works"] = m.nmbufs == 1
m.freem()
print(json.dumps(out))
"""


def test_init_is_idempotent_and_limits_come_from_memory():
    """In a fresh process: the limits at import are FreeBSD's memory-derived
    defaults; a second and third mbuf_init() create no zones and leave limits
    set since then alone."""
    cp = subprocess.run([sys.executable, "-c", INIT_PROBE], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    d = out["defaults"]
    assert out["at_import"] == d
    assert all(v > 0 for v in d.values())
    assert d["nmbclusters"] == min(mbuf.physmem() // 2 // 2048 // 4, 2**31 - 1)
    assert d["nmbufs"] >= d["nmbclusters"] + d["nmbjumbop"] + d["nmbjumbo9"] + d["nmbjumbo16"]
    assert sorted(name for name, _ in out["zones"]) == sorted(mbuf.ZONE_NAMES)
    assert out["zones_after"] == out["zones"]
    assert out["after"] == {**d, "nmbclusters": 1234, "nmbjumbo16": 0}
    assert out["works"]


def test_default_limits_match_freebsd_tunable_mbinit():
    # FreeBSD 14 on a machine with maxmbufmem = 893329408 (the netstat -m in the notes)
    d = mbuf.default_limits(physmem=2 * 893329408)
    assert (d["nmbclusters"], d["nmbjumbop"], d["nmbjumbo9"], d["nmbjumbo16"]) == (
        109049, 54524, 16155, 9087)
    assert d["nmbufs"] == max(893329408 // 256 // 5, 109049 + 54524 + 16155 + 9087)
    assert mbuf.default_limits(physmem=0) == dict.fromkeys(mbuf.LIMIT_NAMES, 0)


def test_default_limits_agree_with_the_sysctl_registry():
    from forwarder import sysctl
    for physmem in (2**30, 24 * 2**30, 3 * 2**40):
        ours = mbuf.default_limits(physmem=physmem)
        theirs = sysctl.mbuf_default_limits(physmem)
        assert {f"kern.ipc.{k}": v for k, v in ours.items()} == theirs


def test_packet_zone_hands_back_the_same_pair_without_touching_the_cluster_zone():
    a = Mbuf.getcl()
    addr = a.cluster_addresses()
    a.freem()
    st0 = mbuf.zone_stats()
    for _ in range(100):
        b = Mbuf.getcl()
        assert b.cluster_addresses() == addr          # LIFO: the pair just freed
        b.append(b"q" * 100)
        b.freem()
    st1 = mbuf.zone_stats()
    assert st1["mbuf_packet"]["requests"] == st0["mbuf_packet"]["requests"] + 100
    assert st1["mbuf_cluster"]["requests"] == st0["mbuf_cluster"]["requests"]
    assert st1["mbuf"]["requests"] == st0["mbuf"]["requests"]
    # a cached pair is an mbuf and a cluster in cache, not in use
    d = ns()
    assert d["packets"]["cache"] >= 1
    assert d["clusters"]["cache"] >= d["packets"]["cache"]


def test_drain_takes_the_pairs_apart_and_unmaps(mbuf_limits):
    held = [Mbuf.getcl() for _ in range(600)]
    freeall(held)
    assert mbuf.zone_stats()["mbuf_packet"]["free"] >= 600
    assert mbuf.drain() > 0
    st = mbuf.zone_stats()
    assert st["mbuf_packet"]["free"] == 0
    assert st["mbuf_cluster"]["free"] == st["mbuf_cluster"]["keg_free"]


def test_nmbufs_caps_plain_and_packet_mbufs_together(mbuf_limits):
    mbuf_limits.set_limits(nmbufs=64, **ALL_CLUSTERS_UNLIMITED)
    held = [Mbuf.getcl() for _ in range(40)]
    while True:
        try:
            held.append(Mbuf.get())
        except MbufDenied:
            break
        assert len(held) <= 64, "nmbufs exceeded"
    assert 64 - 8 <= len(held) <= 64      # a bucket of mbufs may sit in a cache
    assert ns()["denied"]["mbufs"] >= 1
    with pytest.raises(MbufDenied):
        Mbuf.getcl()
    freeall(held)
    mbuf.drain()
    held.append(Mbuf.get())
    freeall(held)


def test_nmbclusters_deny_raise_lower_unlimited(mbuf_limits):
    n = 32
    mbuf_limits.set_limits(nmbclusters=n)
    assert ns()["clusters"]["max"] == n
    held = [Mbuf.getcl() for _ in range(n)]
    for i, m in enumerate(held):
        m.append(i.to_bytes(4, "big") * 100)
    d0 = ns()
    assert d0["clusters"]["current"] == n

    # the (N+1)th is denied and counted: mbuf+clusters (Packet zone) and
    # clusters (the fallback), not mbufs
    with pytest.raises(MbufDenied):
        Mbuf.getcl()
    d1 = ns()
    assert d1["denied"]["packets"] == d0["denied"]["packets"] + 1
    assert d1["denied"]["clusters"] == d0["denied"]["clusters"] + 1
    assert d1["denied"]["mbufs"] == d0["denied"]["mbufs"]
    # a plain cluster too
    with pytest.raises(MbufDenied):
        Mbuf.get().clget()
    assert ns()["denied"]["clusters"] == d1["denied"]["clusters"] + 1
    lines = parse_netstat_m(netstat_m(mbuf.zone_stats()))
    assert lines["denied"] == {"mbufs": d1["denied"]["mbufs"],
                               "clusters": d1["denied"]["clusters"] + 1,
                               "packets": d1["denied"]["packets"]}

    # raising at run time lets them through, up to the new limit
    mbuf_limits.set_limits(nmbclusters=n + 8)
    held += [Mbuf.getcl() for _ in range(8)]
    with pytest.raises(MbufDenied):
        Mbuf.getcl()

    # lowering below usage revokes nothing and refuses new ones until usage falls
    low = n // 2
    mbuf_limits.set_limits(nmbclusters=low)
    assert ns()["clusters"]["max"] == low
    for i, m in enumerate(held[:n]):
        assert bytes(m) == i.to_bytes(4, "big") * 100
    while len(held) > low:
        with pytest.raises(MbufDenied):
            Mbuf.getcl()
        held.pop().freem()
    assert ns()["clusters"]["current"] == low
    with pytest.raises(MbufDenied):
        Mbuf.getcl()
    held.pop().freem()
    held.append(Mbuf.getcl())          # usage fell below the limit: allowed again
    with pytest.raises(MbufDenied):
        Mbuf.getcl()

    # 0 is unlimited (and netstat prints max 0)
    mbuf_limits.set_limits(nmbclusters=0)
    held += [Mbuf.getcl() for _ in range(3 * n)]
    held += [Mbuf.get().clget() for _ in range(n)]
    assert ns()["clusters"]["max"] == 0
    assert "/0 mbuf clusters in use (current/cache/total/max)" in netstat_m(mbuf.zone_stats())
    freeall(held)


@pytest.mark.parametrize("size,name,key", [(4096, "nmbjumbop", "jumbop"),
                                           (9216, "nmbjumbo9", "jumbo9"),
                                           (16384, "nmbjumbo16", "jumbo16")])
def test_jumbo_limits(mbuf_limits, size, name, key):
    mbuf_limits.set_limits(**{name: 4})
    held = [Mbuf.getjcl(size) for _ in range(4)]
    d0 = ns()
    with pytest.raises(MbufDenied):
        Mbuf.getjcl(size)
    d1 = ns()
    assert d1["denied"][key] == d0["denied"][key] + 1
    assert d1[key]["max"] == 4 and d1[key]["current"] == 4
    mbuf_limits.set_limits(**{name: 5})
    held.append(Mbuf.getjcl(size))
    freeall(held)


def test_inconsistent_limits_are_refused_and_nothing_changes(mbuf_limits):
    before = mbuf.get_limits()
    with pytest.raises(LimitError, match="nmbufs=100 is below the cluster limits"):
        mbuf_limits.set_limits(nmbufs=100, nmbclusters=200, nmbjumbop=0, nmbjumbo9=0,
                               nmbjumbo16=0)
    with pytest.raises(LimitError, match="nmbufs"):
        mbuf_limits.set_limits(nmbufs=10)       # the cluster defaults are far above
    with pytest.raises(LimitError, match="nmbufs"):
        mbuf_limits.set_limits(nmbclusters=before["nmbufs"] + 1)
    with pytest.raises(LimitError, match="unknown"):
        mbuf_limits.set_limits(nmbcluster=5)
    with pytest.raises(LimitError):
        mbuf_limits.set_limits(nmbclusters=-1)
    assert mbuf.get_limits() == before
    # consistent changes, with or without the kern.ipc. prefix; 0 = unlimited
    assert mbuf_limits.set_limits(**{"kern.ipc.nmbufs": 0})["nmbufs"] == 0
    mbuf_limits.set_limits(nmbufs=1000, nmbclusters=500, nmbjumbop=200, nmbjumbo9=200,
                           nmbjumbo16=100)
    assert mbuf.zone_stats()["mbuf"]["limit"] == 1000
    assert mbuf.zone_stats()["mbuf_cluster"]["limit"] == 500


def test_waitok_sleeps_are_counted_as_delayed(mbuf_limits):
    mbuf_limits.set_limits(nmbclusters=8)
    held = [Mbuf.getcl() for _ in range(8)]
    pack = mbuf.zones()["mbuf_packet"]
    d0 = ns()
    pack.set_wait(0.05)
    try:
        t0 = time.monotonic()
        with pytest.raises(MbufDenied):
            Mbuf.getcl(wait=True)
        assert time.monotonic() - t0 >= 0.04
    finally:
        pack.set_wait(None)
    d1 = ns()
    assert d1["delayed"]["packets"] == d0["delayed"]["packets"] + 1
    assert d1["delayed"]["mbufs"] == d0["delayed"]["mbufs"]
    held.pop().freem()
    held.append(Mbuf.getcl(wait=True))      # an item is there: no sleep
    assert ns()["delayed"]["packets"] == d1["delayed"]["packets"]
    freeall(held)


def test_chains_freed_by_another_thread_balance_every_zone():
    """Allocated in one thread, shared, freed in another (and the last
    reference to a Packet cluster dropped on either side): every zone's
    count balances once both threads are gone (the leak check)."""
    q: queue.Queue = queue.Queue(maxsize=64)

    def producer():
        for i in range(3000):
            m = Mbuf.getcl()
            m.append(i.to_bytes(4, "big") * 50)
            c = m.copym(0, 100)
            if i % 2:
                q.put((m, c, i))
            else:
                q.put((c, m, i))
        q.put(None)

    def consumer(errors):
        while (item := q.get()) is not None:
            first, second, i = item
            first.freem()
            if bytes(second)[:4] != i.to_bytes(4, "big"):
                errors.append(i)
            second.freem()

    errors: list[int] = []
    threads = [threading.Thread(target=producer), threading.Thread(target=consumer,
                                                                   args=(errors,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_limits_can_be_set_from_a_thread_that_never_used_an_mbuf(mbuf_limits):
    mbuf.set_limits(**ALL_CLUSTERS_UNLIMITED)
    held = [Mbuf.getcl() for _ in range(1500)]
    freeall(held)          # more than a thread caches: full buckets on the Packet zone,
    assert mbuf.zone_stats()["mbuf_packet"]["free"] >= 1500    # which lowering drains
    done = []

    def setter():
        mbuf.set_limits(nmbufs=200)
        done.append(True)

    t = threading.Thread(target=setter)
    t.start()
    t.join(10)
    assert not t.is_alive() and done, "set_limits hung"
    assert mbuf.get_limits()["nmbufs"] == 200


def test_waitok_gets_a_pair_freed_by_another_thread(mbuf_limits):
    mbuf_limits.set_limits(nmbclusters=8)
    held = [Mbuf.getcl() for _ in range(8)]
    pack = mbuf.zones()["mbuf_packet"]
    pack.set_wait(0.5)
    got = []

    def waiter():
        try:
            got.append(Mbuf.getcl(wait=True))       # sleeps without the GIL
        except MbufDenied:
            got.append(None)

    t = threading.Thread(target=waiter)
    try:
        t.start()
        time.sleep(0.05)
        held.pop().freem()
        t.join(5)
    finally:
        pack.set_wait(None)
    freeall(held)
    assert got and got[0] is not None, "the sleeper never got the freed pair"
    got[0].freem()


# --- frames through file descriptors -------------------------------------------------------

@pytest.fixture
def dgram():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_read_fd_reads_one_frame_into_a_packet_pair(dgram):
    a, b = dgram
    with pytest.raises(BlockingIOError):
        Mbuf.read_fd(b.fileno(), 2048)
    frame = os.urandom(1500)
    a.send(frame)
    m = Mbuf.read_fd(b.fileno(), 1514, leading=2, rcvif=7)
    assert bytes(m) == frame and m.pkthdr_len == 1500 and m.rcvif == 7
    (lay,) = m.layout()
    assert (lay["ext_type"], lay["leading"], lay["len"]) == (mbuf.EXT_PACKET, 2, 1500)
    m.freem()


@pytest.mark.parametrize("size,maxlen,ext,nmbufs", [
    (3000, 4000, 3, 1), (9000, 9216, 4, 1), (16000, 16384, 5, 1),
    (60000, 65535, 5, 4), (100, 65535, 5, 1)])
def test_read_fd_picks_jumbo_storage_for_big_frames(dgram, size, maxlen, ext, nmbufs):
    a, b = dgram
    frame = os.urandom(size)
    a.send(frame)
    m = Mbuf.read_fd(b.fileno(), maxlen)
    assert bytes(m) == frame and m.pkthdr_len == size
    assert m.nmbufs == nmbufs                        # unused storage was given back
    assert {x["ext_type"] for x in m.layout()} == {ext}
    m.freem()


def test_read_fd_truncates_to_maxlen(dgram):
    a, b = dgram
    a.send(b"x" * 3000)
    m = Mbuf.read_fd(b.fileno(), 1000)
    assert bytes(m) == b"x" * 1000
    m.freem()


def test_read_fd_end_of_file_and_stream():
    r, w = os.pipe()
    try:
        os.write(w, b"hello")
        m = Mbuf.read_fd(r, 2048)
        assert bytes(m) == b"hello"
        m.freem()
        os.close(w)
        w = -1
        assert Mbuf.read_fd(r, 2048) is None
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    with pytest.raises(OSError) as ei:
        Mbuf.read_fd(r, 2048)                         # closed fd
    assert ei.value.errno == errno.EBADF


def test_read_fd_denied_leaves_the_frame_queued(dgram, mbuf_limits):
    a, b = dgram
    mbuf_limits.set_limits(nmbclusters=1)
    held = Mbuf.getcl()
    a.send(b"first")
    a.send(b"second")
    d0 = ns()
    with pytest.raises(MbufDenied):
        Mbuf.read_fd(b.fileno(), 1500)
    assert ns()["denied"]["packets"] == d0["denied"]["packets"] + 1
    held.freem()
    m = Mbuf.read_fd(b.fileno(), 1500)
    assert bytes(m) == b"first"
    m.freem()
    # without buffers a driver drops the frame
    assert mbuf.discard_fd(b.fileno()) == len(b"second")
    with pytest.raises(BlockingIOError):
        Mbuf.read_fd(b.fileno(), 1500)


def test_writev_fd_sends_the_chain_as_one_frame(dgram):
    a, b = dgram
    segs = [b"a" * 10, b"b" * 2000, b"", b"c" * 5000]
    m = Mbuf.chain(segs, kinds=["mbuf", "cluster", "mbuf", "jumbo9"], leading=[5, 0, 0, 100])
    assert [n for _, n in m.iovec()] == [10, 2000, 5000]
    assert m.writev_fd(a.fileno()) == 7010
    b.setblocking(True)
    assert b.recv(65536) == b"".join(segs)
    assert not m.freed                               # the chain stays the caller's
    m.freem()


def test_writev_fd_refuses_chains_longer_than_its_iovec(dgram):
    a, b = dgram
    m = Mbuf.chain([bytes([i]) * 3 for i in range(70)])
    with pytest.raises(OverflowError):
        m.iovec(64)
    with pytest.raises(OSError) as ei:
        m.writev_fd(a.fileno())
    assert ei.value.errno == errno.EMSGSIZE
    assert m.collapse(64)
    assert m.writev_fd(a.fileno()) == 210
    b.setblocking(True)
    assert b.recv(4096) == b"".join(bytes([i]) * 3 for i in range(70))
    m.freem()


def test_read_then_write_forwards_frames_without_python_bytes(dgram):
    a, b = dgram
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        frames = [os.urandom(n) for n in (60, 1500, 9000, 30000)]
        for f in frames:
            a.send(f)
        for f in frames:
            m = Mbuf.read_fd(b.fileno(), 65535, leading=16)
            count = m.nmbufs
            m.prepend(b"\x00" * 14)                 # an Ethernet header, in the leading space
            assert m.nmbufs == count
            assert m.writev_fd(c.fileno()) == len(f) + 14
            m.freem()
            assert d.recv(70000) == b"\x00" * 14 + f
    finally:
        c.close()
        d.close()


BOOT_LIMIT_PROBE = """
import json
from allocator_pyx import mbuf
from allocator_pyx.netstat import netstat_m, netstat_m_dict
mbuf.set_limits(nmbclusters=16)
mbuf.init()
m = mbuf.Mbuf.getcl()              # maps the first cluster slab (more than 16 items)
m.freem()
out = {"after_one": netstat_m_dict(mbuf.zone_stats())["clusters"],
       "text": netstat_m(mbuf.zone_stats())}
held = [mbuf.Mbuf.getcl() for _ in range(16)]
out["all"] = netstat_m_dict(mbuf.zone_stats())["clusters"]
try:
    mbuf.Mbuf.getcl()
    out["seventeenth"] = "allocated"
except mbuf.MbufDenied:
    out["seventeenth"] = "denied"
for h in held:
    h.freem()
out["after_free"] = netstat_m_dict(mbuf.zone_stats())["clusters"]
print(json.dumps(out))
"""


def test_cluster_total_never_exceeds_a_boot_limit_smaller_than_a_slab():
    """kern.ipc.nmbclusters=16 at boot: the keg maps a whole slab (more than
    16 clusters), but netstat -m's total counts only what the limit lets
    out, so current/cache/total/max never shows a total above max."""
    cp = subprocess.run([sys.executable, "-c", BOOT_LIMIT_PROBE], capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    for when in ("after_one", "all", "after_free"):
        c = out[when]
        assert c["max"] == 16
        assert c["total"] == c["current"] + c["cache"] <= 16, (when, c)
    assert out["after_one"] == {"current": 0, "cache": 16, "total": 16, "max": 16}
    assert "0/16/16/16 mbuf clusters in use (current/cache/total/max)" in out["text"]
    assert out["all"]["current"] == 16 and out["all"]["cache"] == 0
    assert out["seventeenth"] == "denied"
