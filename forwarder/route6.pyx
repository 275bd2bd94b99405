# cython: language_level=3
"""IPv6 longest-prefix-match routing table (DPDK rte_lpm6-like), usable without the GIL.

Design (see route6.pxd for the entry layout and the concurrency argument):

* ``tbl24``: 2^24 32-bit entries indexed by the first 24 bits -- 64 MiB of
  virtual memory, mmap()ed and THP-advised; only written pages are
  resident.  The IPv6 unicast space in use sits in 2000::/3 (1/8 of the
  root), and a ::/0 route makes all of it resident.
* ``tbl8``: 256-entry groups (1 KiB), one per byte of address below the
  root that some prefix reaches into: a /48 under an otherwise empty /24
  needs three (its /24, /32 and /40 each split), a /128 thirteen.  A
  region for ``tbl8_max`` groups (default 2^20 = 1 GiB virtual) is
  reserved PROT_NONE, 2 MiB-aligned, and committed 2048 groups (2 MiB:
  one transparent huge page, so walking the groups does not also miss the
  TLB at every level) at a time; it never moves under a reader.  Groups
  are what a table costs: 200 000 prefixes with today's BGP length mix
  (half /48) use 1.13 groups per prefix, 220 MiB, when more-specifics
  cluster under their allocations as they do on the Internet
  (scripts/bench_route.py --family 6); /48s scattered at random over the
  RIR blocks use ~1.6, prefixes of uniformly random length /0../128 ~6.
* Every entry carries the prefix length of the route that wrote it, so an
  add only overwrites entries of shorter-or-equal routes (going down into
  the groups below an entry it covers), and a delete only rewrites entries
  of exactly its length, with the next-shorter covering route taken from
  the authoritative Python-side dict (rte_lpm6 re-expands the covering rule
  the same way).  After a delete, the groups on the deleted prefix's path
  whose 256 entries became one and the same leaf collapse, bottom-up, into
  the entry above them: every group in the trie holds some prefix longer
  than its parent entry's span, so the number of groups is exactly the
  number of (/24, /32, ..., /120) spans with a longer prefix inside.
* A lookup is one dependent load per level: constant in the number of
  routes, linear in how deep the matching prefix is (1 load up to /24, 4
  for a /48, 14 for a /128).  ``rt6_lookup_bulk`` walks a burst level by
  level with prefetches so that those loads overlap between packets.

Trade-offs against the alternatives: a binary/path-compressed trie
(Linux's fib6, BSD radix) costs far less memory per prefix but tens of
dependent loads per lookup; a hash per prefix length (binary search on
lengths, Waldvogel) needs ~7 hashed probes and a rebuild of markers on
change.  The multibit trie trades ~1 KiB per split span for lookups that
are a few loads and never take a lock, like the IPv4 table next door.

Races (one writer, nogil readers): a reader sees each entry either before
or after the store that changed it.  A new chain of groups is linked in by
a single release store after it is complete.  A collapsed group is
unlinked (release) before it is freed and is not written again until it
is reused, so a reader still inside it reads the leaf its parent entry
now holds; reuse alone could mislead a reader, so the writer counts it
(``recycled``: bumped, release fence, then the refill) and a reader that
went into groups compares the count before and after its lookup and
retries if it moved -- one load of a read-mostly line at each end, where
re-reading every entry on the path would cost a load per level.  Freed
groups wait in a FIFO behind at least 64 others before reuse, which
keeps those retries rare.  Next-hop slots are interned and recycled the
same way (FIFO, 64 behind), so a reader that got an index always reads a
next hop that some route used.

Writers are the control plane (Route6Table.add/delete: the table's lock,
GIL held); readers are nogil ``rt6_lookup*`` calls in any thread.
"""

from collections import deque
import ipaddress
import socket
import threading

from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from posix.stdlib cimport posix_memalign
from libc.string cimport memcpy, memset
from posix.mman cimport (mmap, munmap, mprotect, madvise, mincore, PROT_NONE, PROT_READ,
                         PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE, MAP_FAILED,
                         MADV_HUGEPAGE)
from posix.unistd cimport sysconf, _SC_PAGESIZE

from allocator_pyx.includes cimport now_ns
from forwarder.route import NH_TYPES, NH_NAMES, nhg_members, nhg_paths, nhg_slots

cdef enum:
    TBL8_GROUP_BYTES = RT6_TBL8_SIZE * 4
    TBL8_COMMIT_GROUPS = 2048           # commit step: 2 MiB, one transparent huge page
    TBL8_QUARANTINE = 64                # freed groups wait behind at least this many
    NH_QUARANTINE = 64                  # same for next-hop slots
    BENCH_BURST = 32                    # burst of the bulk benchmark (the dataplane's)

TBL24_BYTES = RT6_TBL24_SIZE * 4
GROUP_BYTES = TBL8_GROUP_BYTES
MAX_INDEX = RT6_MAX_INDEX
DEFAULT_TBL8 = RT6_DEFAULT_TBL8
DEFAULT_NEXTHOPS = RT6_DEFAULT_NEXTHOPS
BULK_MAX = RT6_BULK_MAX

cdef object _ALL = (1 << 128) - 1
# _MASKS[l]: the network mask of a /l as an int
cdef tuple _MASKS = tuple(_ALL ^ ((1 << (128 - l)) - 1) for l in range(129))
cdef bytes _ZERO16 = bytes(16)
cdef object _IPv6Address = ipaddress.IPv6Address
cdef object _IPv4Address = ipaddress.IPv4Address
cdef object _AddressValueError = ipaddress.AddressValueError
cdef object _inet_pton = socket.inet_pton
cdef object _AF_INET6 = socket.AF_INET6


# --- C level ---------------------------------------------------------------------

