"""The UMA core: kegs, zones, per-thread caches, limits, refcounts, drain."""
from __future__ import annotations

import gc
import threading
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)

from allocator_pyx import uma, uma_tools


@pytest.fixture
def zone():
    """A 256-byte refcount zone; every item must be back when the test ends."""
    z = uma.Zone.create("test_zone", 256, refcnt=True)
    yield z
    gc.collect()                      # handles a failing test dropped free their items
    used = z.stats()["used"]
    assert used == 0, f"test_zone: {used} item(s) still allocated after the test"
    z.destroy()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class ZoneMachine(RuleBasedStateMachine):
    """Random alloc/free/limit/drain sequences against a plain model: the set
    of items held.  No item is handed out twice, none is lost, and the zone's
    counters always equal the model's."""

    @initialize(size=st.sampled_from([16, 100, 256, 2048]))
    def make_zone(self, size):
        self.zone = uma.Zone.create("model", size)
        self.held: dict[int, uma.Item] = {}
        self.serial = 0
        self.requests = 0
        self.fails = 0
        self.limit = 0

    @rule(n=st.integers(1, 40))
    def alloc(self, n):
        for _ in range(n):
            it = self.zone.alloc()
            if self.limit and len(self.held) >= self.limit:
                assert it is None, "allocation beyond the limit"
                self.fails += 1
                continue
            assert it is not None, "allocation denied below the limit"
            self.requests += 1
            assert it.address not in self.held, "item handed out twice"
            self.serial += 1
            it.write(0, self.serial.to_bytes(8, "little"))
            self.held[it.address] = it

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def free_some(self, data):
        addrs = sorted(self.held)
        pick = data.draw(st.lists(st.sampled_from(addrs), unique=True, max_size=30))
        for a in pick:
            it = self.held.pop(a)
            it.free()

    @rule(limit=st.sampled_from([0, 0, 1, 5, 17, 64, 300]))
    def set_limit(self, limit):
        self.zone.limit = limit
        self.limit = limit

    @rule()
    def drain(self):
        self.zone.drain()

    @invariant()
    def counters_match_model(self):
        if not hasattr(self, "zone"):
            return
        s = self.zone.stats()
        assert s["used"] == len(self.held)
        assert s["requests"] == self.requests
        assert s["fails"] == self.fails
        # One zone on the keg: every item of every slab is out of the keg (in
        # use or cached: items) or free in it.
        assert s["items"] + s["keg_free"] == s["keg_slabs"] * self.zone.items_per_slab
        # FREE: the cached items and the keg's free ones that the limit still
        # lets out, so USED + FREE never exceeds a limit USED is within.
        room = s["keg_free"] if not self.limit else \
            min(s["keg_free"], max(0, self.limit - s["items"]))
        assert s["free"] == s["items"] - s["used"] + room
        if self.limit and len(self.held) <= self.limit and s["items"] <= self.limit:
            assert s["used"] + s["free"] <= self.limit
        if self.limit:
            assert s["items"] <= max(self.limit, len(self.held)) + 2 * s["bucket_size"]

    @invariant()
    def stamps_intact(self):
        if not hasattr(self, "held"):
            return
        for it in list(self.held.values())[:50]:
            assert it.read(0, 8) != b"\0" * 8

    def teardown(self):
        if hasattr(self, "zone"):
            for it in self.held.values():
                it.free()
            assert self.zone.stats()["used"] == 0
            self.zone.destroy()


TestZoneModel = ZoneMachine.TestCase
TestZoneModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])


def test_threads_never_share_an_item_and_counts_balance():
    zone = uma.Zone.create("threads", 64)
    results: list[dict] = []

    def worker(i: int) -> None:
        results.append(uma_tools.stress(zone, 400_000, 7 + i, 0x5157_0000 + i, 500))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert sum(r["corrupt"] for r in results) == 0
    assert all(r["allocs"] > 100_000 for r in results)
    s = zone.stats()
    assert s["used"] == 0
    assert s["requests"] == sum(r["allocs"] for r in results)
    assert s["fails"] == 0
    zone.destroy()


