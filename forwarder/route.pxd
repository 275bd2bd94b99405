# cython: language_level=3
#
# route.pxd -- the IPv4 longest-prefix-match table of the dataplane.
#
# Structure: DIR-24-8 (Gupta/Lin/McKeown 1998; DPDK rte_lpm).
#
#   tbl24   2^24 uint32 entries, one per /24, indexed by dst >> 8 (64 MiB of
#           virtual memory, mmap()ed: pages never written cost nothing, a
#           default route touches all of it; THP-advised).
#   tbl8    groups of 256 uint32 entries, one group per /24 that holds a
#           prefix longer than /24, indexed by dst & 0xff.  A region for
#           tbl8_max groups (1 KiB each) is reserved PROT_NONE up front and
#           committed 256 groups at a time: it never moves, so a lookup never
#           races a realloc.
#
# Entry (tbl24 and tbl8), uint32:
#
#   bits  0..23  next-hop index (leaf) or tbl8 group index (RT_EXT set)
#   bits 24..29  prefix length + 1 of the route that wrote the entry (leaf);
#                0 with bits 0..23 = 0 is "no route"
#   bit  30      RT_EXT (tbl24 only): the /24 is split into a tbl8 group
#
# A lookup is one load (<= /24 routes) or two (longer ones): its cost does
# not depend on how many routes there are, only on cache/TLB misses.
#
# Concurrency: one writer at a time (the control plane: RouteTable's add and
# delete take the table's lock and run with the GIL held), any number of
# nogil readers (rt_lookup) in other threads.  Every entry is written with a
# single aligned 32-bit atomic store, so a reader sees for each address either the old or
# the new result, never a torn one.  A route change over a range (say a /8)
# is not atomic as a whole: while it is applied, lookups in the range may
# see the old route for some /24s and the new one for others -- the same
# transient a kernel FIB shows, and the price of updating in place instead of
# swapping a whole 64 MiB copy per change (RCU of the full table: atomic
# changes but 2x memory and a full copy per update, i.e. unusable for
# bulk loads).  Publication order: a tbl8 group is fully filled before the
# tbl24 entry pointing at it is stored (release); next-hop slots are written
# before any entry names them (release fence).  Freed tbl8 groups and
# next-hop slots are recycled oldest-first, and only once 64 freed ones
# wait (fresh ones are used until then); a freed next-hop slot keeps its
# contents until recycled.  A reader
# re-checks the tbl24 entry after reading a tbl8 entry, so a lookup that
# raced a group collapse retries instead of reading a recycled group.
# Memory is only unmapped by rt_destroy: keep the RouteTable alive while a
# dataplane thread uses its rtable.

from libc.stdint cimport uint32_t, int32_t, uint64_t

cdef enum rt_nh_type:
    NH_NONE = 0                 # free slot
    NH_FORWARD = 1              # unicast: to gateway (or to the destination if gateway == 0) out ifindex
    NH_LOCAL = 2                # an address of the router: deliver locally
    NH_BLACKHOLE = 3            # drop silently
    NH_UNREACHABLE = 4          # drop, ICMP unreachable (net unreachable, code 0)
    NH_PROHIBIT = 5             # drop, ICMP communication administratively prohibited (code 13)
    NH_MULTIPATH = 6            # ECMP: a group of NH_FORWARD next hops, one chosen per flow (below)

cdef enum:
    RT_TBL24_SHIFT = 8
    RT_TBL24_SIZE = 1 << 24
    RT_TBL8_SIZE = 256          # entries per group
    RT_VAL_MASK = 0x00ffffff
    RT_DEPTH_SHIFT = 24
    RT_DEPTH_MASK = 0x3f000000
    RT_EXT = 0x40000000
    RT_MAX_INDEX = 0x00ffffff   # next-hop / group indices are < this
    RT_DEFAULT_TBL8 = 1 << 18   # groups reserved (256 MiB virtual, committed on use)
    RT_DEFAULT_NEXTHOPS = 1 << 16
    RT_BULK_PREFETCH = 8        # lookahead of rt_lookup_bulk
    RT_NHG_SLOTS = 64           # slots of a next-hop group: members (repeated by weight) per group

cdef struct rt_nexthop:
    uint32_t gateway            # HOST order; 0 = directly connected (the destination is the neighbour)
    int32_t ifindex             # the router's interface index
    int32_t type                # rt_nh_type
    uint32_t nslots             # NH_MULTIPATH: slots used in the group's row of nhg (1..RT_NHG_SLOTS)

cdef struct rtable:
    uint32_t *tbl24             # RT_TBL24_SIZE entries
    uint32_t *tbl8              # tbl8_max * RT_TBL8_SIZE entries (reserved; tbl8_committed groups usable)
    rt_nexthop *nh              # nh_max slots
    uint32_t *nhg               # nh_max rows of RT_NHG_SLOTS member indices (rows of groups only are touched)
    uint32_t tbl8_max
    uint32_t tbl8_committed     # groups backed by read/write memory
    uint32_t tbl8_hwm           # groups ever handed out (fresh ones come from here)
    uint32_t tbl8_used          # groups in use
    uint32_t *tbl8_fifo         # ring of freed groups, oldest first
    uint32_t tbl8_fifo_head
    uint32_t tbl8_fifo_len
    uint32_t nh_max
    uint64_t generation         # bumped (release) after every change: lets readers drop caches

