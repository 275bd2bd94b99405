# cython: language_level=3
#
# route6.pxd -- the IPv6 longest-prefix-match table of the dataplane.
#
# Structure: a multibit trie with a 24-bit root and 8-bit strides (DPDK
# rte_lpm6; Gupta/Lin/McKeown's DIR-24-8 carried on byte by byte).
#
#   tbl24   2^24 uint32 entries, one per /24, indexed by the first three
#           bytes of the destination (64 MiB of virtual memory, mmap()ed:
#           pages never written cost nothing; THP-advised).
#   tbl8    groups of 256 uint32 entries.  A group hangs below an entry
#           whose span holds a longer prefix, and is indexed by the next
#           byte of the destination: level 1 (below tbl24) by byte 3, level
#           k by byte 2 + k, level 13 by byte 15 -- the /121../128 level, so
#           a lookup reads at most 14 entries.  A region for tbl8_max groups
#           (1 KiB each) is reserved PROT_NONE up front and committed 2048
#           groups (one 2 MiB huge page) at a time: it never moves, so a
#           lookup never races a realloc.
#
# Entry (tbl24 and tbl8), uint32:
#
#   bits  0..21  next-hop index (leaf) or tbl8 group index (RT6_EXT set)
#   bits 22..29  prefix length + 1 of the route that wrote the entry (leaf),
#                0..129; 0 with bits 0..21 = 0 is "no route"
#   bit  30      RT6_EXT: the entry's span is split into the group in bits 0..21
#   bit  31      unused (0)
#
# A lookup costs one load per level its destination goes down: one for
# destinations under no route longer than /24, four under a /48 (the root,
# then the groups of its /24, /32 and /40), fourteen under a /128.
#
# Concurrency (as route.pxd): one writer at a time (Route6Table.add/delete
# take the table's lock and run with the GIL held), any number of nogil
# readers (rt6_lookup*) in other threads.  Every entry is written with a
# single aligned 32-bit atomic store, so a reader sees for each address
# either the old or the new result, never a torn one; a change over a range
# is not atomic as a whole (see route.pxd for why that is the right trade).
# Publication order: a new group -- or a whole new chain of groups, when a
# /48 lands under an unsplit /24 -- is filled completely before the one
# entry that links it in is stored (release); next-hop slots are written
# before any entry names them (release fence).  A group is collapsed (its
# parent entry gets the group's one remaining leaf, release) before it is
# freed, and a freed group is not written again until it is reused: a
# reader still inside it reads that same leaf, which is what the parent
# entry now says.  Only reuse can mislead a reader, so reuse is counted:
# the writer bumps t.recycled, then a release fence, then refills the
# group; a reader loads t.recycled (acquire) before its tbl24 entry and
# again after its leaf, and starts over if it moved (a seqlock whose
# writer is the rare recycling, not every change).  Freed groups and
# next-hop slots are reused oldest-first and only once 64 freed ones wait,
# which keeps those retries rare, and a freed next-hop slot keeps its
# contents until reused.
# Memory is only unmapped by rt6_destroy: keep the Route6Table alive while a
# dataplane thread uses its rt6table.

from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t

# One definition of the next-hop types and of the atomics: route.pxd's.
from forwarder.route cimport (NH_NONE, NH_FORWARD, NH_LOCAL, NH_BLACKHOLE, NH_UNREACHABLE,
                              NH_PROHIBIT, NH_MULTIPATH, RT_NHG_SLOTS, rt_nhg_pick, rt_hash_mix,
                              rt_nhg_map, rt_nhg_unmap, NexthopSlots, rt_load_acq, rt_store_rlx,
                              rt_store_rel, rt_fence_rel, rt_gen_load, rt_gen_bump)

# route.pxd's rt_prefetch is non-temporal (an IPv4 lookup reads a random
# tbl24 line once); the groups of this trie are read again and again (the
# /24 and /32 levels are shared by many prefixes): keep them in every cache.
cdef extern from *:
    """
    #ifndef FORWARDER_RT6_PREFETCH_H
    #define FORWARDER_RT6_PREFETCH_H
    static inline void rt6_prefetch(const void *p)
    { __builtin_prefetch(p, 0, 3); }
    #endif
    """
    void rt6_prefetch(const void *p) nogil

cdef enum:
    RT6_TBL24_SIZE = 1 << 24
    RT6_TBL8_SIZE = 256         # entries per group
    RT6_LEVELS = 13             # group levels below tbl24 (bytes 3..15)
    RT6_VAL_MASK = 0x003fffff
    RT6_DEPTH_SHIFT = 22
    RT6_DEPTH_MASK = 0x3fc00000
    RT6_EXT = 0x40000000
    RT6_MAX_INDEX = 0x003fffff  # next-hop / group indices are < this
    RT6_DEFAULT_TBL8 = 1 << 20  # groups reserved (1 GiB virtual, committed on use)
    RT6_DEFAULT_NEXTHOPS = 1 << 16
    RT6_BULK_MAX = 64           # burst size limit of rt6_lookup_bulk