def test_threads_allocate_while_the_limit_moves():
    zone = uma.Zone.create("moving_limit", 128)
    results: list[dict] = []
    stop = time.monotonic() + 10

    def worker(i: int) -> None:
        results.append(uma_tools.stress(zone, 10_000_000, 11 + i, 0xC0FFEE00 + i, 200))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    limits = [50, 0, 300, 10, 1000, 0]
    k = 0
    while any(t.is_alive() for t in threads) and time.monotonic() < stop:
        zone.limit = limits[k % len(limits)]
        k += 1
        time.sleep(0.002)
    for t in threads:
        t.join()
    zone.limit = 0
    assert sum(r["corrupt"] for r in results) == 0
    s = zone.stats()
    assert s["used"] == 0
    assert s["requests"] == sum(r["allocs"] for r in results)
    assert s["fails"] == sum(r["denied"] for r in results)
    assert k > 3
    zone.destroy()


def test_limit_gives_exactly_n_items_then_denies_and_counts(zone):
    zone.limit = 37
    held = [zone.alloc() for _ in range(37)]
    assert all(h is not None for h in held)
    assert zone.alloc() is None
    assert zone.alloc() is None
    s = zone.stats()
    assert (s["used"], s["fails"], s["limit"]) == (37, 2, 37)
    held.pop().free()
    again = zone.alloc()
    assert again is not None
    held.append(again)
    for h in held:
        h.free()


def test_zero_limit_is_unlimited(zone):
    zone.limit = 5
    held = [zone.alloc() for _ in range(5)]
    assert zone.alloc() is None
    zone.limit = 0
    more = [zone.alloc() for _ in range(5000)]
    assert all(m is not None for m in more)
    for h in held + more:
        h.free()


def test_waiting_allocation_wakes_when_another_thread_frees(zone):
    zone.limit = 8
    held = [zone.alloc() for _ in range(8)]
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(uma_tools.hold_and_wait(zone, 10.0)))
    t.start()
    time.sleep(0.3)
    assert t.is_alive(), "the waiter should be sleeping at the cap"
    held.pop().free()
    t.join(5)
    assert not t.is_alive()
    assert got and got[0] != 0
    s = zone.stats()
    assert s["sleeps"] == 1
    assert s["fails"] == 0
    for h in held:
        h.free()


def test_waiting_allocation_times_out_and_counts_a_failure(zone):
    zone.limit = 2
    held = [zone.alloc(), zone.alloc()]
    t0 = time.monotonic()
    assert zone.alloc(wait=True, timeout=0.15) is None
    assert time.monotonic() - t0 >= 0.14
    s = zone.stats()
    assert (s["sleeps"], s["fails"]) == (1, 1)
    for h in held:
        h.free()


def test_lowering_the_limit_revokes_nothing_and_recovers_as_usage_falls(zone):
    held = [zone.alloc() for _ in range(100)]
    zone.limit = 40
    assert all(not h.freed for h in held)
    assert zone.alloc() is None
    for _ in range(55):
        held.pop().free()
    assert zone.stats()["used"] == 45
    assert zone.alloc() is None           # 45 > 40: still refused
    for _ in range(6):
        held.pop().free()
    it = zone.alloc()                     # 39 in use: room again
    assert it is not None
    held.append(it)
    for h in held:
        h.free()


def test_keg_limit_caps_every_zone_on_the_keg():
    primary = uma.Zone.create("keg_cap", 512)
    second = primary.secondary("keg_cap_second")
    primary.keg_limit = 30
    a = [primary.alloc() for _ in range(20)]
    b = [second.alloc() for _ in range(10)]
    assert all(x is not None for x in a + b)
    assert second.alloc() is None and primary.alloc() is None
    assert len({x.address for x in a + b}) == 30
    for x in a + b:
        x.free()
    second.destroy()
    primary.destroy()


def test_secondary_zone_shares_the_kegs_slabs():
    primary = uma.Zone.create("shared_keg", 1024)
    second = primary.secondary("shared_second")
    a = [primary.alloc() for _ in range(300)]
    b = [second.alloc() for _ in range(300)]
    assert len({x.address for x in a + b}) == 600
    assert all(primary.owns(x) for x in b)
    sa, sb = primary.stats(), second.stats()
    assert sa["keg_slabs"] == sb["keg_slabs"]
    assert (sa["used"], sb["used"]) == (300, 300)
    with pytest.raises(ValueError):
        primary.free(b[0])
    for x in a + b:
        x.free()
    second.destroy()
    primary.destroy()


def test_refcount_shared_between_holders_frees_on_last_release(zone):
    it = zone.alloc()
    assert zone.refcount(it) == 0
    assert zone.ref(it) == 1
    assert zone.ref(it) == 2               # a second holder
    assert zone.unref(it) == 1
    assert not it.freed
    assert zone.stats()["used"] == 1
    assert zone.unref(it) == 0
    assert it.freed
    assert zone.stats()["used"] == 0