# Atomic access to entries (single 32-bit loads/stores: plain movs on x86).
cdef extern from *:
    """
    #ifndef FORWARDER_RT_ATOMIC_H
    #define FORWARDER_RT_ATOMIC_H
    static inline uint32_t rt_load_acq(const uint32_t *p)
    { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline uint32_t rt_load_rlx(const uint32_t *p)
    { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void rt_store_rlx(uint32_t *p, uint32_t v)
    { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    static inline void rt_store_rel(uint32_t *p, uint32_t v)
    { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline void rt_fence_rel(void)
    { __atomic_thread_fence(__ATOMIC_RELEASE); }
    static inline uint64_t rt_gen_load(const uint64_t *p)
    { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void rt_gen_bump(uint64_t *p)
    { __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE); }
    static inline void rt_prefetch(const void *p)
    { __builtin_prefetch(p, 0, 0); }
    /* murmur3's finalizer: every input bit moves every output bit */
    static inline uint32_t rt_hash_mix(uint32_t h)
    { h ^= h >> 16; h *= 0x85ebca6bU; h ^= h >> 13; h *= 0xc2b2ae35U; h ^= h >> 16; return h; }
    #endif
    """
    uint32_t rt_load_acq(const uint32_t *p) nogil
    uint32_t rt_load_rlx(const uint32_t *p) nogil
    void rt_store_rlx(uint32_t *p, uint32_t v) nogil
    void rt_store_rel(uint32_t *p, uint32_t v) nogil
    void rt_fence_rel() nogil
    uint64_t rt_gen_load(const uint64_t *p) nogil
    void rt_gen_bump(uint64_t *p) nogil
    void rt_prefetch(const void *p) nogil
    uint32_t rt_hash_mix(uint32_t h) nogil


# --- lookups (inline: compiled into the dataplane) -------------------------------

cdef inline uint32_t rt_lookup_entry(rtable *t, uint32_t dst) noexcept nogil:
    """The leaf entry for dst (HOST order): 0 = no route."""
    cdef uint32_t e, e8, again
    cdef uint32_t *slot = &t.tbl24[dst >> RT_TBL24_SHIFT]
    e = rt_load_acq(slot)
    while e & RT_EXT:
        e8 = rt_load_acq(&t.tbl8[(<uint64_t>(e & RT_VAL_MASK) << 8) | (dst & 0xff)])
        again = rt_load_rlx(slot)
        if again == e:
            return e8
        e = again               # the /24 changed under us (group collapsed or replaced): retry
    return e


cdef inline int rt_lookup(rtable *t, uint32_t dst) noexcept nogil:
    """Longest-prefix match of dst (HOST order): next-hop index into t.nh, or -1."""
    cdef uint32_t e = rt_lookup_entry(t, dst)
    if e == 0:
        return -1
    return <int>(e & RT_VAL_MASK)


cdef inline int rt_entry_plen(uint32_t e) noexcept nogil:
    """Prefix length of the route behind a leaf entry, -1 for no route."""
    return <int>((e & RT_DEPTH_MASK) >> RT_DEPTH_SHIFT) - 1


# --- next-hop groups (ECMP) ------------------------------------------------------
#
# A multipath route names one next-hop slot of type NH_MULTIPATH; its row of
# t.nhg (same index) lists member next hops, each repeated in proportion to
# its weight, in contiguous runs (nslots in all, at most RT_NHG_SLOTS).  A
# flow's hash picks the slot: (hash * nslots) >> 32, so the runs are the
# hash-threshold regions of RFC 2992 -- a member added or removed moves only
# the flows of the regions that change, and one flow (one hash) always takes
# the same member: no reordering within a flow.  FreeBSD's nhgrp picks the
# same way (a slot array, indexed by the flowid).  Members are plain
# NH_FORWARD slots shared with single-path routes; a group holds a reference
# on each, and a group's row is written before its slot, which is written
# before any route entry names it (the release fence of rt_add).

cdef inline uint32_t rt_nhg_pick(const uint32_t *row, uint32_t nslots, uint32_t hash) noexcept nogil:
    """The member of a group's row that a flow hash selects."""
    return row[(<uint64_t>hash * nslots) >> 32]


cdef inline const rt_nexthop *rt_nh_select(rtable *t, const rt_nexthop *nh, uint32_t hash) noexcept nogil:
    """nh itself, or for a multipath next hop the member the flow hash picks."""
    if nh == NULL or nh.type != NH_MULTIPATH:
        return nh
    return &t.nh[rt_nhg_pick(&t.nhg[<uint64_t>(nh - t.nh) * RT_NHG_SLOTS], nh.nslots, hash)]


cdef inline uint32_t rt_addr_hash(uint32_t a) noexcept nogil:
    """A hash of one address: for the router's own packets, which have no
    flow to keep together, only a destination."""
    return rt_hash_mix(a)