cdef inline uint32_t _mk_leaf(int plen, uint32_t nh) noexcept nogil:
    return (<uint32_t>(plen + 1) << RT6_DEPTH_SHIFT) | nh


cdef inline uint32_t *_group(rt6table *t, uint32_t e) noexcept nogil:
    """The 256 entries of the group an extension entry points to."""
    return t.tbl8 + (<size_t>(e & RT6_VAL_MASK) << 8)


cdef inline int _last_level(int plen) noexcept nogil:
    """The group level holding the last bits of a prefix longer than /24:
    /25../32 -> 1, /33../40 -> 2, ..., /121../128 -> 13."""
    return (plen - 25) // 8 + 1


cdef enum:
    HUGE_PAGE = 2 << 20


cdef void *_map_aligned(size_t length, int prot, int flags) noexcept nogil:
    """mmap(length) at a 2 MiB boundary, THP-advised: every 2 MiB of it can
    be one huge page (one TLB entry instead of 512) once it is committed
    and touched.  MAP_FAILED on failure."""
    cdef size_t slack = HUGE_PAGE
    cdef char *p = <char *>mmap(NULL, length + slack, prot, flags, -1, 0)
    cdef char *a
    if <void *>p == MAP_FAILED:
        return MAP_FAILED
    a = <char *>(((<size_t>p) + slack - 1) & ~(slack - 1))
    if a > p:
        munmap(p, <size_t>(a - p))
    munmap(a + length, <size_t>(p + length + slack - (a + length)))
    madvise(a, length, MADV_HUGEPAGE)       # advisory
    return a


