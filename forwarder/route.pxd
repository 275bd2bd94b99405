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

cdef struct rt_nexthop:
    uint32_t gateway            # HOST order; 0 = directly connected (the destination is the neighbour)
    int32_t ifindex             # the router's interface index
    int32_t type                # rt_nh_type

cdef struct rtable:
    uint32_t *tbl24             # RT_TBL24_SIZE entries
    uint32_t *tbl8              # tbl8_max * RT_TBL8_SIZE entries (reserved; tbl8_committed groups usable)
    rt_nexthop *nh              # nh_max slots
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


cdef inline const rt_nexthop *rt_lookup_nh(rtable *t, uint32_t dst) noexcept nogil:
    """Longest-prefix match of dst (HOST order): its next hop, or NULL."""
    cdef uint32_t e = rt_lookup_entry(t, dst)
    if e == 0:
        return NULL
    return &t.nh[e & RT_VAL_MASK]


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
cdef class RouteTable:
    cdef rtable *t
    cdef dict _routes           # (prefix << 6 | plen) -> next-hop index: the authoritative list
    cdef dict _nh_by_key        # (gateway, ifindex, type) -> next-hop index
    cdef list _nh_key           # index -> key or None
    cdef list _nh_refs          # index -> routes using it
    cdef object _nh_free        # deque of freed indices, reused oldest first
    cdef uint32_t _nh_hwm       # slots ever used
    cdef object _lock           # serializes writers (threading.Lock)
    cdef object __weakref__

    cdef int _nh_get(self, uint32_t gateway, int32_t ifindex, int32_t type) except -1
    cdef void _nh_put(self, int idx)
    cdef int _add(self, uint32_t prefix, int plen, uint32_t gateway, int32_t ifindex, int32_t type) except -1
    cdef int _delete(self, uint32_t prefix, int plen) except -1
