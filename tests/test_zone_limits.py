"""Limits bound memory: a zone limit lowered at run time trims every cache
(the zone's, the lowering thread's, and at their next trim the other
threads', the forwarding loop's included), so that the items out for the
zone -- in use plus cached -- come down to the limit, and the statistics
(vmstat -z, netstat -m) never show more than it; and a router booted with
kern.ipc.nmbclusters = 16 and twenty neighbours that never answer ARP denies
and counts what does not fit, keeps answering ping, and recovers fully once
the neighbours answer.

In process (the uma and mbuf modules, other threads as the forwarding loop's
stand-ins), then real routers in namespaces:

h1 (10.1.0.2) --tap1-- router --tap3-- h3 (10.3.0.2); 10.3.0.100-239 answer no
                         |              ARP until a test adds them to h3
                         |--tap2-- h2 (10.2.0.2)
"""
from __future__ import annotations

import gc
import re
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from allocator_pyx import mbuf, uma
from allocator_pyx.mbuf import Mbuf, MbufDenied
from allocator_pyx.netstat import netstat_m_dict, parse_netstat_m, parse_vmstat_z
from forwarder import netns as nn
from tests.routerlab import RunningRouter, poll, router_mac, start_router, static_gateways
from tests.topology import lab, requires_netns, topology  # noqa: F401

MBUF_LEAK_CHECK = True          # conftest: every mbuf zone's USED is back after each test