cdef struct rt6_nexthop:
    uint8_t gateway[16]         # network order; all zero = directly connected
    int32_t ifindex             # the router's interface index
    int32_t type                # rt_nh_type (route.pxd)
    uint32_t nslots             # NH_MULTIPATH: slots used in the group's row of nhg (route.pxd)

cdef struct rt6table:
    # what lookups read, on a cache line of its own (the struct is 64-byte
    # aligned): the writer's bookkeeping below changes with every add
    uint32_t *tbl24             # RT6_TBL24_SIZE entries
    uint32_t *tbl8              # tbl8_max * RT6_TBL8_SIZE entries (reserved; tbl8_committed groups usable)
    rt6_nexthop *nh             # nh_max slots
    uint32_t *nhg               # next-hop group rows, as route.pxd's rtable
    uint64_t recycled           # freed groups reused so far: bumped (then a release fence) before a reused group is refilled
    char _pad[88]
    # the writer's
    uint32_t tbl8_max
    uint32_t tbl8_committed     # groups backed by read/write memory
    uint32_t tbl8_hwm           # groups ever handed out (fresh ones come from here)
    uint32_t tbl8_used          # groups in use
    uint32_t *tbl8_fifo         # ring of freed groups, oldest first
    uint32_t tbl8_fifo_head
    uint32_t tbl8_fifo_len
    uint32_t nh_max
    uint64_t generation         # bumped (release) after every change: lets readers drop caches


# --- lookups (inline: compiled into the dataplane) -------------------------------

cdef inline uint32_t rt6_tbl24_index(const uint8_t *a) noexcept nogil:
    return (<uint32_t>a[0] << 16) | (<uint32_t>a[1] << 8) | a[2]


cdef inline uint32_t rt6_lookup_entry(rt6table *t, const uint8_t *a) noexcept nogil:
    """The leaf entry for the 16-byte address a (network order): 0 = no route."""
    cdef uint64_t r
    cdef uint32_t e
    cdef int d
    while True:
        r = rt_gen_load(&t.recycled)
        e = rt_load_acq(&t.tbl24[rt6_tbl24_index(a)])
        d = 0
        while e & RT6_EXT:
            if d == RT6_LEVELS:         # cannot happen (level 13 never splits): no route
                return 0
            e = rt_load_acq(&t.tbl8[(<size_t>(e & RT6_VAL_MASK) << 8) | a[3 + d]])
            d += 1
        # a tbl24 entry is always good; a group entry is, unless a group was
        # recycled meanwhile (the acquire loads above order this load last)
        if d == 0 or rt_gen_load(&t.recycled) == r:
            return e


cdef inline int rt6_lookup(rt6table *t, const uint8_t *a) noexcept nogil:
    """Longest-prefix match of a (16 bytes, network order): next-hop index into t.nh, or -1."""
    cdef uint32_t e = rt6_lookup_entry(t, a)
    if e == 0:
        return -1
    return <int>(e & RT6_VAL_MASK)


cdef inline int rt6_entry_plen(uint32_t e) noexcept nogil:
    """Prefix length of the route behind a leaf entry, -1 for no route."""
    return <int>((e & RT6_DEPTH_MASK) >> RT6_DEPTH_SHIFT) - 1


cdef inline const rt6_nexthop *rt6_lookup_route(rt6table *t, const uint8_t *a) noexcept nogil:
    """Longest-prefix match of a (16 bytes, network order): the route's next
    hop as it is (a multipath one included: rt6_nh_select), or NULL."""
    cdef uint32_t e = rt6_lookup_entry(t, a)
    if e == 0:
        return NULL
    return &t.nh[e & RT6_VAL_MASK]


cdef inline const rt6_nexthop *rt6_nh_select(rt6table *t, const rt6_nexthop *nh,
                                             uint32_t hash) noexcept nogil:
    """nh itself, or for a multipath next hop the member the flow hash picks
    (route.pxd: next-hop groups)."""
    if nh == NULL or nh.type != NH_MULTIPATH:
        return nh
    return &t.nh[rt_nhg_pick(&t.nhg[<uint64_t>(nh - t.nh) * RT_NHG_SLOTS], nh.nslots, hash)]


cdef inline uint32_t rt6_addr_hash(const uint8_t *a) noexcept nogil:
    """A hash of one address (the router's own packets): its 64-bit halves folded."""
    cdef const uint32_t *w = <const uint32_t *>a
    return rt_hash_mix(w[0] ^ w[1] ^ rt_hash_mix(w[2] ^ w[3]))


cdef inline const rt6_nexthop *rt6_lookup_nh(rt6table *t, const uint8_t *a) noexcept nogil:
    """Longest-prefix match of a (16 bytes, network order): its next hop (of
    a multipath route, the member a's own hash picks), or NULL."""
    return rt6_nh_select(t, rt6_lookup_route(t, a), rt6_addr_hash(a))


