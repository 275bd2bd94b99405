# cython: language_level=3
"""IPv4 longest-prefix-match routing table (DIR-24-8), usable without the GIL.

Design (see route.pxd for the entry layout and the concurrency argument):

* ``tbl24``: 2^24 32-bit entries, one per /24 -- 64 MiB of virtual memory,
  mmap()ed and THP-advised; only written pages are resident (a default route
  makes all of it resident).
* ``tbl8``: 256-entry groups (1 KiB) for the /24s that hold longer prefixes;
  a region for ``tbl8_max`` groups (default 2^18 = 256 MiB virtual) is
  reserved PROT_NONE and committed 256 groups (256 KiB) at a time, so it
  never moves under a reader.  100 000 routes with a BGP-like length mix use
  ~4 MiB of tbl8 (3 800 groups); uniformly random lengths /0../32 ~38 MiB.
* Every entry carries the prefix length of the route that wrote it, so an
  add only overwrites entries of shorter-or-equal routes and a delete only
  rewrites entries of exactly its length, with the next-shorter covering
  route taken from the authoritative Python-side dict.  A tbl8 group whose
  /24 no longer holds a longer-than-/24 prefix collapses back to one tbl24
  entry.
* A lookup is one load (two for a split /24): constant time whatever the
  number of routes.  A multipath route's member is one more load, of the
  group's row (route.pxd: next-hop groups).

Writers are the control plane (RouteTable.add/delete: the table's lock, GIL
held); readers are nogil ``rt_lookup`` calls in any thread.
"""

from collections import deque
import math
import socket
import threading

from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset
from posix.mman cimport (mmap, munmap, mprotect, madvise, mincore, PROT_NONE, PROT_READ,
                         PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE, MAP_FAILED,
                         MADV_HUGEPAGE)
from posix.unistd cimport sysconf, _SC_PAGESIZE

from allocator_pyx.includes cimport now_ns

cdef enum:
    TBL8_GROUP_BYTES = RT_TBL8_SIZE * 4
    TBL8_COMMIT_GROUPS = 256            # commit step: 256 KiB
    TBL8_QUARANTINE = 64                # freed groups wait behind at least this many
    NH_QUARANTINE = 64                  # same for next-hop slots
    DEPTH_24 = 25 << RT_DEPTH_SHIFT     # depth field of a /24 entry

NH_TYPES = {"forward": NH_FORWARD, "local": NH_LOCAL, "blackhole": NH_BLACKHOLE,
            "unreachable": NH_UNREACHABLE, "prohibit": NH_PROHIBIT}
NH_NAMES = {v: k for k, v in NH_TYPES.items()}
NH_NAMES[NH_MULTIPATH] = "multipath"
# Python-visible copies of the enum values.
PY_NH_FORWARD = NH_FORWARD
PY_NH_LOCAL = NH_LOCAL
PY_NH_BLACKHOLE = NH_BLACKHOLE
PY_NH_UNREACHABLE = NH_UNREACHABLE
PY_NH_PROHIBIT = NH_PROHIBIT
PY_NH_MULTIPATH = NH_MULTIPATH
NHG_SLOTS = RT_NHG_SLOTS
NHG_MAX_WEIGHT = 256                    # a kernel route's rtnh_hops + 1
TBL24_BYTES = RT_TBL24_SIZE * 4

cdef list _MASKS = [0] + [(0xffffffff << (32 - l)) & 0xffffffff for l in range(1, 33)]


# --- C level ---------------------------------------------------------------------

cdef inline uint32_t _mk_leaf(int plen, uint32_t nh) noexcept nogil:
    return (<uint32_t>(plen + 1) << RT_DEPTH_SHIFT) | nh