class Owner:
    """A thread that owns a cache: it runs what it is handed, one call at a
    time, and exits on close() (its thread-exit hook then runs)."""

    def __init__(self) -> None:
        self._todo: list = []
        self._cv = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="cache-owner", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._todo)
                fn, box = self._todo.pop(0)
            if fn is None:
                return
            try:
                box["result"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                box["error"] = e
            with self._cv:
                box["done"] = True
                self._cv.notify_all()

    def run(self, fn: Callable[[], object]) -> object:
        box: dict = {}
        with self._cv:
            self._todo.append((fn, box))
            self._cv.notify_all()
            assert self._cv.wait_for(lambda: box.get("done"), 20), "owner thread stuck"
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def close(self) -> None:
        with self._cv:
            self._todo.append((None, {}))
            self._cv.notify_all()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def owner() -> Iterator[Owner]:
    o = Owner()
    yield o
    if o.thread.is_alive():
        o.close()


@pytest.fixture
def zone() -> Iterator[uma.Zone]:
    z = uma.Zone.create("zone_limits", 2048)
    yield z
    gc.collect()
    z.destroy()


def fill_cache(z: uma.Zone, n: int) -> None:
    """n items taken and given back: the calling thread's buckets are full,
    the rest is on the zone's lists."""
    items = [z.alloc() for _ in range(n)]
    for it in items:
        it.free()


def total(z: uma.Zone) -> int:
    st = z.stats()
    return st["used"] + st["free"]


# --- uma: the other threads' caches -------------------------------------------------------

def test_a_lowered_limit_reaches_another_threads_cache_at_its_next_trim(zone, owner):
    """The lowering thread trims the zone's lists at once; the items another
    thread caches are that thread's, handed back at its next
    uma_thread_trim() (the forwarding loop's once per wake-up), with the
    empty slabs unmapped: a limit bounds memory, not only allocations."""
    owner.run(lambda: fill_cache(zone, 300))
    st = zone.stats()
    assert st["used"] == 0 and st["items"] >= 300
    assert owner.run(uma.thread_trim) is None          # nothing asked yet: nothing to do
    assert zone.stats()["items"] == st["items"]

    zone.limit = 40
    st = zone.stats()
    # Only the owner's two buckets are left: more than the limit, until it trims.
    assert 40 < st["items"] <= 2 * 128
    assert st["used"] + st["free"] == st["items"]

    owner.run(uma.thread_trim)
    st = zone.stats()
    assert st["items"] == 0 and st["used"] == 0
    assert st["used"] + st["free"] <= 40
    assert st["keg_slabs"] == 0, "the trimmed items' slabs are still mapped"

    # Below the limit again the caches work as before, at the limit's bucket size.
    owner.run(lambda: fill_cache(zone, 30))
    assert zone.stats()["items"] <= 40
    assert zone.stats()["bucket_size"] == 40 // 16


def test_a_thread_exiting_over_a_lowered_limit_leaves_its_buckets_to_the_next_trim(zone, owner):
    """A thread exiting may not free into the kegs (a zfini would register it
    anew); its buckets go to the zone's lists and the next trimmer -- any
    thread at its next trim, or a slow-path call on the zone -- returns them."""
    owner.run(lambda: fill_cache(zone, 300))
    zone.limit = 40
    uma.thread_trim()                     # this thread's turn for the lowering: nothing of its own
    cached = zone.stats()["items"]
    assert cached > 40
    gen = uma.trim_generation()
    owner.close()
    poll(lambda: uma.trim_generation() > gen, what="the exiting thread asked for a trim")
    assert zone.stats()["items"] == cached            # on the zone's lists now
    uma.thread_trim()
    st = zone.stats()
    assert st["items"] == 0 and st["used"] + st["free"] <= 40


def test_in_use_above_a_lowered_limit_falls_to_it_as_freed_and_is_never_cached(zone):
    held = [zone.alloc() for _ in range(100)]
    zone.limit = 40
    assert zone.alloc() is None                       # denied, and counted
    assert zone.stats()["fails"] == 1
    while len(held) > 40:
        held.pop().free()
        st = zone.stats()
        assert st["items"] == st["used"] == len(held), "a free above the limit was cached"
        assert st["free"] == 0
    held.pop().free()
    assert total(zone) <= 40
    held.append(zone.alloc())                         # under the limit: allowed again
    assert held[-1] is not None
    for it in held:
        it.free()
    assert zone.stats()["items"] <= 40


def test_used_plus_free_never_exceeds_the_limit_while_another_thread_runs(zone):
    """vmstat's row is a snapshot of counters other threads keep without a
    lock; whatever the skew, USED + FREE is the zone's exact count and stays
    within the limit."""
    zone.limit = 64
    stop = threading.Event()

    def churn() -> None:
        held: list = []
        k = 0
        while not stop.is_set():
            for _ in range(50):
                it = zone.alloc()
                if it is not None:
                    held.append(it)
            while len(held) > (k % 60):
                held.pop().free()
            k += 7
        for it in held:
            it.free()

    t = threading.Thread(target=churn, name="churn", daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 1.0
        samples = 0
        while time.monotonic() < deadline:
            st = zone.stats()
            assert st["used"] + st["free"] <= 64, st
            samples += 1
        assert samples > 100
    finally:
        stop.set()
        t.join(10)
    assert zone.stats()["used"] == 0


# --- mbuf: the Packet zone's pairs and netstat -m ------------------------------------------

def test_lowered_nmbclusters_takes_the_pairs_another_thread_caches_apart(mbuf_limits, owner):
    """Clusters parked on Packet-zone mbufs in another thread's cache: after
    that thread's trim netstat -m's cluster total is within the new max, and
    vmstat -z's rows say the same."""
    def churn() -> None:
        chains = [Mbuf.getcl() for _ in range(600)]
        for c in chains:
            c.freem()

    owner.run(churn)
    before = netstat_m_dict(mbuf.zone_stats())
    assert before["clusters"]["total"] >= 600 and before["packets"]["cache"] >= 256
    mbuf_limits.set_limits(nmbclusters=64)
    owner.run(uma.thread_trim)
    st = mbuf.zone_stats()
    d = netstat_m_dict(st)
    assert d["clusters"]["max"] == 64
    assert d["clusters"]["total"] <= 64 and d["clusters"]["current"] == 0
    assert st["mbuf_cluster"]["used"] + st["mbuf_cluster"]["free"] == d["clusters"]["total"]
    assert st["mbuf_packet"]["used"] + st["mbuf_packet"]["free"] <= 64
    # All 64 can still be had (the zone is not left unusable), and no more.
    held = [Mbuf.getcl() for _ in range(64)]
    with pytest.raises(MbufDenied):
        Mbuf.getcl()
    assert netstat_m_dict(mbuf.zone_stats())["clusters"]["total"] <= 64
    for c in held:
        c.freem()


# --- a real router ------------------------------------------------------------------------------

class Sender:
    """UDP from h1 to addresses on h3's link, written straight into h1's link
    (an AF_PACKET socket): the router holds what it cannot resolve."""

    def __init__(self, lab) -> None:
        h1 = lab.host("h1")
        with nn.enter_netns(h1.netns):
            self.s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            self.s.bind((h1.ifname, 0))
        self.src = nn.link_info(h1.ifname, h1.netns).mac
        self.sent = 0

    def frame(self, dst: str) -> bytes:
        return bytes(Ether(dst=router_mac(1), src=self.src) / IP(src="10.1.0.2", dst=dst)
                     / UDP(sport=7, dport=9) / (b"z" * 18))

    def burst(self, addrs: list[str], per: int) -> None:
        frames = [self.frame(a) for a in addrs]
        for _ in range(per):
            for f in frames:
                self.s.send(f)
                self.sent += 1

    def paced(self, addrs: list[str], pps: float, seconds: float) -> None:
        """One frame at a time, round robin, about pps a second."""
        frames = [self.frame(a) for a in addrs]
        end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < end:
            self.s.send(frames[k % len(frames)])
            self.sent += 1
            k += 1
            time.sleep(1 / pps)

    def close(self) -> None:
        self.s.close()


def silent(first: int, n: int) -> list[str]:
    return [f"10.3.0.{first + i}" for i in range(n)]


def host_addresses(lab, op: str, addrs: list[str]) -> None:
    """Add (the neighbours appear: h3 answers ARP for them) or delete them on h3."""
    h3 = lab.host("h3")
    script = "".join(f"addr {op} {a}/32 dev {h3.ifname}\n" for a in addrs)
    cp = subprocess.run(["ip", "-n", h3.netns, "-force", "-batch", "-"], input=script,
                        capture_output=True, text=True, timeout=20)
    assert op == "del" or cp.returncode == 0, cp.stderr


def netstat(r: RunningRouter) -> dict:
    """netstat -m as the CLI prints it, parsed back."""
    return parse_netstat_m(r.cli("netstat", "-m").stdout)


def vmstat(r: RunningRouter) -> dict:
    return parse_vmstat_z(r.cli("vmstat", "-z").stdout)


def clusters(r: RunningRouter) -> dict:
    return netstat_m_dict(r.call("zones"))["clusters"]


def rx_total(r: RunningRouter) -> int:
    return sum(i["rx_packets"] for i in r.stats()["interfaces"])


def wait_quiet(r: RunningRouter, timeout: float = 10.0) -> int:
    """Until no frame reached the router for 0.3 s; the frames read so far."""
    last = [rx_total(r)]

    def quiet() -> bool:
        time.sleep(0.3)
        now = rx_total(r)
        still, last[0] = now == last[0], now
        return still
    poll(quiet, timeout, what="the links quiet")
    return last[0]


def resolved(r: RunningRouter, sender: Sender, addrs: list[str]) -> bool:
    """Every one of addrs has a MAC; those that do not are sent a frame (an
    entry that gave up asks again only for new traffic)."""
    state = {e["ip"]: e["state"] for e in r.call("arp.list")}
    missing = [a for a in addrs if state.get(a) != "reachable"]
    if missing:
        sender.burst(missing, 1)
    return not missing


@contextmanager
def running(lab, tmp_path: Path, **kw) -> Iterator[RunningRouter]:
    """A router for one test; on the way out it must exit 0: `forwarder run`
    fails when any mbuf is still in use at exit (every one came back)."""
    r = start_router(lab, tmp_path, **kw)
    static_gateways(lab)
    try:
        yield r
    finally:
        code, out = r.stop()
    assert code == 0, out[-3000:]
    assert "mbufs still in use" not in out


@requires_netns
def test_lowered_nmbclusters_trims_an_idle_forwarding_loops_caches(lab, tmp_path):
    """640 packets held for neighbours that then appear: the forwarding
    thread frees them into its own caches.  kern.ipc.nmbclusters lowered to
    64 while nothing arrives: within a wake-up of the loop netstat -m's total
    is within the max, vmstat -z agrees, the slabs are unmapped, and no frame
    had to pass to make it so."""
    addrs = silent(100, 40)
    with running(lab, tmp_path) as r:
        sender = Sender(lab)            # h1's link exists once the router runs
        original = r.call("sysctl.get", names=["kern.ipc.nmbclusters"])[0]["value"]
        base = clusters(r)["current"]
        try:
            sender.burst(addrs, 16)
            poll(lambda: clusters(r)["current"] >= base + 600, what="640 packets held")
            host_addresses(lab, "add", addrs)
            poll(lambda: clusters(r)["current"] == base, timeout=5,
                 what="the held packets sent once the neighbours answered")
            cached = r.call("zones")
            assert netstat_m_dict(cached)["clusters"]["total"] >= 600
            rx0 = wait_quiet(r)              # h3's port unreachables have passed

            assert r.sysctl("kern.ipc.nmbclusters=64") == \
                f"kern.ipc.nmbclusters: {original} -> 64\n"

            def within() -> bool:
                ns = netstat(r)["clusters"]
                vz = vmstat(r)
                return (ns["max"] == 64 and ns["total"] <= 64
                        and vz["mbuf_cluster"]["used"] + vz["mbuf_cluster"]["free"] <= 64
                        and vz["mbuf_packet"]["used"] + vz["mbuf_packet"]["free"] <= 64)
            poll(within, what="netstat -m's cluster total within the lowered max")
            assert rx_total(r) == rx0, "a frame arrived: the trim is not shown to be the loop's"

            # netstat -m is computed from vmstat -z's rows: the two agree.
            ns, vz = netstat(r), vmstat(r)
            assert netstat_m_dict(vz)["clusters"] == ns["clusters"]
            assert vz["mbuf_cluster"]["limit"] == vz["mbuf_packet"]["limit"] == 64
            row = next(z for z in r.call("zones") if z["name"] == "mbuf_cluster")
            assert row["keg_slabs"] * row["keg_slabsize"] <= 64 * 2048 + 2 * row["keg_slabsize"], \
                "the trimmed clusters' memory is still mapped"
            assert lab.ping("h1", "10.3.0.2", count=2, wait=1).returncode == 0
        finally:
            r.call("sysctl.set", assignments={"kern.ipc.nmbclusters": original})
            host_addresses(lab, "del", addrs)
            r.forget_arp(*addrs)
            sender.close()


@requires_netns
def test_a_limit_lowered_below_use_caches_nothing_and_falls_as_clusters_are_freed(lab, tmp_path):
    """Lowered below what is in use (640 held), nothing is revoked but
    nothing stays cached; netstat -m's total is what is in use.  A little
    traffic then runs into the limit (denied, counted), the router frees what
    it holds for the silent neighbours, and the total falls within the max."""
    addrs = silent(150, 40)
    # (asked for 100 s: the holds must still be there when the ping comes, however
    # slowly a busy machine gets there)
    with running(lab, tmp_path, sysctl={"net.link.ether.inet.maxtries": 100}) as r:
        sender = Sender(lab)            # h1's link exists once the router runs
        original = r.call("sysctl.get", names=["kern.ipc.nmbclusters"])[0]["value"]
        base = clusters(r)["current"]
        try:
            sender.burst(addrs, 16)
            poll(lambda: clusters(r)["current"] >= base + 600, what="640 packets held")
            denied0 = netstat(r)["denied"]
            r.sysctl("kern.ipc.nmbclusters=64")

            def nothing_cached() -> bool:
                ns = netstat(r)
                return (ns["clusters"]["cache"] == 0 and ns["packets"]["cache"] == 0
                        and ns["clusters"]["total"] == ns["clusters"]["current"])
            poll(nothing_cached, what="no cluster cached above the lowered limit")
            assert netstat(r)["clusters"]["current"] >= 600     # in use: not revoked

            ping = lab.ping("h2", "10.1.0.2", count=5, wait=1, extra=["-i", "0.2"])
            assert ping.returncode == 0, ping.stdout
            assert int(re.search(r"(\d+) received", ping.stdout).group(1)) >= 4, ping.stdout

            def fallen() -> bool:
                ns = netstat(r)["clusters"]
                return ns["total"] <= 64 and ns["current"] == base
            poll(fallen, what="clusters in use and cached back within the max")
            denied = netstat(r)["denied"]
            assert denied["clusters"] > denied0["clusters"]
            assert denied["packets"] > denied0["packets"]
            assert r.stats()["drops"]["arp_hold_reclaimed"] >= 600
        finally:
            r.call("sysctl.set", assignments={"kern.ipc.nmbclusters": original})
            r.forget_arp(*addrs)
            sender.close()


def ping_seqs(out: str) -> set[int]:
    """The sequence numbers ping saw answered."""
    return {int(m) for m in re.findall(r"icmp_seq=(\d+)", out)}


def longest_silence(answered: set[int], sent: int) -> int:
    """The most consecutive requests (1..sent) left unanswered."""
    run = longest = 0
    for seq in range(1, sent + 1):
        run = 0 if seq in answered else run + 1
        longest = max(longest, run)
    return longest


@requires_netns
def test_sixteen_clusters_and_twenty_silent_neighbours(lab, tmp_path):
    """kern.ipc.nmbclusters = 16 at boot; twenty neighbours that do not
    answer ARP each get packets held (maxhold 16: 320 wanted).  Requests
    beyond the 16 are denied and counted (netstat -m, vmstat -z, the
    no_buffer drop reason), netstat -m never shows more than 16, h2's pings
    to the router and through it keep being answered, and once the
    neighbours answer their packets are forwarded, nothing more is denied
    and every cluster comes back."""
    addrs = silent(200, 20)
    h2 = lab.host("h2")
    with running(lab, tmp_path, sysctl={"kern.ipc.nmbclusters": 16}) as r:
        sender = Sender(lab)
        try:
            ns0 = netstat(r)
            assert ns0["clusters"]["max"] == 16 and ns0["clusters"]["total"] <= 16
            base = ns0["clusters"]["current"]
            st0 = r.stats()

            pings = [nn.popen_in_netns(h2.netns, ["ping", "-n", "-i", "0.2", "-c", "25", "-W", "1",
                                                  dst], stdout=subprocess.PIPE, text=True)
                     for dst in ("10.2.0.1", "10.3.0.2")]
            seen: list[int] = []
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    seen.append(netstat_m_dict(r.call("zones"))["clusters"]["total"])
                    time.sleep(0.05)

            watcher = threading.Thread(target=watch, name="netstat", daemon=True)
            watcher.start()
            try:
                sender.burst(addrs, 16)                  # maxhold for each: 320 frames for 16
                sender.paced(addrs, 100, 4.5)            # and more, while h2 pings
            finally:
                stop.set()
                watcher.join(5)
            outs = [p.communicate(timeout=20)[0] for p in pings]

            assert seen and max(seen) <= 16, f"netstat -m showed {max(seen)} clusters of 16"
            ns1, vz1, st1 = netstat(r), vmstat(r), r.stats()
            assert ns1["denied"]["clusters"] > ns0["denied"]["clusters"]
            assert ns1["denied"]["packets"] > ns0["denied"]["packets"]
            assert vz1["mbuf_cluster"]["fails"] == ns1["denied"]["clusters"]
            assert st1["drops"]["no_buffer"] > st0["drops"]["no_buffer"]
            assert ns1["clusters"]["total"] <= 16
            assert vz1["mbuf_cluster"]["used"] + vz1["mbuf_cluster"]["free"] <= 16
            for dst, out in zip(("the router", "through it"), outs):
                got = ping_seqs(out)
                assert len(got) >= 20, f"ping {dst}: {len(got)} of 25 answered\n{out}"
                # Throughout: never a second (5 requests) without an answer.
                assert longest_silence(got, 25) < 5, f"ping {dst}: a silence\n{out}"

            # The neighbours appear: what is held goes out, what follows too.
            host_addresses(lab, "add", addrs)
            poll(lambda: resolved(r, sender, addrs), timeout=5,
                 what="the twenty neighbours resolved")
            wait_quiet(r)
            denied = netstat(r)["denied"]
            tx3 = r.interface("tap3")["tx_packets"]
            sent = sender.sent
            sender.paced(addrs, 100, 1.0)                 # ~100 frames, now forwarded
            sent = sender.sent - sent
            poll(lambda: r.interface("tap3")["tx_packets"] - tx3 >= sent,
                 what="the frames to the resolved neighbours forwarded")
            assert netstat(r)["denied"] == denied, "denials after the neighbours resolved"
            poll(lambda: netstat(r)["clusters"]["current"] == base and
                 netstat(r)["packets"]["current"] == 0,
                 timeout=5, what="every cluster back (USED at its baseline)")
            assert netstat(r)["clusters"]["total"] <= 16
            assert lab.ping("h2", "10.2.0.1", count=2, wait=1).returncode == 0
            assert lab.ping("h2", "10.3.0.2", count=2, wait=1).returncode == 0
        finally:
            host_addresses(lab, "del", addrs)
            r.forget_arp(*addrs)
            sender.close()