cdef inline const rt_nexthop *rt_lookup_route(rtable *t, uint32_t dst) noexcept nogil:
    """Longest-prefix match of dst (HOST order): the route's next hop as it
    is (a multipath one included; rt_nh_select picks its member), or NULL."""
    cdef uint32_t e = rt_lookup_entry(t, dst)
    if e == 0:
        return NULL
    return &t.nh[e & RT_VAL_MASK]


cdef inline const rt_nexthop *rt_lookup_nh(rtable *t, uint32_t dst) noexcept nogil:
    """Longest-prefix match of dst (HOST order): its next hop (of a multipath
    route, the member dst's own hash picks), or NULL.  Forwarding uses
    rt_lookup_route + rt_nh_select with the packet's flow hash instead."""
    return rt_nh_select(t, rt_lookup_route(t, dst), rt_addr_hash(dst))


cdef inline void rt_lookup_bulk(rtable *t, const uint32_t *dst, int32_t *out, int n) noexcept nogil:
    """out[i] = rt_lookup(t, dst[i]) for a burst, prefetching tbl24 entries
    RT_BULK_PREFETCH lookups ahead to overlap cache misses."""
    cdef int i
    cdef int ahead = RT_BULK_PREFETCH if n > RT_BULK_PREFETCH else n
    for i in range(ahead):
        rt_prefetch(&t.tbl24[dst[i] >> RT_TBL24_SHIFT])
    for i in range(n):
        if i + RT_BULK_PREFETCH < n:
            rt_prefetch(&t.tbl24[dst[i + RT_BULK_PREFETCH] >> RT_TBL24_SHIFT])
        out[i] = rt_lookup(t, dst[i])


# --- table management (route.pyx; control plane, single writer) --------------------

# A table with room for tbl8_max groups and nh_max next hops (0 = defaults); NULL on failure.
cdef rtable *rt_create(uint32_t tbl8_max, uint32_t nh_max) noexcept nogil
cdef void rt_destroy(rtable *t) noexcept nogil
# Set next-hop slot idx (before any route names it; never while routes name it).
cdef int rt_nh_set(rtable *t, uint32_t idx, uint32_t gateway, int32_t ifindex, int32_t type) noexcept nogil
# Make slot idx a multipath next hop whose row is members[0..nslots) (same rule).
cdef int rt_nhg_set(rtable *t, uint32_t idx, const uint32_t *members, uint32_t nslots) noexcept nogil
# The group rows (nh_max * RT_NHG_SLOTS indices, reserved, committed as touched),
# shared by both families' tables; NULL on failure.
cdef uint32_t *rt_nhg_map(uint32_t nh_max) noexcept nogil
cdef void rt_nhg_unmap(uint32_t *nhg, uint32_t nh_max) noexcept nogil
# Install prefix/plen (HOST order, host bits zero) -> next hop nh, replacing
# the same prefix if present.  0, or -1 (bad argument / no tbl8 group left:
# the table is unchanged).
cdef int rt_add(rtable *t, uint32_t prefix, int plen, uint32_t nh) noexcept nogil
# Remove prefix/plen.  The caller keeps the authoritative route list and
# passes the next-shorter route covering the prefix (cover_nh < 0: none),
# whose entries take the freed range back.  0 or -1 (bad argument).
cdef int rt_del(rtable *t, uint32_t prefix, int plen, int cover_nh, int cover_plen) noexcept nogil
# Bytes of tbl24 resident in RAM (mincore), for stats.
cdef uint64_t rt_tbl24_resident(rtable *t) noexcept nogil


# --- Python handle -------------------------------------------------------------
# The dataplane takes `cdef rtable *t = table.t` and calls rt_lookup(t, ...)
# without the GIL; add/delete go through the methods (GIL held).
# The next-hop slots of a table (either family's): interned by key, counted
# by reference, freed slots reused oldest first.  What a slot holds is the
# table's (rt_nh_set / rt6_nh_set); the bookkeeping, and the groups' rows, are
# here once.
cdef class NexthopSlots:
    cdef dict _nh_by_key        # (gateway, ifindex, type) or (NH_MULTIPATH, row) -> next-hop index
    cdef list _nh_key           # index -> key or None
    cdef list _nh_refs          # index -> routes (and groups) using it
    cdef object _nh_free        # deque of freed indices, reused oldest first
    cdef uint32_t _nh_hwm       # slots ever used
    cdef uint32_t _nh_max       # slots the table has
    cdef object __weakref__

    cdef int _nh_alloc(self, object key) except -1
    cdef int _nhg_get(self, list members, list weights) except -1
    cdef int _nhg_write(self, int idx, tuple row) except -1
    cdef void _nh_put(self, int idx)


cdef class RouteTable(NexthopSlots):
    cdef rtable *t
    cdef dict _routes           # (prefix << 6 | plen) -> next-hop index: the authoritative list
    cdef object _lock           # serializes writers (threading.Lock)

    cdef int _nh_get(self, uint32_t gateway, int32_t ifindex, int32_t type) except -1
    cdef int _add(self, uint32_t prefix, int plen, int idx) except -1
    cdef int _delete(self, uint32_t prefix, int plen) except -1