cdef rtable *rt_create(uint32_t tbl8_max, uint32_t nh_max) noexcept nogil:
    cdef rtable *t
    cdef void *p
    if tbl8_max == 0:
        tbl8_max = RT_DEFAULT_TBL8
    if nh_max == 0:
        nh_max = RT_DEFAULT_NEXTHOPS
    if tbl8_max > <uint32_t>RT_MAX_INDEX + 1 or nh_max > <uint32_t>RT_MAX_INDEX + 1:
        return NULL
    t = <rtable *>calloc(1, sizeof(rtable))
    if t == NULL:
        return NULL
    t.tbl8_max = tbl8_max
    t.nh_max = nh_max
    p = mmap(NULL, <size_t>RT_TBL24_SIZE * 4, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        rt_destroy(t)
        return NULL
    madvise(p, <size_t>RT_TBL24_SIZE * 4, MADV_HUGEPAGE)   # fewer TLB misses; advisory
    t.tbl24 = <uint32_t *>p
    p = mmap(NULL, <size_t>tbl8_max * TBL8_GROUP_BYTES, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    if p == MAP_FAILED:
        rt_destroy(t)
        return NULL
    madvise(p, <size_t>tbl8_max * TBL8_GROUP_BYTES, MADV_HUGEPAGE)
    t.tbl8 = <uint32_t *>p
    p = mmap(NULL, <size_t>nh_max * sizeof(rt_nexthop), PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        rt_destroy(t)
        return NULL
    t.nh = <rt_nexthop *>p
    t.nhg = rt_nhg_map(nh_max)
    if t.nhg == NULL:
        rt_destroy(t)
        return NULL
    t.tbl8_fifo = <uint32_t *>malloc(<size_t>tbl8_max * 4)
    if t.tbl8_fifo == NULL:
        rt_destroy(t)
        return NULL
    return t


cdef void rt_destroy(rtable *t) noexcept nogil:
    if t == NULL:
        return
    if t.tbl24 != NULL:
        munmap(t.tbl24, <size_t>RT_TBL24_SIZE * 4)
    if t.tbl8 != NULL:
        munmap(t.tbl8, <size_t>t.tbl8_max * TBL8_GROUP_BYTES)
    if t.nh != NULL:
        munmap(t.nh, <size_t>t.nh_max * sizeof(rt_nexthop))
    rt_nhg_unmap(t.nhg, t.nh_max)
    free(t.tbl8_fifo)
    free(t)


cdef int rt_nh_set(rtable *t, uint32_t idx, uint32_t gateway, int32_t ifindex, int32_t type) noexcept nogil:
    if idx >= t.nh_max:
        return -1
    t.nh[idx].gateway = gateway
    t.nh[idx].ifindex = ifindex
    t.nh[idx].type = type
    t.nh[idx].nslots = 0
    return 0


cdef uint32_t *rt_nhg_map(uint32_t nh_max) noexcept nogil:
    # 16 MiB of address space for the default 2^16 slots; a group touches
    # its own 256-byte row only.
    cdef void *p = mmap(NULL, <size_t>nh_max * RT_NHG_SLOTS * 4, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    return NULL if p == MAP_FAILED else <uint32_t *>p


cdef void rt_nhg_unmap(uint32_t *nhg, uint32_t nh_max) noexcept nogil:
    if nhg != NULL:
        munmap(nhg, <size_t>nh_max * RT_NHG_SLOTS * 4)


cdef int rt_nhg_set(rtable *t, uint32_t idx, const uint32_t *members, uint32_t nslots) noexcept nogil:
    cdef uint32_t j
    if idx >= t.nh_max or nslots == 0 or nslots > RT_NHG_SLOTS:
        return -1
    for j in range(nslots):
        if members[j] >= t.nh_max:
            return -1
        t.nhg[<uint64_t>idx * RT_NHG_SLOTS + j] = members[j]
    t.nh[idx].gateway = 0
    t.nh[idx].ifindex = -1
    t.nh[idx].type = NH_MULTIPATH
    t.nh[idx].nslots = nslots
    return 0


cdef long _tbl8_alloc(rtable *t) noexcept nogil:
    """A group index, or -1.  Fresh groups are preferred until TBL8_QUARANTINE
    freed ones are waiting; then the oldest freed group is reused."""
    cdef uint32_t g, step
    if t.tbl8_fifo_len >= TBL8_QUARANTINE or (t.tbl8_hwm == t.tbl8_max and t.tbl8_fifo_len > 0):
        g = t.tbl8_fifo[t.tbl8_fifo_head]
        t.tbl8_fifo_head = (t.tbl8_fifo_head + 1) % t.tbl8_max
        t.tbl8_fifo_len -= 1
        t.tbl8_used += 1
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


cdef void _tbl8_free(rtable *t, uint32_t g) noexcept nogil:
    t.tbl8_fifo[(t.tbl8_fifo_head + t.tbl8_fifo_len) % t.tbl8_max] = g
    t.tbl8_fifo_len += 1
    t.tbl8_used -= 1


cdef inline bint _valid_prefix(uint32_t prefix, int plen) noexcept nogil:
    if plen < 0 or plen > 32:
        return False
    if plen == 0:
        return prefix == 0
    if plen < 32 and (prefix & ((<uint32_t>1 << (32 - plen)) - 1)) != 0:
        return False
    return True


cdef inline void _group_set(uint32_t *grp, uint32_t start, uint32_t count, uint32_t leaf) noexcept nogil:
    """Write leaf over every entry of grp[start:start+count] whose route is not longer."""
    cdef uint32_t j, e
    cdef uint32_t depth = leaf & RT_DEPTH_MASK
    for j in range(start, start + count):
        e = grp[j]
        if (e & RT_DEPTH_MASK) <= depth:
            rt_store_rlx(&grp[j], leaf)


cdef inline void _group_clear(uint32_t *grp, uint32_t start, uint32_t count, uint32_t depth,
                              uint32_t rep) noexcept nogil:
    """Write rep over every entry of grp[start:start+count] written by a route of depth."""
    cdef uint32_t j
    for j in range(start, start + count):
        if (grp[j] & RT_DEPTH_MASK) == depth:
            rt_store_rlx(&grp[j], rep)


cdef int rt_add(rtable *t, uint32_t prefix, int plen, uint32_t nh) noexcept nogil:
    cdef uint32_t leaf, depth, i, e, start, count, j
    cdef uint32_t *grp
    cdef long g
    if not _valid_prefix(prefix, plen) or nh > RT_MAX_INDEX or nh >= t.nh_max:
        return -1
    leaf = _mk_leaf(plen, nh)
    depth = leaf & RT_DEPTH_MASK
    rt_fence_rel()              # the next-hop slot is visible before any entry naming it
    if plen <= 24:
        start = prefix >> RT_TBL24_SHIFT
        count = <uint32_t>1 << (24 - plen)
        for i in range(start, start + count):
            e = t.tbl24[i]
            if e & RT_EXT:
                _group_set(t.tbl8 + (<size_t>(e & RT_VAL_MASK) << 8), 0, RT_TBL8_SIZE, leaf)
            elif (e & RT_DEPTH_MASK) <= depth:
                rt_store_rlx(&t.tbl24[i], leaf)
    else:
        i = prefix >> RT_TBL24_SHIFT
        start = prefix & 0xff
        count = <uint32_t>1 << (32 - plen)
        e = t.tbl24[i]
        if e & RT_EXT:
            _group_set(t.tbl8 + (<size_t>(e & RT_VAL_MASK) << 8), start, count, leaf)
        else:
            g = _tbl8_alloc(t)
            if g < 0:
                return -1
            grp = t.tbl8 + (<size_t>g << 8)
            # fill the whole group (old /24 entry, then the new prefix) before
            # publishing it: the /24 switches over in one store
            for j in range(<uint32_t>RT_TBL8_SIZE):
                rt_store_rlx(&grp[j], e)
            _group_set(grp, start, count, leaf)
            rt_store_rel(&t.tbl24[i], RT_EXT | <uint32_t>g)
    rt_gen_bump(&t.generation)
    return 0


cdef int rt_del(rtable *t, uint32_t prefix, int plen, int cover_nh, int cover_plen) noexcept nogil:
    cdef uint32_t depth, rep, i, e, start, count, j
    cdef uint32_t *grp
    if not _valid_prefix(prefix, plen):
        return -1
    if cover_nh >= 0:
        if cover_plen < 0 or cover_plen >= plen or <uint32_t>cover_nh >= t.nh_max:
            return -1
        rep = _mk_leaf(cover_plen, <uint32_t>cover_nh)
    else:
        rep = 0
    depth = <uint32_t>(plen + 1) << RT_DEPTH_SHIFT
    if plen <= 24:
        start = prefix >> RT_TBL24_SHIFT
        count = <uint32_t>1 << (24 - plen)
        for i in range(start, start + count):
            e = t.tbl24[i]
            if e & RT_EXT:
                _group_clear(t.tbl8 + (<size_t>(e & RT_VAL_MASK) << 8), 0, RT_TBL8_SIZE, depth, rep)
            elif (e & RT_DEPTH_MASK) == depth:
                rt_store_rlx(&t.tbl24[i], rep)
    else:
        i = prefix >> RT_TBL24_SHIFT
        e = t.tbl24[i]
        if e & RT_EXT:
            grp = t.tbl8 + (<size_t>(e & RT_VAL_MASK) << 8)
            _group_clear(grp, prefix & 0xff, <uint32_t>1 << (32 - plen), depth, rep)
            # collapse the group once no longer-than-/24 route is left in it:
            # all its entries then hold the same /24-or-shorter leaf
            for j in range(<uint32_t>RT_TBL8_SIZE):
                if (grp[j] & RT_DEPTH_MASK) > DEPTH_24:
                    break
            else:
                rt_store_rel(&t.tbl24[i], grp[0])
                _tbl8_free(t, e & RT_VAL_MASK)
    rt_gen_bump(&t.generation)
    return 0


cdef uint64_t rt_tbl24_resident(rtable *t) noexcept nogil:
    cdef size_t page = <size_t>sysconf(_SC_PAGESIZE)
    cdef size_t length = <size_t>RT_TBL24_SIZE * 4
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


# --- benchmark helpers (nogil) ----------------------------------------------------

cdef inline uint32_t _xorshift32(uint32_t *s) noexcept nogil:
    cdef uint32_t x = s[0]
    x ^= x << 13
    x ^= x >> 17
    x ^= x << 5
    s[0] = x
    return x


cdef uint64_t _bench_loop(rtable *t, const uint32_t *addrs, uint32_t naddrs, uint64_t n,
                          bint bulk, bint select, uint64_t *hits) noexcept nogil:
    """n lookups cycling over addrs (naddrs a multiple of 32); elapsed ns.
    select: each lookup as forwarding does it (rt_lookup_route, then
    rt_nh_select with a hash of the address standing in for the flow's)."""
    cdef uint64_t k = 0, h = 0, t0, t1
    cdef uint32_t pos = 0, a
    cdef int32_t out[32]
    cdef int j
    t0 = now_ns()
    if select:
        while k < n:
            a = addrs[pos]
            h += rt_nh_select(t, rt_lookup_route(t, a), rt_hash_mix(a)) != NULL
            pos += 1
            if pos >= naddrs:
                pos = 0
            k += 1
    elif bulk:
        while k < n:
            rt_lookup_bulk(t, addrs + pos, out, 32)
            for j in range(32):
                h += out[j] >= 0
            pos += 32
            if pos >= naddrs:
                pos = 0
            k += 32
    else:
        while k < n:
            h += rt_lookup(t, addrs[pos]) >= 0
            pos += 1
            if pos >= naddrs:
                pos = 0
            k += 1
    t1 = now_ns()
    hits[0] = h
    return t1 - t0


# --- Python level -------------------------------------------------------------------

cdef inline uint32_t _ip2int(str s) except? 0:
    return int.from_bytes(socket.inet_pton(socket.AF_INET, s), "big")


cdef inline str _int2ip(uint32_t a):
    return socket.inet_ntop(socket.AF_INET, a.to_bytes(4, "big"))


def parse_prefix(prefix):
    """'a.b.c.d/len' (or an address: /32, or (int, len)) -> (int, len).
    Host bits must be zero."""
    cdef object addr
    cdef int plen
    if isinstance(prefix, tuple):
        addr, plen = prefix
        addr = int(addr)
        if not 0 <= addr <= 0xffffffff:
            raise ValueError(f"address out of range in prefix {prefix!r}")
    else:
        s = str(prefix)
        if "/" in s:
            a, _, l = s.partition("/")
            try:
                plen = int(l)
            except ValueError:
                raise ValueError(f"bad prefix length in {prefix!r}") from None
        else:
            a = s
            plen = 32
        try:
            addr = _ip2int(a)
        except OSError:
            raise ValueError(f"bad IPv4 address in prefix {prefix!r}") from None
    if not 0 <= plen <= 32:
        raise ValueError(f"prefix length must be 0..32 in {prefix!r}")
    if addr & ~_MASKS[plen] & 0xffffffff:
        raise ValueError(f"host bits set in prefix {prefix!r} "
                         f"(did you mean {_int2ip(addr & _MASKS[plen])}/{plen}?)")
    return addr, plen


def parse_addr(addr):
    """'a.b.c.d' or int -> int (host order)."""
    if isinstance(addr, int):
        if not 0 <= addr <= 0xffffffff:
            raise ValueError(f"address out of range: {addr!r}")
        return addr
    try:
        return _ip2int(str(addr))
    except OSError:
        raise ValueError(f"bad IPv4 address {addr!r}") from None



def _gateway(via):
    return 0 if via is None else parse_addr(via)


# --- next-hop groups (both families) ------------------------------------------------

def nhg_slots(weights):
    """A group's row: member positions, each repeated in proportion to its
    weight in one contiguous run, at most RT_NHG_SLOTS slots in all (weights
    are divided by their gcd, and scaled down by largest remainders when
    they add up to more; every member keeps one slot at least)."""
    cdef int n = len(weights), total, k
    if not 1 <= n <= RT_NHG_SLOTS:
        raise ValueError(f"a multipath route has 1 to {RT_NHG_SLOTS} next hops, not {n}")
    g = math.gcd(*weights)
    counts = [w // g for w in weights]
    total = sum(counts)
    if total > RT_NHG_SLOTS:
        share = [c * RT_NHG_SLOTS / total for c in counts]
        counts = [max(1, int(x)) for x in share]
        while sum(counts) > RT_NHG_SLOTS:       # the ones raised to 1 took slots: give back
            k = max((i for i in range(n) if counts[i] > 1), key=lambda i: counts[i] - share[i])
            counts[k] -= 1
        while sum(counts) < RT_NHG_SLOTS:
            k = max(range(n), key=lambda i: share[i] - counts[i])
            counts[k] += 1
    return [k for k in range(n) for _ in range(counts[k])]


def nhg_members(row):
    """(member, slots) of each run of a group's row, in order."""
    cdef list out = []
    cdef int n = 0
    for m in row:
        if n and out[n - 1][0] == m:
            out[n - 1][1] += 1
        else:
            out.append([m, 1])
            n += 1
    return [(m, c) for m, c in out]


def nhg_paths(prefix, nexthop, parse_gateway):
    """[(gateway, ifindex, weight)] of a multipath next hop's ``paths``
    (each {via, ifindex, weight}; weight 1..256, default 1)."""
    ty = nexthop.get("type")
    if ty not in (None, "forward", "multipath"):
        raise ValueError(f"route {prefix}: a {ty} route has no paths")
    if nexthop.get("via", nexthop.get("gateway")) is not None or \
            nexthop.get("ifindex", -1) not in (None, -1):
        raise ValueError(f"route {prefix}: a multipath route's gateways are in its paths")
    paths = nexthop["paths"]
    if not isinstance(paths, (list, tuple)) or not paths:
        raise ValueError(f"route {prefix}: paths must be a non-empty list")
    out = []
    for p in paths:
        # (type and index: a path of a route dict read back from the table)
        if not isinstance(p, dict) or set(p) - {"via", "gateway", "ifindex", "weight", "type",
                                                "index"} or p.get("type", "forward") != "forward":
            raise ValueError(f"route {prefix}: a path is a dict of via, ifindex, weight, "
                             f"not {p!r}")
        ifindex, weight = p.get("ifindex"), p.get("weight", 1)
        if not isinstance(ifindex, int) or isinstance(ifindex, bool) or not 0 <= ifindex <= 0x7fffffff:
            raise ValueError(f"route {prefix}: a path needs an ifindex, not {ifindex!r}")
        if not isinstance(weight, int) or isinstance(weight, bool) or \
                not 1 <= weight <= NHG_MAX_WEIGHT:
            raise ValueError(f"route {prefix}: a path's weight is 1..{NHG_MAX_WEIGHT}, "
                             f"not {weight!r}")
        via = p.get("via", p.get("gateway"))
        out.append((parse_gateway(via), ifindex, weight))
    nhg_slots([w for _, _, w in out])           # the width check
    return out


cdef class NexthopSlots:
    """The next-hop slots of a route table, either family's (route.pxd)."""

    def __cinit__(self, *args, **kwargs):
        self._nh_by_key = {}
        self._nh_key = []
        self._nh_refs = []
        self._nh_free = deque()
        self._nh_hwm = 0
        self._nh_max = 0                    # the table sets it

    cdef int _nh_alloc(self, object key) except -1:
        """A free slot for a new next hop ``key`` (0 references); the caller
        writes it."""
        cdef int i
        if len(self._nh_free) >= NH_QUARANTINE or (self._nh_hwm == self._nh_max and self._nh_free):
            i = self._nh_free.popleft()
            self._nh_key[i] = key
            self._nh_refs[i] = 0
        elif self._nh_hwm < self._nh_max:
            i = self._nh_hwm
            self._nh_hwm += 1
            self._nh_key.append(key)
            self._nh_refs.append(0)
        else:
            raise OverflowError(f"next-hop table full ({self._nh_max} next hops)")
        self._nh_by_key[key] = i
        return i

    cdef int _nhg_get(self, list members, list weights) except -1:
        """Index of the multipath next hop over members (next-hop indices,
        from the table's _nh_get) with weights (created with 0 references
        if new; it holds one on each member)."""
        cdef tuple row = tuple(members[k] for k in nhg_slots(weights))
        cdef object key = (NH_MULTIPATH, row)
        cdef object idx = self._nh_by_key.get(key)
        cdef int i
        if idx is not None:
            return idx
        for i in set(row):
            self._nh_refs[i] += 1
        try:
            i = self._nh_alloc(key)
            self._nhg_write(i, row)
        except (OverflowError, ValueError):
            for k in set(row):
                self._nh_put(k)
            raise
        return i

    cdef int _nhg_write(self, int idx, tuple row) except -1:
        """Write group row ``row`` into slot idx of the table."""
        raise NotImplementedError

    cdef void _nh_put(self, int idx):
        """Drop one reference; a next hop without routes goes to the free FIFO
        (a group gives its members' references back).  Its slot keeps its old
        contents until reused (a reader that just got the index still reads a
        sane next hop)."""
        cdef object key
        self._nh_refs[idx] -= 1
        if self._nh_refs[idx] == 0:
            key = self._nh_key[idx]
            del self._nh_by_key[key]
            self._nh_key[idx] = None
            self._nh_free.append(idx)
            if key[0] == NH_MULTIPATH:
                for k in set(key[1]):
                    self._nh_put(k)


cdef class RouteTable(NexthopSlots):
    """IPv4 routing table: DIR-24-8 lookups usable without the GIL.

    ``add(prefix, nexthop=None, *, via=None, ifindex=-1, type="forward")``
    installs or replaces a route; ``nexthop`` may be a dict with the same
    keys.  ``via`` is the gateway (None/0: directly connected, the
    destination is the neighbour); ``ifindex`` the router's interface index;
    ``type`` one of forward, local, blackhole, unreachable, prohibit.
    Next hops are interned: routes with equal (via, ifindex, type) share one
    index into the rtable's next-hop array.  ``{"paths": [{via, ifindex,
    weight}, ...]}`` makes a multipath route (ECMP, route.pxd: next-hop
    groups): one NH_MULTIPATH slot whose row names the members, themselves
    interned next hops; groups with the same row are shared too.

    The dataplane uses ``table.t`` (an ``rtable *``) with ``rt_lookup`` /
    ``rt_lookup_nh`` from route.pxd, without the GIL, while this object is
    alive.
    """

    def __cinit__(self, uint32_t tbl8_max=0, uint32_t nexthops=0):
        self.t = rt_create(tbl8_max, nexthops)
        if self.t == NULL:
            raise MemoryError("cannot map the route table")
        self._nh_max = self.t.nh_max
        self._routes = {}
        self._lock = threading.Lock()

    def __dealloc__(self):
        rt_destroy(self.t)
        self.t = NULL

    # -- next hops (the slots' bookkeeping is NexthopSlots') --

    cdef int _nh_get(self, uint32_t gateway, int32_t ifindex, int32_t type) except -1:
        """Index of the next hop (created with 0 references if new)."""
        cdef object key = (gateway, ifindex, type)
        cdef object idx = self._nh_by_key.get(key)
        cdef int i
        if idx is not None:
            return idx
        i = self._nh_alloc(key)
        rt_nh_set(self.t, i, gateway, ifindex, type)
        return i

    cdef int _nhg_write(self, int idx, tuple row) except -1:
        cdef uint32_t buf[RT_NHG_SLOTS]
        cdef int k
        for k in range(len(row)):
            buf[k] = row[k]
        if rt_nhg_set(self.t, idx, buf, len(row)) < 0:
            raise ValueError(f"bad next-hop group row {row!r}")
        return 0

    # -- routes --

    cdef int _add(self, uint32_t prefix, int plen, int idx) except -1:
        """Route prefix/plen to next hop idx (from _nh_get or _nhg_get)."""
        cdef object k = (<uint64_t>prefix << 6) | plen
        cdef object old = self._routes.get(k)
        if old is not None and old == idx:
            return 0
        self._nh_refs[idx] += 1
        if rt_add(self.t, prefix, plen, idx) < 0:
            self._nh_put(idx)
            raise OverflowError(f"route table full: no tbl8 group left "
                                f"({self.t.tbl8_max} groups) for {_int2ip(prefix)}/{plen}")
        self._routes[k] = idx
        if old is not None:
            self._nh_put(old)
        return 0

    cdef int _delete(self, uint32_t prefix, int plen) except -1:
        cdef object k = (<uint64_t>prefix << 6) | plen
        cdef object idx = self._routes.pop(k, None)
        cdef object cover = None
        cdef int l
        if idx is None:
            raise KeyError(f"{_int2ip(prefix)}/{plen}")
        l = plen - 1
        while l >= 0:
            cover = self._routes.get((<uint64_t>(prefix & <uint32_t>_MASKS[l]) << 6) | <uint64_t>l)
            if cover is not None:
                break
            l -= 1
        rt_del(self.t, prefix, plen, -1 if cover is None else cover, l)
        self._nh_put(idx)
        return 0

    def add(self, prefix, nexthop=None, *, via=None, ifindex=None, type=None):
        """Install prefix (replacing the route for the same prefix).  A
        nexthop dict with ``paths`` (a list of {via, ifindex, weight}) makes a
        multipath route."""
        cdef uint32_t net, gw
        cdef int plen, ty
        cdef list paths = None
        if nexthop is not None:
            if not isinstance(nexthop, dict):
                raise TypeError("nexthop must be a dict (via, ifindex, type)")
            unknown = set(nexthop) - {"via", "gateway", "ifindex", "type", "paths"}
            if unknown:
                raise ValueError(f"unknown next-hop keys {sorted(unknown)}")
            via = nexthop.get("via", nexthop.get("gateway", via))
            ifindex = nexthop.get("ifindex", ifindex)
            type = nexthop.get("type", type)
            if "paths" in nexthop:
                paths = nhg_paths(prefix, nexthop, _gateway)
        net, plen = parse_prefix(prefix)
        if paths is not None:
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
                raise ValueError(f"route type must be one of {', '.join(NH_TYPES)}, not {type!r}")
            ty = NH_TYPES[type]
        else:
            ty = type
            if ty not in NH_NAMES:
                raise ValueError(f"bad route type {type!r}")
        gw = 0 if via is None else parse_addr(via)
        if ifindex is None:
            ifindex = -1
        if ty == NH_FORWARD and ifindex < 0:
            raise ValueError(f"route {prefix}: a forward route needs an ifindex")
        if ty != NH_FORWARD and gw != 0:
            raise ValueError(f"route {prefix}: only forward routes have a gateway")
        with self._lock:
            self._add(net, plen, self._nh_get(gw, ifindex, ty))

    def delete(self, prefix):
        """Remove the route for exactly prefix (KeyError if none); addresses it
        covered fall back to the next-shorter covering route."""
        cdef uint32_t net
        cdef int plen
        net, plen = parse_prefix(prefix)
        with self._lock:
            self._delete(net, plen)

    def _route_dict(self, uint32_t net, int plen, int idx):
        cdef dict r = self._nh_dict(idx)
        r["prefix"] = f"{_int2ip(net)}/{plen}"
        return r

    def _nh_dict(self, int idx):
        """Next-hop slot idx: via, ifindex, type, index (and a group's paths)."""
        cdef rt_nexthop *nh = &self.t.nh[idx]
        cdef dict r = {"via": _int2ip(nh.gateway) if nh.gateway else None,
                       "ifindex": nh.ifindex, "type": NH_NAMES.get(nh.type, nh.type),
                       "index": idx}
        if nh.type == NH_MULTIPATH:
            r["paths"] = [dict(self._nh_dict(m), weight=w)
                          for m, w in nhg_members(self._nh_key[idx][1])]
        return r

    def lookup_nexthop(self, addr):
        """rt_lookup_nh() (the router's own packets): the next hop as a dict
        (of a multipath route, the member the address's hash picks), or None."""
        cdef const rt_nexthop *nh = rt_lookup_nh(self.t, parse_addr(addr))
        return None if nh == NULL else self._nh_dict(<int>(nh - self.t.nh))

    def lookup_flow(self, addr, uint32_t hash):
        """The next hop a packet to addr with flow hash ``hash`` takes
        (rt_lookup_route + rt_nh_select, as forwarding does), or None."""
        cdef const rt_nexthop *nh = rt_nh_select(self.t, rt_lookup_route(self.t, parse_addr(addr)),
                                                  hash)
        return None if nh == NULL else self._nh_dict(<int>(nh - self.t.nh))

    def lookup(self, addr):
        """Longest-prefix match: the route dict (prefix matched, via, ifindex,
        type, index) or None."""
        cdef uint32_t a = parse_addr(addr)
        cdef uint32_t e = rt_lookup_entry(self.t, a)
        cdef int plen
        if e == 0:
            return None
        plen = rt_entry_plen(e)
        return self._route_dict(a & <uint32_t>_MASKS[plen], plen, e & RT_VAL_MASK)

    def lookup_index(self, addr):
        """rt_lookup(): next-hop index or -1."""
        return rt_lookup(self.t, parse_addr(addr))

    def nexthop(self, int idx):
        """The next-hop slot idx as a dict."""
        if not 0 <= idx < <int>self._nh_hwm:
            raise IndexError(idx)
        return self._nh_dict(idx)

    def get(self, prefix):
        """The route for exactly prefix, or None."""
        net, plen = parse_prefix(prefix)
        idx = self._routes.get((net << 6) | plen)
        return None if idx is None else self._route_dict(net, plen, idx)

    def routes(self):
        """Every route, sorted by (network, length)."""
        return [self._route_dict(k >> 6, k & 63, self._routes[k]) for k in sorted(self._routes)]

    def __len__(self):
        return len(self._routes)

    def __contains__(self, prefix):
        net, plen = parse_prefix(prefix)
        return ((net << 6) | plen) in self._routes

    @property
    def generation(self):
        """Bumped by every change (lets a dataplane drop cached lookups)."""
        return rt_gen_load(&self.t.generation)

    def stats(self):
        """Memory and occupancy."""
        cdef rtable *t = self.t
        return {"routes": len(self._routes),
                "nexthops": len(self._nh_by_key),
                "tbl24_bytes": TBL24_BYTES,
                "tbl24_resident": rt_tbl24_resident(t),
                "tbl8_groups_used": t.tbl8_used,
                "tbl8_groups_max": t.tbl8_max,
                "tbl8_committed_bytes": <uint64_t>t.tbl8_committed * TBL8_GROUP_BYTES,
                "tbl8_used_bytes": <uint64_t>t.tbl8_used * TBL8_GROUP_BYTES,
                "generation": t.generation}

    def lookup_histogram(self, addrs, uint64_t n):
        """n nogil rt_lookup() calls cycling over addrs; {result: count}
        (result -1 = no route).  A test aid for lookups racing updates."""
        cdef list src = [parse_addr(a) for a in addrs]
        cdef uint32_t na = len(src), k
        cdef uint32_t nmax = self.t.nh_max
        cdef uint32_t *buf
        cdef uint64_t *counts
        cdef uint64_t i
        cdef int r
        if na == 0:
            raise ValueError("addrs is empty")
        buf = <uint32_t *>malloc(<size_t>na * 4)
        counts = <uint64_t *>calloc(<size_t>nmax + 1, 8)
        if buf == NULL or counts == NULL:
            free(buf)
            free(counts)
            raise MemoryError()
        try:
            for k in range(na):
                buf[k] = src[k]
            with nogil:
                k = 0
                for i in range(n):
                    r = rt_lookup(self.t, buf[k])
                    counts[r + 1] += 1
                    k += 1
                    if k == na:
                        k = 0
            return {<int>k - 1: counts[k] for k in range(nmax + 1) if counts[k]}
        finally:
            free(buf)
            free(counts)

    def lookup_many_bench(self, uint64_t n=10_000_000, uint32_t seed=1, addrs=None,
                          bint bulk=False, bint select=False):
        """Time n nogil rt_lookup() calls over random addresses (uniform over
        the IPv4 space; or cycling over addrs, a sequence of ints).  bulk uses
        rt_lookup_bulk in bursts of 32; select looks up as forwarding does
        (the route, then a multipath route's member for a flow hash).  Returns {n, seconds, lookups_per_s,
        ns_per_lookup, hit_ratio}."""
        cdef uint32_t naddrs, k
        cdef uint32_t s = seed or 1
        cdef uint32_t *buf
        cdef uint64_t ns, hits = 0
        if addrs is not None:
            src = list(addrs)
            if not src:
                raise ValueError("addrs is empty")
            naddrs = ((len(src) + 31) // 32) * 32
        else:
            src = None
            naddrs = 1 << 22 if n > (1 << 22) else <uint32_t>(((n + 31) // 32) * 32)
        if n == 0:
            raise ValueError("n must be > 0")
        buf = <uint32_t *>malloc(<size_t>naddrs * 4)
        if buf == NULL:
            raise MemoryError()
        try:
            if src is not None:
                for k in range(naddrs):
                    buf[k] = src[k % len(src)]
            else:
                for k in range(naddrs):
                    buf[k] = _xorshift32(&s)
            with nogil:
                ns = _bench_loop(self.t, buf, naddrs, n, bulk, select, &hits)
        finally:
            free(buf)
        if bulk:
            n = ((n + 31) // 32) * 32
        secs = (<double>ns) / 1e9 if ns else 1e-9
        return {"n": n, "seconds": secs, "lookups_per_s": (<double>n) / secs,
                "ns_per_lookup": (<double>ns) / n, "hit_ratio": (<double>hits) / n}