cdef rt6table *rt6_create(uint32_t tbl8_max, uint32_t nh_max) noexcept nogil:
    cdef rt6table *t
    cdef void *p
    if tbl8_max == 0:
        tbl8_max = RT6_DEFAULT_TBL8
    if nh_max == 0:
        nh_max = RT6_DEFAULT_NEXTHOPS
    if tbl8_max > <uint32_t>RT6_MAX_INDEX + 1 or nh_max > <uint32_t>RT6_MAX_INDEX + 1:
        return NULL
    if posix_memalign(<void **>&t, 64, sizeof(rt6table)) != 0:
        return NULL
    memset(t, 0, sizeof(rt6table))
    t.tbl8_max = tbl8_max
    t.nh_max = nh_max
    p = _map_aligned(<size_t>RT6_TBL24_SIZE * 4, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS)
    if p == MAP_FAILED:
        rt6_destroy(t)
        return NULL
    t.tbl24 = <uint32_t *>p
    p = _map_aligned(<size_t>tbl8_max * TBL8_GROUP_BYTES, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
    if p == MAP_FAILED:
        rt6_destroy(t)
        return NULL
    t.tbl8 = <uint32_t *>p
    p = mmap(NULL, <size_t>nh_max * sizeof(rt6_nexthop), PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        rt6_destroy(t)
        return NULL
    t.nh = <rt6_nexthop *>p
    t.nhg = rt_nhg_map(nh_max)
    if t.nhg == NULL:
        rt6_destroy(t)
        return NULL
    t.tbl8_fifo = <uint32_t *>malloc(<size_t>tbl8_max * 4)
    if t.tbl8_fifo == NULL:
        rt6_destroy(t)
        return NULL
    return t


cdef void rt6_destroy(rt6table *t) noexcept nogil:
    if t == NULL:
        return
    if t.tbl24 != NULL:
        munmap(t.tbl24, <size_t>RT6_TBL24_SIZE * 4)
    if t.tbl8 != NULL:
        munmap(t.tbl8, <size_t>t.tbl8_max * TBL8_GROUP_BYTES)
    if t.nh != NULL:
        munmap(t.nh, <size_t>t.nh_max * sizeof(rt6_nexthop))
    rt_nhg_unmap(t.nhg, t.nh_max)
    free(t.tbl8_fifo)
    free(t)


cdef int rt6_nh_set(rt6table *t, uint32_t idx, const uint8_t *gateway, int32_t ifindex,
                    int32_t type) noexcept nogil:
    if idx >= t.nh_max:
        return -1
    if gateway == NULL:
        memset(t.nh[idx].gateway, 0, 16)
    else:
        memcpy(t.nh[idx].gateway, gateway, 16)
    t.nh[idx].ifindex = ifindex
    t.nh[idx].type = type
    t.nh[idx].nslots = 0
    return 0


cdef int rt6_nhg_set(rt6table *t, uint32_t idx, const uint32_t *members, uint32_t nslots) noexcept nogil:
    cdef uint32_t j
    if idx >= t.nh_max or nslots == 0 or nslots > RT_NHG_SLOTS:
        return -1
    for j in range(nslots):
        if members[j] >= t.nh_max:
            return -1
        t.nhg[<uint64_t>idx * RT_NHG_SLOTS + j] = members[j]
    memset(t.nh[idx].gateway, 0, 16)
    t.nh[idx].ifindex = -1
    t.nh[idx].type = NH_MULTIPATH
    t.nh[idx].nslots = nslots
    return 0


cdef inline uint32_t _tbl8_available(rt6table *t) noexcept nogil:
    """Groups _tbl8_alloc can still hand out (fresh ones and freed ones)."""
    return (t.tbl8_max - t.tbl8_hwm) + t.tbl8_fifo_len


cdef long _tbl8_alloc(rt6table *t) noexcept nogil:
    """A group index, or -1.  Fresh groups are preferred until TBL8_QUARANTINE
    freed ones are waiting; then the oldest freed group is reused."""
    cdef uint32_t g, step
    if t.tbl8_fifo_len >= TBL8_QUARANTINE or (t.tbl8_hwm == t.tbl8_max and t.tbl8_fifo_len > 0):
        g = t.tbl8_fifo[t.tbl8_fifo_head]
        t.tbl8_fifo_head = (t.tbl8_fifo_head + 1) % t.tbl8_max
        t.tbl8_fifo_len -= 1
        t.tbl8_used += 1
        # a reader may still be in g: make it retry before g changes
        rt_gen_bump(&t.recycled)
        rt_fence_rel()
        return g
    if t.tbl8_hwm == t.tbl8_max:
        return -1
    if t.tbl8_hwm == t.tbl8_committed:
        step = TBL8_COMMIT_GROUPS
        if step > t.tbl8_max - t.tbl8_committed:
            step = t.tbl8_max - t.tbl8_committed
        if mprotect(<char *>t.tbl8 + <size_t>t.tbl8_committed * TBL8_GROUP_BYTES,
                    <size_t>step * TBL8_GROUP_BYTES, PROT_READ | PROT_WRITE) != 0:
            return -1
        t.tbl8_committed += step
    g = t.tbl8_hwm
    t.tbl8_hwm += 1
    t.tbl8_used += 1
    return g


cdef void _tbl8_free(rt6table *t, uint32_t g) noexcept nogil:
    t.tbl8_fifo[(t.tbl8_fifo_head + t.tbl8_fifo_len) % t.tbl8_max] = g
    t.tbl8_fifo_len += 1
    t.tbl8_used -= 1


cdef bint _valid_prefix(const uint8_t *p, int plen) noexcept nogil:
    """0 <= plen <= 128 and no bit of p beyond plen set."""
    cdef int i
    if plen < 0 or plen > 128:
        return False
    i = plen >> 3
    if plen & 7:
        if p[i] & (0xff >> (plen & 7)):
            return False
        i += 1
    while i < 16:
        if p[i]:
            return False
        i += 1
    return True


cdef void _range_set(rt6table *t, uint32_t *ents, uint32_t count, uint32_t leaf) noexcept nogil:
    """Write leaf over every entry of ents[0:count] whose route is not longer,
    going down into the groups below extension entries (a shorter route
    shows through wherever nothing longer covers it)."""
    cdef uint32_t j, e
    cdef uint32_t depth = leaf & RT6_DEPTH_MASK
    for j in range(count):
        e = ents[j]
        if e & RT6_EXT:
            _range_set(t, _group(t, e), RT6_TBL8_SIZE, leaf)
        elif (e & RT6_DEPTH_MASK) <= depth:
            rt_store_rlx(&ents[j], leaf)


cdef void _range_clear(rt6table *t, uint32_t *ents, uint32_t count, uint32_t depth,
                       uint32_t rep) noexcept nogil:
    """Write rep over every entry of ents[0:count] (and of the groups below
    them) that a route of this depth wrote."""
    cdef uint32_t j, e
    for j in range(count):
        e = ents[j]
        if e & RT6_EXT:
            _range_clear(t, _group(t, e), RT6_TBL8_SIZE, depth, rep)
        elif (e & RT6_DEPTH_MASK) == depth:
            rt_store_rlx(&ents[j], rep)


cdef inline bint _uniform(const uint32_t *grp) noexcept nogil:
    """All 256 entries the same leaf (or all empty): the group can collapse."""
    cdef uint32_t first = grp[0], j
    if first & RT6_EXT:
        return False
    for j in range(1, <uint32_t>RT6_TBL8_SIZE):
        if grp[j] != first:
            return False
    return True


cdef int _add_chain(rt6table *t, uint32_t *slot, const uint8_t *p, int level, int plen,
                    uint32_t leaf) noexcept nogil:
    """slot (an entry of level `level`, not an extension) gets a new chain of
    groups for levels level+1 .. _last_level(plen), each filled with the
    entry slot held, the prefix written into the last one; the chain is
    linked in by one release store once complete.  0 or -1 (no groups left:
    nothing changed)."""
    cdef int last = _last_level(plen)
    cdef int n = last - level, k
    cdef uint32_t old = slot[0]
    cdef long groups[RT6_LEVELS]
    cdef uint32_t *grp
    cdef uint32_t j, start, count
    if _tbl8_available(t) < <uint32_t>n:
        return -1
    for k in range(n):
        groups[k] = _tbl8_alloc(t)
        if groups[k] < 0:               # mprotect refused: give back what we took
            while k > 0:
                k -= 1
                _tbl8_free(t, <uint32_t>groups[k])
            return -1
    for k in range(n):
        # the group of level level+1+k, indexed by byte 3+level+k
        grp = t.tbl8 + (<size_t>groups[k] << 8)
        for j in range(<uint32_t>RT6_TBL8_SIZE):
            rt_store_rlx(&grp[j], old)
        if k < n - 1:
            rt_store_rlx(&grp[p[3 + level + k]], RT6_EXT | <uint32_t>groups[k + 1])
        else:
            start = p[2 + last]
            count = <uint32_t>1 << (24 + 8 * last - plen)
            for j in range(start, start + count):
                rt_store_rlx(&grp[j], leaf)
    rt_store_rel(slot, RT6_EXT | <uint32_t>groups[0])
    return 0


cdef int rt6_add(rt6table *t, const uint8_t *prefix, int plen, uint32_t nh) noexcept nogil:
    cdef uint32_t leaf, e, start, count
    cdef uint32_t *slot
    cdef uint32_t *grp
    cdef int level, last
    if not _valid_prefix(prefix, plen) or nh > RT6_MAX_INDEX or nh >= t.nh_max:
        return -1
    leaf = _mk_leaf(plen, nh)
    rt_fence_rel()              # the next-hop slot is visible before any entry naming it
    if plen <= 24:
        start = rt6_tbl24_index(prefix)
        _range_set(t, t.tbl24 + start, <uint32_t>1 << (24 - plen), leaf)
    else:
        last = _last_level(plen)
        slot = &t.tbl24[rt6_tbl24_index(prefix)]
        level = 0
        while True:
            e = slot[0]
            if not (e & RT6_EXT):
                if _add_chain(t, slot, prefix, level, plen, leaf) < 0:
                    return -1
                break
            grp = _group(t, e)
            level += 1
            if level == last:
                start = prefix[2 + last]
                count = <uint32_t>1 << (24 + 8 * last - plen)
                _range_set(t, grp + start, count, leaf)
                break
            slot = &grp[prefix[2 + level]]
    rt_gen_bump(&t.generation)
    return 0


cdef int rt6_del(rt6table *t, const uint8_t *prefix, int plen, int cover_nh,
                 int cover_plen) noexcept nogil:
    cdef uint32_t depth, rep, e, start, count
    cdef uint32_t *slot
    cdef uint32_t *grp
    cdef uint32_t *parent[RT6_LEVELS + 1]   # parent[l]: the entry pointing at the level-l group
    cdef uint32_t gidx[RT6_LEVELS + 1]
    cdef int level, last
    if not _valid_prefix(prefix, plen):
        return -1
    if cover_nh >= 0:
        if cover_plen < 0 or cover_plen >= plen or <uint32_t>cover_nh >= t.nh_max:
            return -1
        rep = _mk_leaf(cover_plen, <uint32_t>cover_nh)
    else:
        rep = 0
    depth = <uint32_t>(plen + 1) << RT6_DEPTH_SHIFT
    if plen <= 24:
        start = rt6_tbl24_index(prefix)
        _range_clear(t, t.tbl24 + start, <uint32_t>1 << (24 - plen), depth, rep)
        # no group can collapse: every group below holds a route longer than
        # its span, which this one (<= /24) is not
    else:
        last = _last_level(plen)
        slot = &t.tbl24[rt6_tbl24_index(prefix)]
        for level in range(1, last + 1):
            e = slot[0]
            if not (e & RT6_EXT):
                return -1       # the route is not in the trie: nothing to do
            parent[level] = slot
            gidx[level] = e & RT6_VAL_MASK
            grp = _group(t, e)
            if level < last:
                slot = &grp[prefix[2 + level]]
        start = prefix[2 + last]
        count = <uint32_t>1 << (24 + 8 * last - plen)
        _range_clear(t, _group(t, gidx[last]) + start, count, depth, rep)
        # groups below the range keep their longer routes; on the path, a
        # group left with one leaf everywhere goes back into its parent entry
        level = last
        while level >= 1:
            grp = _group(t, gidx[level])
            if not _uniform(grp):
                break
            rt_store_rel(parent[level], grp[0])
            _tbl8_free(t, gidx[level])
            level -= 1
    rt_gen_bump(&t.generation)
    return 0


cdef uint64_t rt6_tbl24_resident(rt6table *t) noexcept nogil:
    cdef size_t page = <size_t>sysconf(_SC_PAGESIZE)
    cdef size_t length = <size_t>RT6_TBL24_SIZE * 4
    cdef size_t npages = (length + page - 1) // page
    cdef unsigned char *vec = <unsigned char *>malloc(npages)
    cdef uint64_t n = 0
    cdef size_t k
    if vec == NULL:
        return 0
    if mincore(t.tbl24, length, vec) == 0:
        for k in range(npages):
            n += vec[k] & 1
    free(vec)
    return n * page


# --- benchmark and test helpers (nogil) -----------------------------------------------

cdef inline uint64_t _xorshift64(uint64_t *s) noexcept nogil:
    cdef uint64_t x = s[0]
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    s[0] = x
    return x


cdef void _random_addrs(uint8_t *buf, uint32_t n, const uint8_t *net, const uint8_t *mask,
                        uint64_t seed) noexcept nogil:
    """n addresses uniform within net/mask (16 bytes each)."""
    cdef uint64_t s = seed or 1
    cdef uint64_t r = 0
    cdef uint32_t i
    cdef int j
    for i in range(n):
        for j in range(16):
            if j & 7 == 0:
                r = _xorshift64(&s)
            buf[16 * i + j] = net[j] | (<uint8_t>(r >> (8 * (j & 7))) & ~mask[j])


cdef uint64_t _bench_loop(rt6table *t, const uint8_t *addrs, uint32_t naddrs, uint64_t n,
                          bint bulk, uint64_t *hits) noexcept nogil:
    """n lookups cycling over addrs (naddrs a multiple of BENCH_BURST); elapsed ns."""
    cdef uint64_t k = 0, h = 0, t0, t1
    cdef uint32_t pos = 0
    cdef const uint8_t *ptrs[BENCH_BURST]
    cdef int32_t out[BENCH_BURST]
    cdef int j
    t0 = now_ns()
    if bulk:
        while k < n:
            for j in range(BENCH_BURST):
                ptrs[j] = addrs + <size_t>16 * (pos + j)
            rt6_lookup_bulk(t, ptrs, out, BENCH_BURST)
            for j in range(BENCH_BURST):
                h += out[j] >= 0
            pos += BENCH_BURST
            if pos >= naddrs:
                pos = 0
            k += BENCH_BURST
    else:
        while k < n:
            h += rt6_lookup(t, addrs + <size_t>16 * pos) >= 0
            pos += 1
            if pos >= naddrs:
                pos = 0
            k += 1
    t1 = now_ns()
    hits[0] = h
    return t1 - t0


# --- Python level -------------------------------------------------------------------

cdef str _fmt(object a):
    """RFC 5952 text of the address int a: lower-case hex, no leading zeros,
    the longest run (first of equals) of two or more zero fields as "::" --
    what str(ipaddress.IPv6Address(a)) gives, 10x faster."""
    cdef bytes b = (<object>a).to_bytes(16, "big")
    cdef const unsigned char *p = b
    cdef unsigned int h[8]
    cdef int i, best = -1, bestlen = 1, run = 0
    for i in range(8):
        h[i] = (<unsigned int>p[2 * i] << 8) | p[2 * i + 1]
    for i in range(8):
        if h[i] == 0:
            run += 1
            if run > bestlen:
                bestlen = run
                best = i - run + 1
        else:
            run = 0
    if best < 0:
        return ":".join([f"{h[i]:x}" for i in range(8)])
    return (":".join([f"{h[i]:x}" for i in range(best)]) + "::"
            + ":".join([f"{h[i]:x}" for i in range(best + bestlen, 8)]))


def format_addr(a: int) -> str:
    """The RFC 5952 text of an address given as an int (as the table prints it)."""
    if not 0 <= a <= _ALL:
        raise ValueError(f"address out of range: {a!r}")
    return _fmt(a)


cdef object _parse_v6(str s, object what, str v4hint="this is the IPv6 table "
                      "(IPv4 routes go to forwarder.route.RouteTable)"):
    """The int of IPv6 address text s; ValueError naming `what` otherwise.
    inet_pton parses; ipaddress says what is wrong when it refuses."""
    cdef object a
    try:
        return int.from_bytes(_inet_pton(_AF_INET6, s), "big")
    except (OSError, ValueError):       # ValueError: an embedded NUL
        pass
    try:
        a = _IPv6Address(s)
    except _AddressValueError:
        try:
            _IPv4Address(s)
        except _AddressValueError:
            raise ValueError(f"bad IPv6 address in {what}") from None
        raise ValueError(f"{what} is IPv4: {v4hint}") from None
    if a.scope_id is not None:
        raise ValueError(f"zone index (%{a.scope_id}) not allowed in {what}: "
                         f"give the interface as ifindex")
    return int(a)


def parse_prefix(prefix) -> tuple[int, int]:
    """'2001:db8::/32' (or 'default' / '::/0', a bare address: /128, an
    ipaddress.IPv6Network, or (int, len)) -> (int, len).  Host bits must be zero."""
    cdef object addr
    cdef int plen
    if isinstance(prefix, tuple):
        if len(prefix) != 2:
            raise ValueError(f"prefix tuple must be (address, length), not {prefix!r}")
        addr, l = prefix
        if not isinstance(addr, int) or isinstance(addr, bool):
            addr = _parse_v6(str(addr), f"prefix {prefix!r}")
        elif not 0 <= addr <= _ALL:
            raise ValueError(f"address out of range in prefix {prefix!r}")
        if not isinstance(l, int) or isinstance(l, bool):
            raise ValueError(f"bad prefix length in {prefix!r}")
        if not 0 <= l <= 128:
            raise ValueError(f"prefix length must be 0..128 in {prefix!r}")
        plen = l
    else:
        s = str(prefix).strip()
        if s == "default":
            return 0, 0
        if "/" in s:
            a, _, l = s.partition("/")
            if not (l.isascii() and l.isdigit()):
                raise ValueError(f"bad prefix length in {prefix!r}")
            if int(l) > 128:
                raise ValueError(f"prefix length must be 0..128 in {prefix!r}")
            plen = int(l)
        else:
            a = s
            plen = 128
        addr = _parse_v6(a, f"prefix {prefix!r}")
    if addr & ~_MASKS[plen] & _ALL:
        raise ValueError(f"host bits set in prefix {prefix!r} "
                         f"(did you mean {_fmt(addr & _MASKS[plen])}/{plen}?)")
    return addr, plen


def parse_addr(addr) -> int:
    """An IPv6 address as text, int, 16 bytes or ipaddress.IPv6Address -> int."""
    if isinstance(addr, int) and not isinstance(addr, bool):
        if not 0 <= addr <= _ALL:
            raise ValueError(f"address out of range: {addr!r}")
        return addr
    if isinstance(addr, (bytes, bytearray)):
        if len(addr) != 16:
            raise ValueError(f"an IPv6 address is 16 bytes, not {len(addr)}")
        return int.from_bytes(addr, "big")
    if isinstance(addr, _IPv6Address):
        if addr.scope_id is not None:
            raise ValueError(f"zone index (%{addr.scope_id}) not allowed in address {str(addr)!r}")
        return int(addr)
    return _parse_v6(str(addr), f"address {addr!r}")


cdef bytes _parse_gateway(object via, object prefix):
    """16 bytes (all zero: directly connected) for a route's via."""
    cdef object g
    if via is None or (isinstance(via, str) and via == ""):
        return _ZERO16
    if isinstance(via, int) and not isinstance(via, bool):
        if not 0 <= via <= _ALL:
            raise ValueError(f"route {prefix}: gateway out of range: {via!r}")
        g = via
    elif isinstance(via, (bytes, bytearray)):
        if len(via) != 16:
            raise ValueError(f"route {prefix}: a gateway is 16 bytes, not {len(via)}")
        g = int.from_bytes(via, "big")
    else:
        g = _parse_v6(str(via), f"route {prefix}: via {via!r}",
                      "an IPv6 route needs an IPv6 gateway")
    if g >> 120 == 0xff:
        raise ValueError(f"route {prefix}: via {_fmt(g)} is a multicast address")
    return (<object>g).to_bytes(16, "big")


cdef class Route6Table(NexthopSlots):
    """IPv6 routing table: multibit-trie (rte_lpm6-like) lookups usable without the GIL.

    ``add(prefix, nexthop=None, *, via=None, ifindex=None, type=None)``
    installs or replaces a route; ``nexthop`` may be a dict with the same
    keys (and the ``prefix``/``index`` keys of a route dict, so that
    ``add(r["prefix"], r)`` re-creates a route of ``list()``).  ``via`` is
    the gateway (None or ``::``: directly connected, the destination is the
    neighbour; a link-local gateway is fine, the ifindex says which link);
    ``ifindex`` the router's interface index; ``type`` one of forward,
    local, blackhole, unreachable, prohibit (route.pyx's NH_TYPES).  Next
    hops are interned: routes with equal (via, ifindex, type) share one
    index into the rt6table's next-hop array.  ``paths`` (a list of {via,
    ifindex, weight}) makes a multipath route, as in route.pyx.

    ``tbl8_max`` bounds the 1 KiB groups (default 2^20, reserved as virtual
    memory and committed on use), ``nexthops`` the distinct next hops
    (default 2^16).

    The dataplane uses ``table.t`` (an ``rt6table *``) with ``rt6_lookup`` /
    ``rt6_lookup_nh`` / ``rt6_lookup_bulk`` from route6.pxd, without the
    GIL, while this object is alive.
    """

    def __cinit__(self, uint32_t tbl8_max=0, uint32_t nexthops=0):
        self.t = rt6_create(tbl8_max, nexthops)
        if self.t == NULL:
            raise MemoryError("cannot map the IPv6 route table")
        self._nh_max = self.t.nh_max
        self._routes = {}
        self._plen_count = [0] * 129
        self._lock = threading.Lock()

    def __dealloc__(self):
        rt6_destroy(self.t)
        self.t = NULL

    # -- next hops (the slots' bookkeeping is route.pyx's NexthopSlots') --

    cdef int _nh_get(self, bytes gateway, int32_t ifindex, int32_t type) except -1:
        """Index of the next hop (created with 0 references if new)."""
        cdef object key = (gateway, ifindex, type)
        cdef object idx = self._nh_by_key.get(key)
        cdef int i
        if idx is not None:
            return idx
        i = self._nh_alloc(key)
        rt6_nh_set(self.t, i, gateway, ifindex, type)
        return i

    cdef int _nhg_write(self, int idx, tuple row) except -1:
        cdef uint32_t buf[RT_NHG_SLOTS]
        cdef int k
        for k in range(len(row)):
            buf[k] = row[k]
        if rt6_nhg_set(self.t, idx, buf, len(row)) < 0:
            raise ValueError(f"bad next-hop group row {row!r}")
        return 0

    # -- routes --

    cdef int _add(self, object net, int plen, int idx) except -1:
        """Route net/plen to next hop idx (from _nh_get or _nhg_get)."""
        cdef object k = (net << 8) | plen
        cdef object old = self._routes.get(k)
        cdef bytes p
        if old is not None and old == idx:
            return 0
        self._nh_refs[idx] += 1
        p = net.to_bytes(16, "big")
        if rt6_add(self.t, p, plen, idx) < 0:
            self._nh_put(idx)
            raise OverflowError(f"IPv6 route table full: not enough tbl8 groups left "
                                f"({self.t.tbl8_used} of {self.t.tbl8_max} in use) for "
                                f"{_fmt(net)}/{plen}")
        self._routes[k] = idx
        if old is not None:
            self._nh_put(old)
        else:
            self._plen_count[plen] += 1
        return 0

    cdef int _delete(self, object net, int plen) except -1:
        cdef object k = (net << 8) | plen
        cdef object idx = self._routes.pop(k, None)
        cdef object cover = None
        cdef object counts = self._plen_count
        cdef bytes p
        cdef int l
        if idx is None:
            raise KeyError(f"{_fmt(net)}/{plen}")
        counts[plen] -= 1
        l = plen - 1
        while l >= 0:
            if counts[l]:
                cover = self._routes.get(((net & _MASKS[l]) << 8) | l)
                if cover is not None:
                    break
            l -= 1
        p = net.to_bytes(16, "big")
        if rt6_del(self.t, p, plen, -1 if cover is None else cover, l) < 0:
            raise RuntimeError(f"IPv6 route table inconsistent: {_fmt(net)}/{plen} "
                               f"listed but not in the trie")
        self._nh_put(idx)
        return 0

    def add(self, prefix, nexthop=None, *, via=None, ifindex=None, type=None) -> None:
        """Install prefix (replacing the route for the same prefix).
        ValueError for a bad prefix or next hop, OverflowError when the
        groups or next-hop slots run out (the table is then unchanged)."""
        cdef int plen, ty
        cdef bytes gw
        if nexthop is not None:
            if not isinstance(nexthop, dict):
                raise TypeError("nexthop must be a dict (via, ifindex, type)")
            unknown = set(nexthop) - {"via", "gateway", "ifindex", "type", "prefix", "index",
                                      "paths"}
            if unknown:
                raise ValueError(f"unknown next-hop keys {sorted(unknown)}")
            via = nexthop.get("via", nexthop.get("gateway", via))
            ifindex = nexthop.get("ifindex", ifindex)
            type = nexthop.get("type", type)
        net, plen = parse_prefix(prefix)
        if nexthop is not None and "prefix" in nexthop and parse_prefix(nexthop["prefix"]) != (net, plen):
            raise ValueError(f"route {prefix}: the next hop's prefix is {nexthop['prefix']!r}")
        if nexthop is not None and "paths" in nexthop:
            paths = nhg_paths(prefix, {k: v for k, v in nexthop.items()
                                       if k not in ("prefix", "index")},
                              lambda v: _parse_gateway(v, prefix))
            with self._lock:
                self._add(net, plen, self._nh_get(paths[0][0], paths[0][1], NH_FORWARD)
                          if len(paths) == 1 else
                          self._nhg_get([self._nh_get(gw, i, NH_FORWARD) for gw, i, _ in paths],
                                        [w for _, _, w in paths]))
            return
        if type is None:
            type = "forward"
        if isinstance(type, str):
            if type not in NH_TYPES:
                raise ValueError(f"route {prefix}: type must be one of {', '.join(NH_TYPES)}, "
                                 f"not {type!r}")
            ty = NH_TYPES[type]
        else:
            if type not in NH_NAMES or isinstance(type, bool):
                raise ValueError(f"route {prefix}: bad route type {type!r}")
            ty = type
        gw = _parse_gateway(via, prefix)
        if ifindex is None:
            ifindex = -1
        if not isinstance(ifindex, int) or isinstance(ifindex, bool) or not -1 <= ifindex <= 0x7fffffff:
            raise ValueError(f"route {prefix}: ifindex must be an interface index "
                             f"(or -1 for none), not {ifindex!r}")
        if ty == NH_FORWARD and ifindex < 0:
            raise ValueError(f"route {prefix}: a forward route needs an ifindex")
        if ty != NH_FORWARD and gw != _ZERO16:
            raise ValueError(f"route {prefix}: only forward routes have a gateway")
        with self._lock:
            self._add(net, plen, self._nh_get(gw, ifindex, ty))

    def delete(self, prefix) -> None:
        """Remove the route for exactly prefix (KeyError if none); addresses it
        covered fall back to the next-shorter covering route."""
        cdef int plen
        net, plen = parse_prefix(prefix)
        with self._lock:
            self._delete(net, plen)

    def _route_dict(self, net, int plen, int idx) -> dict:
        cdef dict r = self._nh_dict(idx)
        r["prefix"] = f"{_fmt(net)}/{plen}"
        return r

    def _nh_dict(self, int idx) -> dict:
        """Next-hop slot idx: via, ifindex, type, index (and a group's paths)."""
        cdef rt6_nexthop *nh = &self.t.nh[idx]
        cdef bytes gw = (<char *>nh.gateway)[:16]
        cdef dict r = {"via": None if gw == _ZERO16 else _fmt(int.from_bytes(gw, "big")),
                       "ifindex": nh.ifindex, "type": NH_NAMES.get(nh.type, nh.type),
                       "index": idx}
        if nh.type == NH_MULTIPATH:
            r["paths"] = [dict(self._nh_dict(m), weight=w)
                          for m, w in nhg_members(self._nh_key[idx][1])]
        return r

    def lookup_flow(self, addr, uint32_t hash) -> dict | None:
        """The next hop a packet to addr with flow hash ``hash`` takes
        (rt6_lookup_route + rt6_nh_select, as forwarding does), or None."""
        cdef bytes b = parse_addr(addr).to_bytes(16, "big")
        cdef const rt6_nexthop *nh = rt6_nh_select(self.t, rt6_lookup_route(self.t, b), hash)
        return None if nh == NULL else self._nh_dict(<int>(nh - self.t.nh))

    def lookup(self, addr) -> dict | None:
        """Longest-prefix match: the route dict (prefix matched, via, ifindex,
        type, index) or None."""
        cdef object a = parse_addr(addr)
        cdef bytes b = a.to_bytes(16, "big")
        cdef uint32_t e = rt6_lookup_entry(self.t, b)
        cdef int plen
        if e == 0:
            return None
        plen = rt6_entry_plen(e)
        return self._route_dict(a & _MASKS[plen], plen, e & RT6_VAL_MASK)

    def lookup_index(self, addr) -> int:
        """rt6_lookup(): next-hop index or -1."""
        cdef bytes b = parse_addr(addr).to_bytes(16, "big")
        return rt6_lookup(self.t, b)

    def lookup_nexthop(self, addr) -> dict | None:
        """rt6_lookup_nh() (the dataplane's call): the next hop as a dict
        (via, ifindex, type, index), or None."""
        cdef bytes b = parse_addr(addr).to_bytes(16, "big")
        cdef const rt6_nexthop *nh = rt6_lookup_nh(self.t, b)
        return None if nh == NULL else self._nh_dict(<int>(nh - self.t.nh))

    def lookup_bulk(self, addrs) -> list:
        """rt6_lookup_bulk() over addrs (in bursts of BULK_MAX): next-hop indices or -1."""
        cdef bytes buf = b"".join([parse_addr(a).to_bytes(16, "big") for a in addrs])
        cdef const uint8_t *base = buf
        cdef const uint8_t *ptrs[RT6_BULK_MAX]
        cdef int32_t out[RT6_BULK_MAX]
        cdef Py_ssize_t n = len(buf) // 16, i, j, m
        res = []
        i = 0
        while i < n:
            m = n - i if n - i < RT6_BULK_MAX else RT6_BULK_MAX
            for j in range(m):
                ptrs[j] = base + 16 * (i + j)
            rt6_lookup_bulk(self.t, ptrs, out, <int>m)
            res.extend([out[j] for j in range(m)])
            i += m
        return res

    def nexthop(self, int idx) -> dict:
        """The next-hop slot idx as a dict."""
        if not 0 <= idx < <int>self._nh_hwm:
            raise IndexError(idx)
        return self._nh_dict(idx)

    def get(self, prefix) -> dict | None:
        """The route for exactly prefix, or None."""
        net, plen = parse_prefix(prefix)
        idx = self._routes.get((net << 8) | plen)
        return None if idx is None else self._route_dict(net, plen, idx)

    def list(self) -> list:
        """Every route as a dict (prefix, via, ifindex, type, index), sorted by
        (network, length); ``add(r["prefix"], r)`` re-creates each."""
        return [self._route_dict(k >> 8, k & 0xff, self._routes[k]) for k in sorted(self._routes)]

    def routes(self) -> list:
        """Same as list() (RouteTable's name)."""
        return self.list()

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, prefix) -> bool:
        net, plen = parse_prefix(prefix)
        return ((net << 8) | plen) in self._routes

    @property
    def generation(self) -> int:
        """Bumped by every change (lets a dataplane drop cached lookups)."""
        return rt_gen_load(&self.t.generation)

    def stats(self) -> dict:
        """Memory and occupancy.  tbl8_groups_used: groups in the trie;
        tbl8_groups_free: freed ones waiting to be reused (oldest first);
        tbl8_groups_hwm: groups ever handed out (used + free)."""
        cdef rt6table *t = self.t
        return {"routes": len(self._routes),
                "nexthops": len(self._nh_by_key),
                "nexthops_max": t.nh_max,
                "tbl24_bytes": TBL24_BYTES,
                "tbl24_resident": rt6_tbl24_resident(t),
                "tbl8_groups_used": t.tbl8_used,
                "tbl8_groups_free": t.tbl8_fifo_len,
                "tbl8_groups_hwm": t.tbl8_hwm,
                "tbl8_groups_recycled": rt_gen_load(&t.recycled),
                "tbl8_groups_max": t.tbl8_max,
                "tbl8_committed_bytes": <uint64_t>t.tbl8_committed * TBL8_GROUP_BYTES,
                "tbl8_used_bytes": <uint64_t>t.tbl8_used * TBL8_GROUP_BYTES,
                "generation": rt_gen_load(&t.generation)}

    def lookup_histogram(self, addrs, uint64_t n, bint bulk=False) -> dict:
        """n nogil rt6_lookup() calls (rt6_lookup_bulk bursts of 32 if bulk)
        cycling over addrs; {result: count} (result -1 = no route).  A test
        aid for lookups racing updates."""
        cdef bytes src = b"".join([parse_addr(a).to_bytes(16, "big") for a in addrs])
        cdef const uint8_t *base = src
        cdef uint32_t na = len(src) // 16, k
        cdef uint32_t nmax = self.t.nh_max
        cdef uint64_t *counts
        cdef uint64_t i
        cdef const uint8_t *ptrs[BENCH_BURST]
        cdef int32_t out[BENCH_BURST]
        cdef int r, j
        if na == 0:
            raise ValueError("addrs is empty")
        counts = <uint64_t *>calloc(<size_t>nmax + 1, 8)
        if counts == NULL:
            raise MemoryError()
        try:
            with nogil:
                k = 0
                i = 0
                while i < n:
                    if bulk:
                        for j in range(BENCH_BURST):
                            ptrs[j] = base + <size_t>16 * ((k + j) % na)
                        rt6_lookup_bulk(self.t, ptrs, out, BENCH_BURST)
                        for j in range(BENCH_BURST):
                            counts[out[j] + 1] += 1
                        k = (k + BENCH_BURST) % na
                        i += BENCH_BURST
                    else:
                        r = rt6_lookup(self.t, base + <size_t>16 * k)
                        counts[r + 1] += 1
                        k += 1
                        if k == na:
                            k = 0
                        i += 1
            return {<int>k - 1: counts[k] for k in range(nmax + 1) if counts[k]}
        finally:
            free(counts)

    def lookup_many_bench(self, uint64_t n=10_000_000, uint64_t seed=1, addrs=None,
                          bint bulk=False, within="::/0") -> dict:
        """Time n nogil rt6_lookup() calls over random addresses (uniform
        within the prefix `within`; or cycling over addrs, a sequence of
        addresses).  bulk uses rt6_lookup_bulk in bursts of 32.  Returns {n,
        seconds, lookups_per_s, ns_per_lookup, hit_ratio}."""
        cdef uint32_t naddrs, k
        cdef uint8_t *buf
        cdef uint64_t ns, hits = 0
        cdef bytes netb, maskb
        cdef bytes src = None
        cdef Py_ssize_t nsrc = 0
        if n == 0:
            raise ValueError("n must be > 0")
        if addrs is not None:
            src = b"".join([parse_addr(a).to_bytes(16, "big") for a in addrs])
            nsrc = len(src) // 16
            if nsrc == 0:
                raise ValueError("addrs is empty")
            naddrs = ((nsrc + BENCH_BURST - 1) // BENCH_BURST) * BENCH_BURST
        else:
            naddrs = 1 << 21 if n > (1 << 21) else <uint32_t>(((n + BENCH_BURST - 1) // BENCH_BURST) * BENCH_BURST)
        net, plen = parse_prefix(within)
        netb = net.to_bytes(16, "big")
        maskb = _MASKS[plen].to_bytes(16, "big")
        buf = <uint8_t *>malloc(<size_t>naddrs * 16)
        if buf == NULL:
            raise MemoryError()
        try:
            if src is not None:
                for k in range(naddrs):
                    memcpy(buf + <size_t>16 * k, <const uint8_t *>src + 16 * (k % nsrc), 16)
            else:
                _random_addrs(buf, naddrs, netb, maskb, seed * <uint64_t>2654435761 + 1)
            with nogil:
                ns = _bench_loop(self.t, buf, naddrs, n, bulk, &hits)
        finally:
            free(buf)
        if bulk:
            n = ((n + BENCH_BURST - 1) // BENCH_BURST) * BENCH_BURST
        secs = (<double>ns) / 1e9 if ns else 1e-9
        return {"n": n, "seconds": secs, "lookups_per_s": (<double>n) / secs,
                "ns_per_lookup": (<double>ns) / n, "hit_ratio": (<double>hits) / n}
