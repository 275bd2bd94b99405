"""The mbuf API against a plain bytes model, cluster sharing, and the safety
of the Python handle.

Every property test builds a real chain (internal mbufs, Packet-zone pairs,
page-size jumbos, with random leading space), keeps a read-only copy of it
made with m_copypacket (so the clusters are shared), runs one operation on
the chain and on a bytes model, and checks that the chain equals the model,
pkthdr.len follows, and the shared copy did not change: no operation may
write through a cluster another chain references.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)

from allocator_pyx import mbuf
from allocator_pyx.mbuf import Mbuf, MbufDenied

MSIZE, MLEN, MHLEN, MCLBYTES = mbuf.MSIZE, mbuf.MLEN, mbuf.MHLEN, mbuf.MCLBYTES
CAP = {"mbuf": MLEN, "cluster": MCLBYTES, "jumbop": mbuf.MJUMPAGESIZE}

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@st.composite
def chains(draw, pkthdr=None, max_segments=6):
    """(segments, kinds, leading, pkthdr) for Mbuf.chain."""
    hdr = draw(st.booleans()) if pkthdr is None else pkthdr
    nseg = draw(st.integers(1, max_segments))
    segs, kinds, leads = [], [], []
    for i in range(nseg):
        kind = draw(st.sampled_from(["mbuf", "mbuf", "cluster", "cluster", "jumbop"]))
        cap = MHLEN if (kind == "mbuf" and hdr and i == 0) else CAP[kind]
        n = draw(st.integers(0, min(cap, 700 if kind == "mbuf" else cap)))
        lead = draw(st.integers(0, cap - n))
        if n <= 32:
            data = draw(st.binary(min_size=n, max_size=n))
        else:
            data = payload(draw(st.integers(0, 2**32)), n)
        segs.append(data)
        kinds.append(kind)
        leads.append(lead)
    return segs, kinds, leads, hdr


def build(spec) -> tuple[Mbuf, bytes]:
    segs, kinds, leads, hdr = spec
    m = Mbuf.chain(segs, kinds=kinds, leading=leads, pkthdr=hdr)
    return m, b"".join(segs)


def check(m: Mbuf, model: bytes, hdr: bool) -> None:
    assert m.length == len(model) == sum(m.lengths())
    assert bytes(m) == model
    if hdr:
        assert m.pkthdr_len == len(model)
        assert m.layout()[0]["pkthdr"]
        assert not any(seg["pkthdr"] for seg in m.layout()[1:])
    for seg in m.layout():
        assert seg["leading"] >= 0 and seg["trailing"] >= 0
        assert seg["leading"] + seg["len"] + seg["trailing"] == seg["size"]


class Witness:
    """A shared read-only copy of a chain; must never change."""

    def __init__(self, m: Mbuf, model: bytes):
        self.copy = m.copypacket()
        self.model = model

    def verify_and_free(self) -> None:
        assert bytes(self.copy) == self.model, "an operation wrote through a shared cluster"
        self.copy.freem()


# --- constants and layout -----------------------------------------------------------

def test_sizes_follow_freebsd_64bit():
    assert (MSIZE, MLEN, MHLEN, MCLBYTES) == (256, 224, 168, 2048)
    assert mbuf.MINCLSIZE == MHLEN + 1
    assert (mbuf.MJUMPAGESIZE, mbuf.MJUM9BYTES, mbuf.MJUM16BYTES) == (4096, 9216, 16384)


def test_allocation_kinds_and_storage_sizes():
    m, h, c, j = Mbuf.get(), Mbuf.gethdr(), Mbuf.getcl(), Mbuf.getjcl(mbuf.MJUM9BYTES)
    try:
        assert m.layout() == [dict(len=0, flags=0, pkthdr=False, ext_type=0, size=MLEN, leading=0,
                                   trailing=MLEN, refcnt=1, writable=True)]
        assert h.layout()[0]["size"] == MHLEN and h.pkthdr_len == 0
        lc = c.layout()[0]
        assert (lc["ext_type"], lc["size"], lc["pkthdr"]) == (mbuf.EXT_PACKET, MCLBYTES, True)
        assert c.flags & mbuf.M_EXT
        lj = j.layout()[0]
        assert (lj["ext_type"], lj["size"]) == (mbuf.EXT_JUMBO9, mbuf.MJUM9BYTES)
        assert c.cluster_refcounts() == [1] and m.cluster_refcounts() == [None]
        with pytest.raises(ValueError):
            Mbuf.getjcl(3000)
    finally:
        for x in (m, h, c, j):
            x.freem()


def test_clget_attaches_a_plain_cluster():
    m = Mbuf.get().clget()
    assert m.layout()[0]["ext_type"] == mbuf.EXT_CLUSTER
    assert m.layout()[0]["size"] == MCLBYTES
    with pytest.raises(ValueError):
        m.clget()                     # already has storage
    m.freem()


# --- properties against the bytes model -------------------------------------------------

@SETTINGS
@given(chains(), st.data())
def test_copydata_is_the_slice(spec, data):
    m, model = build(spec)
    off = data.draw(st.integers(0, len(model)))
    n = data.draw(st.integers(0, len(model) - off))
    assert m.copydata(off, n) == model[off:off + n]
    with pytest.raises(ValueError):
        m.copydata(off, len(model) - off + 1)
    m.freem()


@SETTINGS
@given(chains(), st.data())
def test_copym_is_the_slice_and_shares_clusters(spec, data):
    m, model = build(spec)
    off = data.draw(st.integers(0, len(model)))
    n = data.draw(st.integers(0, len(model) - off))
    before = m.cluster_refcounts()
    c = m.copym(off, n)
    assert bytes(c) == model[off:off + n]
    # Every cluster holding a copied byte is shared, not copied.
    shared = set(a for a, r in zip(c.cluster_addresses(), c.cluster_refcounts()) if a)
    mine = dict(zip(m.cluster_addresses(), m.cluster_refcounts()))
    for addr in shared:
        assert mine[addr] >= 2
    for layout in c.layout():
        if layout["ext_type"]:
            assert not layout["writable"]
    c.freem()
    assert m.cluster_refcounts() == before
    check(m, model, spec[3])
    m.freem()


@SETTINGS
@given(chains(), st.data())
def test_adj_trims_head_and_tail(spec, data):
    m, model = build(spec)
    w = Witness(m, model)
    n = data.draw(st.integers(-len(model) - 3, len(model) + 3))
    m.adj(n)
    if n >= 0:
        model = model[n:]
    else:
        model = model[:max(0, len(model) + n)]
    check(m, model, spec[3])
    w.verify_and_free()
    m.freem()


@SETTINGS
@given(chains(), st.data())
def test_pullup_makes_the_prefix_contiguous(spec, data):
    m, model = build(spec)
    w = Witness(m, model)
    n = data.draw(st.integers(0, min(len(model), MCLBYTES)))
    m.pullup(n)
    assert m.lengths()[0] >= n
    assert m.segments()[0][:n] == model[:n]
    check(m, model, spec[3])
    w.verify_and_free()
    m.freem()


@SETTINGS
@given(chains(), st.data())
def test_split_then_cat_round_trips(spec, data):
    m, model = build(spec)
    w = Witness(m, model)
    off = data.draw(st.integers(0, len(model)))
    tail = m.split(off)
    check(m, model[:off], spec[3])
    check(tail, model[off:], spec[3])
    m.cat(tail)
    assert tail.freed
    check(m, model, spec[3])
    w.verify_and_free()
    m.freem()


@SETTINGS
@given(chains(), st.data())
def test_defrag_preserves_content(spec, data):
    m, model = build(spec)
    w = Witness(m, model)
    m.defrag()
    check(m, model, spec[3])
    # page-size jumbos, then at most one 2k cluster or plain mbuf
    assert m.nmbufs <= max(1, -(-len(model) // mbuf.MJUMPAGESIZE) + 1)
    assert all(r in (None, 1) for r in m.cluster_refcounts())
    w.verify_and_free()
    m.freem()


@SETTINGS
@given(chains(max_segments=8), st.integers(1, 4))
def test_collapse_bounds_the_fragments(spec, maxfrags):
    m, model = build(spec)
    w = Witness(m, model)
    ok = m.collapse(maxfrags)
    if ok:
        assert m.nmbufs <= maxfrags
    check(m, model, spec[3])
    w.verify_and_free()
    m.freem()


@SETTINGS
@given(chains(), st.data())
def test_copyback_writes_and_extends(spec, data):
    m, model = build(spec)
    w = Witness(m, model)
    off = data.draw(st.integers(0, len(model) + 300))
    n = data.draw(st.integers(0, 5000))
    blob = payload(data.draw(st.integers(0, 2**32)), n)
    m.copyback(off, blob)
    if off > len(model):
        model = model + bytes(off - len(model))
    model = model[:off] + blob + model[off + n:]
    check(m, model, spec[3])
    w.verify_and_free()
    m.freem()


@SETTINGS
@given(chains(), st.integers(0, 6000), st.integers(0, 2**32))
def test_append_adds_at_the_end(spec, n, seed):
    m, model = build(spec)
    w = Witness(m, model)
    blob = payload(seed, n)
    m.append(blob)
    check(m, model + blob, spec[3])
    w.verify_and_free()
    m.freem()


@SETTINGS
@given(chains(), st.integers(0, 3000), st.integers(0, 2**32))
def test_prepend_uses_leading_space_or_a_new_mbuf(spec, n, seed):
    m, model = build(spec)
    w = Witness(m, model)
    first = m.layout()[0]
    blob = payload(seed, n)
    count = m.nmbufs
    m.prepend(blob)
    check(m, blob + model, spec[3])
    if first["writable"] and first["leading"] >= n:
        assert m.nmbufs == count, "leading space was there but not used"
    w.verify_and_free()
    m.freem()


@SETTINGS
@given(chains())
def test_dup_is_a_deep_writable_copy(spec):
    m, model = build(spec)
    d = m.dup()
    check(d, model, spec[3])
    assert all(r in (None, 1) for r in d.cluster_refcounts())
    assert not set(filter(None, d.cluster_addresses())) & set(filter(None, m.cluster_addresses()))
    d.copyback(0, b"\xff" * len(model))
    assert bytes(m) == model
    d.freem()
    m.freem()


@SETTINGS
@given(st.integers(1, 20000), st.integers(0, MHLEN - 1), st.integers(0, 2**32),
       st.integers(0, 255))
def test_devget_builds_the_packet(n, leading, seed, rcvif):
    blob = payload(seed, n)
    m = Mbuf.devget(blob, leading=leading, rcvif=rcvif)
    check(m, blob, True)
    assert m.rcvif == rcvif
    assert m.layout()[0]["leading"] == leading
    m.freem()


@SETTINGS
@given(chains(pkthdr=True))
def test_fixhdr_and_length(spec):
    m, model = build(spec)
    m.adj(0)
    assert m.fixhdr() == len(model) == m.pkthdr_len == len(m)
    m.freem()


# --- a random sequence of operations ---------------------------------------------------------

class ChainMachine(RuleBasedStateMachine):
    """Any sequence of operations keeps the chain equal to the model, keeps
    every shared read-only copy unchanged, and leaks nothing (the leak-check
    fixture runs after the whole test)."""

    @initialize(spec=chains(pkthdr=True))
    def make(self, spec):
        self.m, self.model = build(spec)
        self.witnesses: list[Witness] = []

    @rule()
    def share(self):
        if len(self.witnesses) < 3:
            self.witnesses.append(Witness(self.m, self.model))

    @precondition(lambda self: self.witnesses)
    @rule(i=st.integers(0, 2))
    def drop_share(self, i):
        self.witnesses.pop(i % len(self.witnesses)).verify_and_free()

    @rule(data=st.data())
    def adj(self, data):
        n = data.draw(st.integers(-len(self.model) - 2, len(self.model) + 2))
        self.m.adj(n)
        self.model = self.model[n:] if n >= 0 else self.model[:max(0, len(self.model) + n)]

    @rule(data=st.data())
    def copyback(self, data):
        off = data.draw(st.integers(0, len(self.model) + 100))
        blob = payload(data.draw(st.integers(0, 2**32)), data.draw(st.integers(0, 2500)))
        self.m.copyback(off, blob)
        model = self.model + bytes(max(0, off - len(self.model)))
        self.model = model[:off] + blob + model[off + len(blob):]

    @rule(n=st.integers(0, 3000), seed=st.integers(0, 2**32))
    def append(self, n, seed):
        blob = payload(seed, n)
        self.m.append(blob)
        self.model += blob

    @rule(n=st.integers(0, 400), seed=st.integers(0, 2**32))
    def prepend(self, n, seed):
        blob = payload(seed, n)
        self.m.prepend(blob)
        self.model = blob + self.model

    @rule(data=st.data())
    def pullup(self, data):
        n = data.draw(st.integers(0, min(len(self.model), MCLBYTES)))
        self.m.pullup(n)
        assert self.m.lengths()[0] >= n

    @rule(data=st.data())
    def split_cat(self, data):
        off = data.draw(st.integers(0, len(self.model)))
        tail = self.m.split(off)
        assert bytes(tail) == self.model[off:]
        self.m.cat(tail)

    @rule(data=st.data())
    def copym_slice(self, data):
        off = data.draw(st.integers(0, len(self.model)))
        n = data.draw(st.integers(0, len(self.model) - off))
        c = self.m.copym(off, n)
        assert bytes(c) == self.model[off:off + n]
        c.freem()

    @rule()
    def defrag(self):
        self.m.defrag()

    @rule(maxfrags=st.integers(1, 3))
    def collapse(self, maxfrags):
        if self.m.collapse(maxfrags):
            assert self.m.nmbufs <= maxfrags

    @rule()
    def replace_with_dup(self):
        d = self.m.dup()
        self.m.freem()
        self.m = d

    @invariant()
    def equals_model(self):
        check(self.m, self.model, True)
        for w in self.witnesses:
            assert bytes(w.copy) == w.model

    def teardown(self):
        for w in self.witnesses:
            w.verify_and_free()
        self.m.freem()


TestChainMachine = ChainMachine.TestCase
TestChainMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])


# --- cluster sharing ---------------------------------------------------------------------------

def clusters_in_use() -> int:
    from allocator_pyx.netstat import netstat_m_dict
    return netstat_m_dict(mbuf.zone_stats())["clusters"]["current"]


def test_copym_raises_the_refcount_and_the_cluster_goes_back_after_the_last_free():
    base = clusters_in_use()
    a = Mbuf.getcl()
    a.append(b"x" * 1500)
    assert clusters_in_use() == base + 1
    b = a.copym()
    c = a.copym(100, 200)
    assert a.cluster_refcounts() == [3] == b.cluster_refcounts() == c.cluster_refcounts()
    assert a.cluster_addresses() == b.cluster_addresses() == c.cluster_addresses()
    assert clusters_in_use() == base + 1, "a copy must not take a cluster"
    a.freem()
    assert b.cluster_refcounts() == [2]
    assert clusters_in_use() == base + 1
    assert bytes(c) == b"x" * 200
    b.freem()
    assert c.cluster_refcounts() == [1]
    assert clusters_in_use() == base + 1
    c.freem()
    assert clusters_in_use() == base


def test_copyback_on_a_shared_cluster_copies_it_first():
    a = Mbuf.devget(bytes(range(256)) * 6)
    b = a.copypacket()
    assert a.cluster_refcounts()[0] == 2
    a.copyback(10, b"hello")
    assert bytes(b) == bytes(range(256)) * 6
    assert a.copydata(10, 5) == b"hello"
    assert a.cluster_refcounts()[0] == 1 and b.cluster_refcounts()[0] == 1
    assert a.cluster_addresses()[0] != b.cluster_addresses()[0]
    a.freem()
    b.freem()


def test_m_split_shares_the_straddling_cluster():
    a = Mbuf.devget(b"a" * 1000 + b"b" * 1000)
    b = a.split(1000)
    assert a.cluster_addresses() == b.cluster_addresses()
    assert a.cluster_refcounts() == [2]
    assert bytes(a) == b"a" * 1000 and bytes(b) == b"b" * 1000
    # a's trailing space is b's data: it must not be handed out for writing
    assert a.layout()[0]["writable"] is False
    a.append(b"c" * 10)
    assert bytes(b) == b"b" * 1000 and bytes(a) == b"a" * 1000 + b"c" * 10
    a.freem()
    b.freem()


def test_pack_pair_is_returned_by_whichever_mbuf_holds_the_last_reference():
    st0 = mbuf.zone_stats()
    a = Mbuf.getcl()
    b = a.copypacket()
    a.freem()                       # the Packet mbuf goes first, the copy keeps the cluster
    st1 = mbuf.zone_stats()
    assert st1["mbuf_packet"]["used"] == st0["mbuf_packet"]["used"] + 1
    assert st1["mbuf"]["used"] == st0["mbuf"]["used"]
    b.freem()                       # ... and brings the pair home
    st2 = mbuf.zone_stats()
    assert st2["mbuf_packet"]["used"] == st0["mbuf_packet"]["used"]
    assert st2["mbuf"]["used"] == st0["mbuf"]["used"]
    assert st2["mbuf_cluster"]["used"] == st1["mbuf_cluster"]["used"]   # pair kept whole


# --- the Python handle never crashes ------------------------------------------------------------

def test_use_after_free_raises():
    m = Mbuf.devget(b"abc")
    m.freem()
    assert m.freed
    calls = [lambda: m.length, lambda: bytes(m), lambda: m.copym(), lambda: m.dup(),
             lambda: m.prepend(4), lambda: m.pullup(1), lambda: m.adj(1),
             lambda: m.split(0), lambda: m.defrag(), lambda: m.collapse(1),
             lambda: m.copydata(), lambda: m.copyback(0, b"x"), lambda: m.append(b"x"),
             lambda: m.fixhdr(), lambda: m.free(), lambda: m.freem(),
             lambda: m.cluster_refcounts(), lambda: m.writev_fd(1), lambda: m.iovec(),
             lambda: Mbuf.get().cat(m), lambda: m.cat(Mbuf.get()), lambda: len(m),
             lambda: m.layout(), lambda: m.clget()]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_cat_hands_the_other_chain_over():
    a, b = Mbuf.devget(b"a" * 10), Mbuf.devget(b"b" * 3000)
    a.cat(b)
    assert b.freed and bytes(a) == b"a" * 10 + b"b" * 3000 and a.pkthdr_len == 3010
    with pytest.raises(ValueError):
        a.cat(a)
    with pytest.raises(ValueError):
        b.length
    a.freem()


def test_bad_arguments_raise_and_leave_the_chain_alone():
    m = Mbuf.devget(b"0123456789")
    for bad in (lambda: m.copydata(5, 6), lambda: m.copydata(-1, 2), lambda: m.copym(11),
                lambda: m.pullup(11), lambda: m.pullup(MCLBYTES + 1), lambda: m.split(11),
                lambda: m.prepend(-1), lambda: m.collapse(0), lambda: m.copyback(-1, b"x"),
                lambda: Mbuf.devget(b""), lambda: Mbuf.devget(b"x", leading=MHLEN),
                lambda: Mbuf.chain([b"x" * 300], kinds=["mbuf"]),
                lambda: Mbuf.chain([b"x"], kinds=["nope"])):
        with pytest.raises(ValueError):
            bad()
    assert bytes(m) == b"0123456789"
    m.freem()


def test_free_moves_the_handle_along_the_chain():
    m = Mbuf.chain([b"a", b"bb", b"ccc"])
    assert m.free() is True and bytes(m) == b"bbccc"
    assert m.free() is True and bytes(m) == b"ccc"
    assert m.free() is False and m.freed


def test_dropped_handles_free_their_chains():
    before = mbuf.zone_stats()["mbuf"]["used"]
    for _ in range(100):
        Mbuf.chain([b"x" * 10, b"y" * 10], kinds=["mbuf", "mbuf"])
    assert mbuf.zone_stats()["mbuf"]["used"] == before


def test_split_at_the_end_without_packet_header_gives_an_empty_chain():
    m = Mbuf.chain([b"abc"], pkthdr=False)
    t = m.split(3)
    assert bytes(t) == b"" and bytes(m) == b"abc" and m.pkthdr_len is None
    t.freem()
    m.freem()


def test_m_prepend_on_denied_allocation_frees_the_chain(mbuf_limits):
    m = Mbuf.devget(b"z" * 100)
    # no leading space, and no mbuf to be had
    mbuf_limits.set_limits(nmbufs=1, nmbclusters=0, nmbjumbop=0, nmbjumbo9=0, nmbjumbo16=0)
    with pytest.raises(MbufDenied):
        m.prepend(10)
    assert m.freed