cdef inline void rt6_lookup_bulk(rt6table *t, const uint8_t * const *addrs, int32_t *out,
                                 int n) noexcept nogil:
    """out[i] = rt6_lookup(t, addrs[i]) for a burst of n <= RT6_BULK_MAX
    addresses (pointers to 16 bytes each, e.g. into the packets' headers;
    a longer burst is cut at RT6_BULK_MAX).

    The burst goes down the trie one level at a time: every lookup still
    pending prefetches its entry of the next level before any of them reads
    it, so the cache misses of a level overlap instead of queueing behind
    each other (a lookup under a /48 is four dependent loads).  One check of
    t.recycled covers the whole burst; if a group was recycled meanwhile,
    the lookups that went into groups are done again one by one."""
    cdef uint32_t *slot[RT6_BULK_MAX]
    cdef uint32_t e[RT6_BULK_MAX]
    cdef uint8_t depth[RT6_BULK_MAX]
    cdef uint8_t pending[RT6_BULK_MAX]
    cdef uint64_t r
    cdef int i, j, k, npend
    cdef bint deep
    if n > RT6_BULK_MAX:
        n = RT6_BULK_MAX
    r = rt_gen_load(&t.recycled)
    for i in range(n):
        slot[i] = &t.tbl24[rt6_tbl24_index(addrs[i])]
        rt6_prefetch(slot[i])
    npend = 0
    for i in range(n):
        e[i] = rt_load_acq(slot[i])
        depth[i] = 0
        if e[i] & RT6_EXT:
            pending[npend] = <uint8_t>i
            npend += 1
    deep = npend > 0
    while npend > 0:
        for j in range(npend):          # one level down: address and prefetch ...
            i = pending[j]
            slot[i] = &t.tbl8[(<size_t>(e[i] & RT6_VAL_MASK) << 8) | addrs[i][3 + depth[i]]]
            depth[i] += 1
            rt6_prefetch(slot[i])
        k = 0
        for j in range(npend):          # ... then read
            i = pending[j]
            e[i] = rt_load_acq(slot[i])
            if e[i] & RT6_EXT:
                if depth[i] == RT6_LEVELS:  # cannot happen (level 13 never splits): no route
                    e[i] = 0
                else:
                    pending[k] = <uint8_t>i
                    k += 1
        npend = k
    if deep and rt_gen_load(&t.recycled) != r:
        for i in range(n):
            if depth[i]:
                e[i] = rt6_lookup_entry(t, addrs[i])
    for i in range(n):
        out[i] = -1 if e[i] == 0 else <int32_t>(e[i] & RT6_VAL_MASK)


# --- table management (route6.pyx; control plane, single writer) -------------------

# A table with room for tbl8_max groups and nh_max next hops (0 = defaults); NULL on failure.
cdef rt6table *rt6_create(uint32_t tbl8_max, uint32_t nh_max) noexcept nogil
cdef void rt6_destroy(rt6table *t) noexcept nogil
# Set next-hop slot idx (before any route names it; never while routes name it).
# gateway: 16 bytes, network order, or NULL for directly connected.
cdef int rt6_nhg_set(rt6table *t, uint32_t idx, const uint32_t *members, uint32_t nslots) noexcept nogil
cdef int rt6_nh_set(rt6table *t, uint32_t idx, const uint8_t *gateway, int32_t ifindex,
                    int32_t type) noexcept nogil
# Install prefix/plen (16 bytes network order, host bits zero) -> next hop nh,
# replacing the same prefix if present.  0, or -1 (bad argument / not enough
# tbl8 groups left: the table is unchanged).
cdef int rt6_add(rt6table *t, const uint8_t *prefix, int plen, uint32_t nh) noexcept nogil
# Remove prefix/plen.  The caller keeps the authoritative route list and
# passes the next-shorter route covering the prefix (cover_nh < 0: none),
# whose entries take the freed range back; groups left uniform collapse.
# 0 or -1 (bad argument, or no such route in the trie).
cdef int rt6_del(rt6table *t, const uint8_t *prefix, int plen, int cover_nh,
                 int cover_plen) noexcept nogil
# Bytes of tbl24 resident in RAM (mincore), for stats.
cdef uint64_t rt6_tbl24_resident(rt6table *t) noexcept nogil


# --- Python handle -------------------------------------------------------------
# The dataplane takes `cdef rt6table *t = table.t` and calls rt6_lookup_nh(t, ...)
# without the GIL; add/delete go through the methods (GIL held).
cdef class Route6Table(NexthopSlots):
    cdef rt6table *t
    cdef dict _routes           # (prefix << 8 | plen) -> next-hop index: the authoritative list
    cdef object _plen_count     # routes per prefix length (129 ints): the cover search skips empty lengths
    cdef object _lock           # serializes writers (threading.Lock)

    cdef int _nh_get(self, bytes gateway, int32_t ifindex, int32_t type) except -1
    cdef int _add(self, object net, int plen, int idx) except -1
    cdef int _delete(self, object net, int plen) except -1