def test_refcounts_are_per_item(zone):
    items = [zone.alloc() for _ in range(200)]
    for k, it in enumerate(items):
        for _ in range(k % 5):
            zone.ref(it)
    assert [zone.refcount(it) for it in items] == [k % 5 for k in range(200)]
    for it in items:
        it.free()


def test_zone_without_refcounts_refuses_refcount_calls():
    z = uma.Zone.create("norefs", 64)
    it = z.alloc()
    with pytest.raises(ValueError):
        z.ref(it)
    it.free()
    z.destroy()


def test_drain_returns_memory_to_the_os():
    z = uma.Zone.create("drain", 2048)
    before_map = uma.mapped_bytes()
    items = [z.alloc() for _ in range(64 * 1024)]          # 128 MiB of clusters
    for it in items[:: 2]:
        it.write(0, b"x" * 2048)
    for it in items[1:: 2]:
        it.write(0, b"y" * 2048)
    full_rss = rss_bytes()
    mapped = uma.mapped_bytes() - before_map
    assert mapped >= 128 * 1024 * 1024
    for it in items:
        it.free()
    del items
    unmapped = z.drain()
    after_rss = rss_bytes()
    assert unmapped >= mapped * 0.95
    assert uma.mapped_bytes() - before_map <= mapped * 0.05
    assert full_rss - after_rss >= 100 * 1024 * 1024, (full_rss, after_rss)
    z.destroy()


def test_freed_handle_raises_instead_of_crashing(zone):
    it = zone.alloc()
    it.free()
    with pytest.raises(ValueError):
        it.free()
    with pytest.raises(ValueError):
        it.read()
    with pytest.raises(ValueError):
        it.write(0, b"x")
    with pytest.raises(ValueError):
        zone.ref(it)


def test_item_bounds_are_checked(zone):
    it = zone.alloc()
    with pytest.raises(IndexError):
        it.write(250, b"0123456789")
    with pytest.raises(IndexError):
        it.read(-1, 4)
    it.write(0, b"hello")
    assert it.read(0, 5) == b"hello"
    it.free()


def test_destroying_a_zone_in_use_is_refused():
    z = uma.Zone.create("busy", 64)
    it = z.alloc()
    with pytest.raises(uma.ZoneBusy):
        z.destroy()
    it.free()
    z.destroy()
    with pytest.raises(ValueError):
        z.alloc()


def test_exited_thread_hands_its_cache_back():
    z = uma.Zone.create("exit", 256)
    done = threading.Event()

    def worker():
        items = [z.alloc() for _ in range(1000)]
        for it in items:
            it.free()
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert done.is_set()
    s = z.stats()
    assert s["used"] == 0 and s["requests"] == 1000
    # join() returns before the OS thread has run its TLS destructors.
    deadline = time.monotonic() + 5
    while True:
        z.drain()
        if z.stats()["keg_slabs"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert z.stats()["keg_slabs"] == 0
    z.destroy()


def test_vmstat_lists_every_live_zone(zone):
    """Every live zone has its row, with the same numbers as its own stats;
    a destroyed zone has none."""
    from allocator_pyx import mbuf       # its six zones live from import on
    a = zone.alloc()
    extra = [uma.Zone.create(f"test_vmstat_{n}", size, limit=lim)
             for n, (size, lim) in enumerate([(64, 0), (1000, 17), (4096, 3)])]
    held = extra[1].alloc()
    try:
        rows = {row["name"]: row for row in uma.vmstat()}
        for name in mbuf.ZONE_NAMES:
            assert name in rows, name
        for z in [zone, *extra]:
            own = z.stats()
            assert rows[own["name"]] == own, own["name"]
        assert set(rows["test_zone"]) >= {"size", "limit", "used", "free", "requests", "fails",
                                          "sleeps"}
        assert rows["test_zone"]["used"] == 1 and rows["test_vmstat_1"]["used"] == 1
        assert (rows["test_vmstat_1"]["size"], rows["test_vmstat_1"]["limit"]) == (1000, 17)
        assert len([r for r in uma.vmstat() if r["name"].startswith("test_vmstat_")]) == 3
    finally:
        held.free()
        a.free()
        for z in extra:
            z.destroy()
    assert not [r for r in uma.vmstat() if r["name"].startswith("test_vmstat_")]
