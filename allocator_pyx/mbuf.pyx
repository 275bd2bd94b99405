# cython: language_level=3
"""mbufs on UMA: the mbuf and cluster zones, the mbuf(9) API, limits, stats.

How the zones sit on the kegs (FreeBSD's kern_mbuf.c after mbuma):

      m_get, m_gethdr        m_getcl             m_clget          m_getjcl(4k/9k/16k)
            |                    |                   |                    |
    +-------v------+   +---------v--------+  +-------v-------+  +---------v---------+
    | zone "mbuf"  |   | zone             |  | zone          |  | mbuf_jumbo_page   |
    | ctor: header |   | "mbuf_packet"    |  | "mbuf_cluster"|  | mbuf_jumbo_9k     |
    |              |   | secondary zone,  |  |               |  | mbuf_jumbo_16k    |
    |              |   | zinit ---alloc-----> (cluster)     |  | (a zone and a     |
    |              |   | zfini ---free------>               |  |  REFCNT keg each) |
    +-------+------+   +---------+--------+  +-------+-------+  +---------+---------+
            |                    |                   |                    |
    +-------v--------------------v----+      +-------v--------+   +-------v-------+
    | keg "mbuf": 256-byte mbufs      |      | keg            |   | jumbo kegs,   |
    | limit kern.ipc.nmbufs (both     |      | "mbuf_cluster" |   | refcounts in  |
    | zones together)                 |      | 2048 B, REFCNT |   | slab headers  |
    +---------------------------------+      +----------------+   +---------------+

A Packet-zone item is an mbuf with a cluster attached.  The pair is made
when the item enters the zone from the keg (zinit takes a cluster from
"mbuf_cluster") and unmade only when it leaves the zone for the keg (zfini
frees the cluster), so a cached pair costs one bucket pop on m_getcl and one
push on m_freem: the cluster never goes back through its own zone.

Reference counts.  Every cluster keg is a UMA_ZONE_REFCNT keg: the count of
a cluster lives in its slab header and m_ext.ext_cnt points at it, resolved
once (uma_find_refcnt) when the cluster is attached and copied into every
mbuf that shares it (m_copym, m_split).  Trade-off: counters of neighbouring
clusters share cache lines in the slab header (why FreeBSD moved the count
into the first mbuf in 2016); in exchange an mbuf never has to outlive its
data to carry the count, and sharing needs no pointer to another mbuf.

Returning a pair.  The last reference to a Packet cluster, whichever mbuf
holds it, takes that mbuf and the cluster back to the Packet zone (the 2004
mbuma rule); the other mbufs that shared it go to the "mbuf" zone, even the
one that first came out of the Packet zone.  Per zone this always balances:
Packet USED = Packet clusters in use, mbuf USED = the other mbufs in use, and
netstat -m adds the two.

Limits.  kern.ipc.nmbufs caps the mbuf keg (both zones), nmbclusters the
cluster zone and -- the same number -- the Packet zone: a Packet item always
holds a cluster, so the cap costs nothing, and it sizes the Packet zone's
buckets to the cluster limit so that a refill never asks for more clusters
than may exist.  0 is unlimited.  Limits can be raised and lowered at run
time (FreeBSD's nmbclusters handler only lets it be raised).  Lowering trims
the caches -- the zones' lists and the lowering thread's at once, the
forwarding loop's at its next wake-up (uma.pyx, "Trimming") -- so that what
is in use plus what is cached comes down to the new limit; a cached Packet
pair leaves the Packet zone whole (zfini frees its cluster), so both zones
fall together.  What is in use is not revoked: new requests are refused
(denied) and frees go straight back to the slabs until usage is within the
limit.  netstat -m's cluster total is therefore at most the max, except for
clusters in use above a freshly lowered one.

Denied and delayed (netstat -m).  m_getcl(M_NOWAIT) asks the Packet zone
first; when it cannot (no cached pair and no cluster or mbuf to make one) it
tries the calling thread's cached mbuf and cluster through the two primary
zones.  A refused m_getcl therefore counts once under mbuf+clusters and once
under the primary zone that refused the fallback, the two counters FreeBSD
shows for a failed Packet refill.  M_WAITOK sleeps in the Packet zone only
(zinit never sleeps: it runs under the Packet zone's lock).  Known limit: a
pair freed by *another* thread returns its cluster through that thread's
cluster cache, which uma.pyx does not steal at the cap; a sleeper then waits
until that thread flushes or exits (or its timeout).  The dataplane uses
M_NOWAIT; the fix belongs in uma (a zone at its limit bypasses the caches).

Copy-on-write.  Unlike FreeBSD's, m_copyback never writes into a cluster
shared with another chain: a shared cluster in the target range is first
replaced by a private copy (m_makewritable).  Every other writer here
(m_append, m_cat, m_pullup, M_PREPEND, m_collapse) only uses space that
M_WRITABLE allows.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport EAGAIN, EINVAL, EMSGSIZE, ENOBUFS, ENOMEM, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset
from posix.fcntl cimport O_RDONLY, open as c_open
from posix.uio cimport iovec, readv, writev
from posix.unistd cimport _SC_PAGESIZE, close, read, sysconf, write

cimport cython

from allocator_pyx.includes cimport (_SC_PHYS_PAGES, likely, pthread_mutex_init,
                                     pthread_mutex_lock, pthread_mutex_t, pthread_mutex_unlock,
                                     unlikely)
from allocator_pyx.uma cimport (M_NOWAIT, M_WAITOK, M_ZERO, UMA_ZONE_REFCNT,
                                uma_find_refcnt, uma_keg_set_max, uma_refcnt_acquire,
                                uma_refcnt_get, uma_refcnt_release, uma_refcnt_set,
                                uma_zalloc, uma_zalloc_arg, uma_zcreate, uma_zfree,
                                uma_zone, uma_zone_drain, uma_zone_set_max, uma_zone_stat,
                                uma_zone_stats, uma_zsecond_create, zone_wrap)

cdef extern from *:
    """
    #include <errno.h>
    static inline void mb_set_errno(int e) { errno = e; }
    """
    void mb_set_errno(int e) nogil


# =============================================================================
# zone glue (mb_)
# =============================================================================

cdef struct mb_args:            # what m_get*() hand the zone constructors
    int flags
    int type

cdef uma_zone *zone_mbuf = NULL
cdef uma_zone *zone_clust = NULL
cdef uma_zone *zone_pack = NULL
cdef uma_zone *zone_jumbop = NULL
cdef uma_zone *zone_jumbo9 = NULL
cdef uma_zone *zone_jumbo16 = NULL

cdef pthread_mutex_t mb_lock            # init and limits
cdef bint mb_inited = False
cdef uint64_t mb_limits[MBL_COUNT]


cdef inline int imin(int a, int b) noexcept nogil:
    return a if a < b else b


cdef inline void mb_hdr_init(mbuf *m, int flags, int type) noexcept nogil:
    """A fresh mbuf's header (and packet header), data at the storage start."""
    m.m_next = NULL
    m.m_nextpkt = NULL
    m.m_len = 0
    m.m_flags = <uint16_t>flags
    m.m_type = <uint8_t>type
    if flags & M_PKTHDR:
        memset(&m.m_pkthdr, 0, sizeof(m_pkthdr_s))
        m.m_data = m.m_pktdat
    else:
        m.m_data = m.m_dat


cdef int mb_ctor_mbuf(void *mem, int size, void *arg, int how) noexcept nogil:
    cdef mb_args *a = <mb_args *>arg
    if a == NULL:
        mb_hdr_init(<mbuf *>mem, 0, MT_DATA)
    else:
        mb_hdr_init(<mbuf *>mem, a.flags & ~(M_EXT | M_RDONLY), a.type)
    return 0


cdef int mb_ctor_pack(void *mem, int size, void *arg, int how) noexcept nogil:
    """A cached pair handed out: header reset, the cluster kept (zinit)."""
    cdef mbuf *m = <mbuf *>mem
    cdef mb_args *a = <mb_args *>arg
    if a == NULL:
        mb_hdr_init(m, M_EXT, MT_DATA)
    else:
        mb_hdr_init(m, (a.flags & ~M_RDONLY) | M_EXT, a.type)
    m.m_data = m.m_ext.ext_buf
    return 0


cdef inline void mb_ext_attach(mbuf *m, char *buf, uint32_t size, int type,
                               uma_zone *zone) noexcept nogil:
    """Hang storage of a REFCNT zone on m, as its only reference."""
    cdef uint32_t *cnt = uma_find_refcnt(zone, buf)
    uma_refcnt_set(cnt, 1)
    m.m_ext.ext_cnt = cnt
    m.m_ext.ext_buf = buf
    m.m_ext.ext_size = size
    m.m_ext.ext_type = <uint8_t>type
    m.m_ext.ext_flags = 0
    m.m_ext.ext_zone = <void *>zone
    m.m_ext.ext_arg = NULL
    m.m_flags |= M_EXT
    m.m_data = buf


cdef int mb_zinit_pack(void *mem, int size, int how) noexcept nogil:
    """An mbuf enters the Packet zone: attach a cluster.  Always M_NOWAIT:
    the Packet zone's lock is held (a M_WAITOK m_getcl sleeps in the Packet
    zone instead, where frees wake it)."""
    cdef mbuf *m = <mbuf *>mem
    cdef char *buf = <char *>uma_zalloc(zone_clust, M_NOWAIT)
    if buf == NULL:
        return ENOMEM
    mb_ext_attach(m, buf, MCLBYTES, EXT_PACKET, zone_clust)
    return 0


cdef void mb_zfini_pack(void *mem, int size) noexcept nogil:
    """An mbuf leaves the Packet zone for the keg: its cluster goes home."""
    cdef mbuf *m = <mbuf *>mem
    uma_zfree(zone_clust, m.m_ext.ext_buf)


cdef inline void mb_dupcl(mbuf *n, mbuf *m) noexcept nogil:
    """n shares m's external storage (one more reference)."""
    uma_refcnt_acquire(m.m_ext.ext_cnt)
    n.m_ext = m.m_ext
    n.m_flags |= M_EXT


cdef inline uma_zone *mb_jzone(int size, int *exttype) noexcept nogil:
    if size == MCLBYTES:
        exttype[0] = EXT_CLUSTER
        return zone_clust
    if size == MJUMPAGESIZE:
        exttype[0] = EXT_JUMBOP
        return zone_jumbop
    if size == MJUM9BYTES:
        exttype[0] = EXT_JUMBO9
        return zone_jumbo9
    if size == MJUM16BYTES:
        exttype[0] = EXT_JUMBO16
        return zone_jumbo16
    return NULL


cdef void mb_free_ext(mbuf *m) noexcept nogil:
    """Drop m's reference to its storage and free m.  The last reference to
    a Packet cluster returns m itself with the cluster to the Packet zone."""
    cdef uint32_t *cnt = m.m_ext.ext_cnt
    # "== 1": nobody else holds it, and only holders can add references.
    if uma_refcnt_get(cnt) == 1 or uma_refcnt_release(cnt) == 0:
        if m.m_ext.ext_type == EXT_PACKET:
            uma_refcnt_set(cnt, 1)
            uma_zfree(zone_pack, m)
            return
        uma_zfree(<uma_zone *>m.m_ext.ext_zone, m.m_ext.ext_buf)
    uma_zfree(zone_mbuf, m)


cdef int mb_unshare(mbuf *m, int how) noexcept nogil:
    """Give m a private copy of its shared external storage (same size class,
    same data offset).  0, or -1 when no storage could be had."""
    cdef int exttype
    cdef uint32_t size = m.m_ext.ext_size
    cdef uma_zone *zone = mb_jzone(<int>size, &exttype)
    cdef char *buf
    cdef size_t off = <size_t>(m.m_data - m.m_ext.ext_buf)
    cdef uint32_t *oldcnt = m.m_ext.ext_cnt
    if zone == NULL:
        return -1
    buf = <char *>uma_zalloc(zone, how & (M_NOWAIT | M_WAITOK))
    if buf == NULL:
        return -1
    if m.m_len > 0:
        memcpy(buf + off, m.m_data, <size_t>m.m_len)
    if uma_refcnt_release(oldcnt) == 0:
        # Every other holder let go while we copied: the storage is ours.
        uma_refcnt_set(oldcnt, 1)
        uma_zfree(zone, buf)
        return 0
    mb_ext_attach(m, buf, size, exttype, zone)
    m.m_data = buf + off
    return 0


# =============================================================================
# setup, limits, stats (mbuf_)
# =============================================================================

cdef uint64_t mbuf_physmem() noexcept nogil:
    """Physical memory, or a smaller cgroup v2 memory.max (a container)."""
    cdef uint64_t phys = <uint64_t>sysconf(_SC_PHYS_PAGES) * <uint64_t>sysconf(_SC_PAGESIZE)
    cdef char buf[64]
    cdef ssize_t n
    cdef int fd, i
    cdef uint64_t v = 0
    fd = c_open(b"/sys/fs/cgroup/memory.max", O_RDONLY)
    if fd >= 0:
        n = read(fd, buf, sizeof(buf) - 1)
        close(fd)
        if n > 0:
            i = 0
            while i < n and buf[i] >= c'0' and buf[i] <= c'9':
                v = v * 10 + <uint64_t>(buf[i] - c'0')
                i += 1
            if i > 0 and (i == n or buf[i] == c'\n') and v < phys:
                phys = v
    return phys


cdef void mbuf_default_limits(uint64_t physmem, uint64_t *lim) noexcept nogil:
    """FreeBSD's tunable_mbinit(): at most half of memory for the network
    (maxmbufmem); 2k clusters and page-size jumbos may each take a quarter of
    it, 9k and 16k jumbos a sixth; nmbufs is maxmbufmem / MSIZE / 5, and at
    least the sum of the cluster limits.  Capped at INT_MAX like the sysctls.
    These are ceilings, not reservations: nothing is mapped until used."""
    cdef uint64_t maxmbufmem = physmem / 2
    cdef uint64_t intmax = 2147483647
    cdef int i
    lim[MBL_NMBCLUSTERS] = maxmbufmem // MCLBYTES // 4
    lim[MBL_NMBJUMBOP] = maxmbufmem // MJUMPAGESIZE // 4
    lim[MBL_NMBJUMBO9] = maxmbufmem // MJUM9BYTES // 6
    lim[MBL_NMBJUMBO16] = maxmbufmem // MJUM16BYTES // 6
    lim[MBL_NMBUFS] = maxmbufmem // MSIZE // 5
    if lim[MBL_NMBUFS] < (lim[MBL_NMBCLUSTERS] + lim[MBL_NMBJUMBOP] +
                          lim[MBL_NMBJUMBO9] + lim[MBL_NMBJUMBO16]):
        lim[MBL_NMBUFS] = (lim[MBL_NMBCLUSTERS] + lim[MBL_NMBJUMBOP] +
                           lim[MBL_NMBJUMBO9] + lim[MBL_NMBJUMBO16])
    for i in range(MBL_COUNT):
        if lim[i] > intmax:
            lim[i] = intmax


cdef int mbuf_check_limits(const uint64_t *lim) noexcept nogil:
    """Every cluster in use hangs on an mbuf: when nmbufs is limited it must
    cover the sum of the (limited) cluster limits."""
    cdef uint64_t clusters
    if lim[MBL_NMBUFS] == 0:
        return 0
    clusters = (lim[MBL_NMBCLUSTERS] + lim[MBL_NMBJUMBOP] +
                lim[MBL_NMBJUMBO9] + lim[MBL_NMBJUMBO16])
    if lim[MBL_NMBUFS] < clusters:
        return EINVAL
    return 0


cdef void mb_apply_limit(int which, uint64_t v) noexcept nogil:
    if which == MBL_NMBCLUSTERS:
        uma_zone_set_max(zone_clust, v)
        uma_zone_set_max(zone_pack, v)
    elif which == MBL_NMBUFS:
        uma_keg_set_max(zone_mbuf, v)
    elif which == MBL_NMBJUMBOP:
        uma_zone_set_max(zone_jumbop, v)
    elif which == MBL_NMBJUMBO9:
        uma_zone_set_max(zone_jumbo9, v)
    elif which == MBL_NMBJUMBO16:
        uma_zone_set_max(zone_jumbo16, v)


cdef int mb_set_limits_locked(const uint64_t *lim) noexcept nogil:
    cdef int i
    if mbuf_check_limits(lim) != 0:
        return EINVAL
    for i in range(MBL_COUNT):
        if lim[i] != mb_limits[i]:
            mb_apply_limit(i, lim[i])
            mb_limits[i] = lim[i]
    return 0


cdef int mbuf_set_limits(const uint64_t *lim) noexcept nogil:
    """Set all five limits at once (0 = unlimited): 0, or EINVAL (nothing
    changed) when nmbufs would be below the cluster limits."""
    cdef int rc
    if mbuf_init() != 0:
        return ENOMEM
    pthread_mutex_lock(&mb_lock)
    rc = mb_set_limits_locked(lim)
    pthread_mutex_unlock(&mb_lock)
    return rc


cdef int mbuf_set_limit(int which, uint64_t value) noexcept nogil:
    cdef uint64_t lim[MBL_COUNT]
    cdef int i, rc
    if which < 0 or which >= MBL_COUNT:
        return EINVAL
    if mbuf_init() != 0:
        return ENOMEM
    pthread_mutex_lock(&mb_lock)
    for i in range(MBL_COUNT):
        lim[i] = mb_limits[i]
    lim[which] = value
    rc = mb_set_limits_locked(lim)
    pthread_mutex_unlock(&mb_lock)
    return rc


cdef uint64_t mbuf_get_limit(int which) noexcept nogil:
    if which < 0 or which >= MBL_COUNT:
        return 0
    return mb_limits[which]


cdef int mbuf_init() noexcept nogil:
    """Create the mbuf zones and apply the memory-derived limits, once."""
    cdef uint64_t lim[MBL_COUNT]
    global zone_mbuf, zone_clust, zone_pack, zone_jumbop, zone_jumbo9, zone_jumbo16
    global mb_inited
    if likely(mb_inited):
        return 0
    pthread_mutex_lock(&mb_lock)
    if not mb_inited:
        zone_mbuf = uma_zcreate(b"mbuf", MSIZE, mb_ctor_mbuf, NULL, NULL, NULL, 0)
        zone_clust = uma_zcreate(b"mbuf_cluster", MCLBYTES, NULL, NULL, NULL, NULL,
                                 UMA_ZONE_REFCNT)
        if zone_mbuf != NULL and zone_clust != NULL:
            zone_pack = uma_zsecond_create(b"mbuf_packet", mb_ctor_pack, NULL,
                                           mb_zinit_pack, mb_zfini_pack, zone_mbuf)
        zone_jumbop = uma_zcreate(b"mbuf_jumbo_page", MJUMPAGESIZE, NULL, NULL, NULL, NULL,
                                  UMA_ZONE_REFCNT)
        zone_jumbo9 = uma_zcreate(b"mbuf_jumbo_9k", MJUM9BYTES, NULL, NULL, NULL, NULL,
                                  UMA_ZONE_REFCNT)
        zone_jumbo16 = uma_zcreate(b"mbuf_jumbo_16k", MJUM16BYTES, NULL, NULL, NULL, NULL,
                                   UMA_ZONE_REFCNT)
        if (zone_mbuf == NULL or zone_clust == NULL or zone_pack == NULL or
                zone_jumbop == NULL or zone_jumbo9 == NULL or zone_jumbo16 == NULL):
            pthread_mutex_unlock(&mb_lock)
            return -1
        mbuf_default_limits(mbuf_physmem(), lim)
        mb_set_limits_locked(lim)
        mb_inited = True
    pthread_mutex_unlock(&mb_lock)
    return 0


cdef uma_zone *mb_zone_at(int i) noexcept nogil:
    if i == MB_ZONE_PACKET:
        return zone_pack
    if i == MB_ZONE_MBUF:
        return zone_mbuf
    if i == MB_ZONE_CLUST:
        return zone_clust
    if i == MB_ZONE_JUMBOP:
        return zone_jumbop
    if i == MB_ZONE_JUMBO9:
        return zone_jumbo9
    if i == MB_ZONE_JUMBO16:
        return zone_jumbo16
    return NULL


cdef int mbuf_zone_stats(uma_zone_stat *st, int n) noexcept nogil:
    """vmstat -z rows of the mbuf zones, FreeBSD's order (MB_ZONE_*)."""
    cdef int i
    if n > MB_NZONES:
        n = MB_NZONES
    for i in range(n):
        uma_zone_stats(mb_zone_at(i), &st[i])
    return n


cdef uint64_t mbuf_drain() noexcept nogil:
    """Return cached mbufs and clusters to the OS (the calling thread's caches
    and the zones' lists).  The Packet zone goes first: its zfini frees the
    clusters into the cluster zone, which is drained after it."""
    cdef uint64_t freed = 0
    cdef int i
    for i in range(MB_NZONES):
        freed += uma_zone_drain(mb_zone_at(i))
    return freed


# =============================================================================
# allocation (m_)
# =============================================================================

cdef mbuf *m_get(int how, int type) noexcept nogil:
    cdef mb_args a
    a.flags = 0
    a.type = type
    return <mbuf *>uma_zalloc_arg(zone_mbuf, &a, how & (M_NOWAIT | M_WAITOK))


cdef mbuf *m_gethdr(int how, int type) noexcept nogil:
    cdef mb_args a
    a.flags = M_PKTHDR
    a.type = type
    return <mbuf *>uma_zalloc_arg(zone_mbuf, &a, how & (M_NOWAIT | M_WAITOK))


cdef mbuf *m_getcl(int how, int type, int flags) noexcept nogil:
    """An mbuf with a 2k cluster: a cached pair of the Packet zone; failing
    that (M_NOWAIT), an mbuf and a cluster from the primary zones."""
    cdef mb_args a
    cdef mbuf *m
    cdef char *buf
    a.flags = flags
    a.type = type
    how &= (M_NOWAIT | M_WAITOK)
    m = <mbuf *>uma_zalloc_arg(zone_pack, &a, how)
    if likely(m != NULL) or (how & M_WAITOK):
        return m
    m = <mbuf *>uma_zalloc_arg(zone_mbuf, &a, how)
    if m == NULL:
        return NULL
    buf = <char *>uma_zalloc(zone_clust, how)
    if buf == NULL:
        uma_zfree(zone_mbuf, m)
        return NULL
    mb_ext_attach(m, buf, MCLBYTES, EXT_CLUSTER, zone_clust)
    return m


cdef mbuf *m_getjcl(int how, int type, int flags, int size) noexcept nogil:
    """An mbuf with a cluster of size MCLBYTES, MJUMPAGESIZE, MJUM9BYTES or
    MJUM16BYTES (anything else: NULL)."""
    cdef mb_args a
    cdef mbuf *m
    cdef char *buf
    cdef int exttype
    cdef uma_zone *zone
    if size == MCLBYTES:
        return m_getcl(how, type, flags)
    zone = mb_jzone(size, &exttype)
    if zone == NULL:
        return NULL
    a.flags = flags
    a.type = type
    how &= (M_NOWAIT | M_WAITOK)
    m = <mbuf *>uma_zalloc_arg(zone_mbuf, &a, how)
    if m == NULL:
        return NULL
    buf = <char *>uma_zalloc(zone, how)
    if buf == NULL:
        uma_zfree(zone_mbuf, m)
        return NULL
    mb_ext_attach(m, buf, <uint32_t>size, exttype, zone)
    return m


cdef int m_cljget(mbuf *m, int how, int size) noexcept nogil:
    """Attach a new cluster of `size` to m, which must have none: 0 or -1.
    Data in m's internal storage is not carried over (m_len is kept)."""
    cdef int exttype
    cdef uma_zone *zone = mb_jzone(size, &exttype)
    cdef char *buf
    if zone == NULL or (m.m_flags & M_EXT):
        return -1
    buf = <char *>uma_zalloc(zone, how & (M_NOWAIT | M_WAITOK))
    if buf == NULL:
        return -1
    mb_ext_attach(m, buf, <uint32_t>size, exttype, zone)
    return 0


cdef int m_clget(mbuf *m, int how) noexcept nogil:
    """Attach a 2k cluster: M_EXT on success, 0 when none could be had or m
    already has storage attached (FreeBSD's return convention)."""
    if m_cljget(m, how, MCLBYTES) != 0:
        return 0
    return M_EXT


cdef mbuf *m_getm(int length, int how, int type, int flags) noexcept nogil:
    """A chain with room for `length` bytes (each m_len 0, data at the start
    of the storage): page-size jumbos while more than MCLBYTES remain, then a
    2k cluster or a plain mbuf.  `flags` (M_PKTHDR...) go to the first."""
    cdef mbuf *top = NULL
    cdef mbuf **tail = &top
    cdef mbuf *m
    cdef int hdr = flags
    while True:
        if length > MCLBYTES:
            m = m_getjcl(how, type, hdr, MJUMPAGESIZE)
        elif length > (MHLEN if hdr & M_PKTHDR else MLEN):
            m = m_getcl(how, type, hdr)
        elif hdr & M_PKTHDR:
            m = m_gethdr(how, type)
            if m != NULL:
                m.m_flags |= <uint16_t>(hdr & M_COPYFLAGS)
        else:
            m = m_get(how, type)
        if m == NULL:
            m_freem(top)
            return NULL
        tail[0] = m
        tail = &m.m_next
        length -= M_SIZE(m)
        hdr = 0
        if length <= 0:
            return top


cdef mbuf *m_free(mbuf *m) noexcept nogil:
    """Free one mbuf (and its storage, if this was the last reference);
    returns the next mbuf of the chain."""
    cdef mbuf *n = m.m_next
    if m.m_flags & M_EXT:
        mb_free_ext(m)
    else:
        uma_zfree(zone_mbuf, m)
    return n


cdef void m_freem(mbuf *m) noexcept nogil:
    while m != NULL:
        m = m_free(m)


# =============================================================================
# packet headers
# =============================================================================

cdef void m_dup_pkthdr(mbuf *to, mbuf *fr) noexcept nogil:
    """to (an empty mbuf) gets a copy of fr's packet header and flags."""
    to.m_flags = (fr.m_flags & M_COPYFLAGS) | (to.m_flags & M_EXT)
    if not (to.m_flags & M_EXT):
        to.m_data = to.m_pktdat
    to.m_pkthdr = fr.m_pkthdr


cdef void m_move_pkthdr(mbuf *to, mbuf *fr) noexcept nogil:
    m_dup_pkthdr(to, fr)
    fr.m_flags &= ~M_PKTHDR


cdef void m_demote_pkthdr(mbuf *m) noexcept nogil:
    """m is no longer the first mbuf of a packet.  Internal data stays where
    it is: m_pktdat lies inside m_dat."""
    m.m_flags &= ~M_PKTHDR


# =============================================================================
# chains
# =============================================================================

cdef unsigned int m_length(mbuf *m0, mbuf **last) noexcept nogil:
    cdef unsigned int n = 0
    cdef mbuf *m = m0
    cdef mbuf *prev = NULL
    while m != NULL:
        n += <unsigned int>m.m_len
        prev = m
        m = m.m_next
    if last != NULL:
        last[0] = prev
    return n


cdef unsigned int m_fixhdr(mbuf *m0) noexcept nogil:
    cdef unsigned int n = m_length(m0, NULL)
    if m0.m_flags & M_PKTHDR:
        m0.m_pkthdr.len = <int32_t>n
    return n


cdef int m_count(mbuf *m0) noexcept nogil:
    cdef int n = 0
    while m0 != NULL:
        n += 1
        m0 = m0.m_next
    return n


cdef int m_copydata(mbuf *m, int off, int length, char *cp) noexcept nogil:
    """Copy `length` bytes from offset `off` of the chain to cp: 0, or -1
    when the chain is shorter (cp then holds what there was)."""
    cdef int cnt
    if off < 0 or length < 0:
        return -1
    while off > 0:
        if m == NULL:
            return -1
        if off < m.m_len:
            break
        off -= m.m_len
        m = m.m_next
    while length > 0:
        if m == NULL:
            return -1
        cnt = imin(m.m_len - off, length)
        memcpy(cp, m.m_data + off, <size_t>cnt)
        cp += cnt
        length -= cnt
        off = 0
        m = m.m_next
    return 0


cdef void mb_fill(mbuf *dst, mbuf *src, int total) noexcept nogil:
    """Copy the first `total` bytes of chain src behind the data of the
    (fresh, writable) chain dst, filling each mbuf's storage in turn."""
    cdef int room, take, soff = 0, cnt
    cdef char *d
    while dst != NULL and total > 0:
        room = <int>((M_START(dst) + M_SIZE(dst)) - (dst.m_data + dst.m_len))
        take = imin(room, total)
        d = dst.m_data + dst.m_len
        dst.m_len += take
        total -= take
        while take > 0:
            cnt = imin(src.m_len - soff, take)
            memcpy(d, src.m_data + soff, <size_t>cnt)
            d += cnt
            take -= cnt
            soff += cnt
            if soff == src.m_len:
                src = src.m_next
                soff = 0
                while src != NULL and src.m_len == 0:
                    src = src.m_next
        dst = dst.m_next


cdef mbuf *m_copym(mbuf *m, int off, int length, int how) noexcept nogil:
    """A read-only copy of `length` bytes (M_COPYALL: to the end) from
    offset `off`: clusters are shared (reference counts rise), internal data
    is copied.  The copy gets the packet header when off is 0.  NULL when
    out of mbufs or the chain is shorter than off + length."""
    cdef mbuf *top = NULL
    cdef mbuf **tail = &top
    cdef mbuf *n
    cdef int cnt, off0 = off
    cdef bint copyhdr
    if m == NULL or off < 0 or length < 0:
        return NULL
    copyhdr = off == 0 and (m.m_flags & M_PKTHDR) != 0
    while off > 0:
        if m == NULL:
            return NULL
        if off < m.m_len:
            break
        off -= m.m_len
        m = m.m_next
    while length > 0:
        if m == NULL:
            if length != M_COPYALL:
                m_freem(top)
                return NULL
            break
        if copyhdr:
            n = m_gethdr(how, m.m_type)
        else:
            n = m_get(how, m.m_type)
        if n == NULL:
            m_freem(top)
            return NULL
        if copyhdr:
            m_dup_pkthdr(n, m)
            if length != M_COPYALL:
                n.m_pkthdr.len = length
            copyhdr = False
        cnt = m.m_len - off
        if length != M_COPYALL and length < cnt:
            cnt = length
        if m.m_flags & M_EXT:
            mb_dupcl(n, m)
            n.m_data = m.m_data + off
        elif cnt > 0:
            memcpy(n.m_data, m.m_data + off, <size_t>cnt)
        n.m_len = cnt
        tail[0] = n
        tail = &n.m_next
        if length != M_COPYALL:
            length -= cnt
        off = 0
        m = m.m_next
    return top


cdef mbuf *m_copypacket(mbuf *m, int how) noexcept nogil:
    return m_copym(m, 0, M_COPYALL, how)


cdef mbuf *m_dup(mbuf *m, int how) noexcept nogil:
    """A deep, writable copy of the chain (packet header included)."""
    cdef int total
    cdef int hdr
    cdef mbuf *n
    if m == NULL:
        return NULL
    total = <int>m_length(m, NULL)
    hdr = m.m_flags & M_PKTHDR
    n = m_getm(total, how, m.m_type, hdr)
    if n == NULL:
        return NULL
    if hdr:
        m_dup_pkthdr(n, m)
    mb_fill(n, m, total)
    return n


cdef mbuf *mb_getsized(int how, int type, int flags, int length) noexcept nogil:
    """One mbuf whose storage holds `length` bytes: plain, 2k or a jumbo."""
    if length <= (MHLEN if flags & M_PKTHDR else MLEN):
        if flags & M_PKTHDR:
            return m_gethdr(how, type)
        return m_get(how, type)
    if length <= MCLBYTES:
        return m_getcl(how, type, flags)
    if length <= MJUMPAGESIZE:
        return m_getjcl(how, type, flags, MJUMPAGESIZE)
    if length <= MJUM9BYTES:
        return m_getjcl(how, type, flags, MJUM9BYTES)
    if length <= MJUM16BYTES:
        return m_getjcl(how, type, flags, MJUM16BYTES)
    return NULL


cdef mbuf *m_prepend(mbuf *m, int length, int how) noexcept nogil:
    """A new mbuf with `length` bytes (up to MJUM16BYTES, uninitialised) in
    front of m, taking over m's packet header; its data sits at the end of
    its storage so that more can be prepended.  On failure m is freed and
    NULL returned (FreeBSD's contract).  pkthdr.len is the caller's."""
    cdef int hdr = m.m_flags & M_PKTHDR
    cdef mbuf *mn
    mn = mb_getsized(how, m.m_type, hdr, length) if length >= 0 else NULL
    if mn == NULL:
        m_freem(m)
        return NULL
    if hdr:
        m_move_pkthdr(mn, m)
    mn.m_next = m
    M_ALIGN(mn, length)
    mn.m_len = length
    return mn


cdef mbuf *M_PREPEND(mbuf *m, int length, int how) noexcept nogil:
    """Make room for `length` bytes in front of the data: in m's leading
    space when it has enough (and is writable), else in a new mbuf.  Updates
    pkthdr.len.  NULL (chain freed) on failure."""
    if length < 0:
        m_freem(m)
        return NULL
    if M_LEADINGSPACE(m) >= length:
        m.m_data -= length
        m.m_len += length
    else:
        m = m_prepend(m, length, how)
        if m == NULL:
            return NULL
    if m.m_flags & M_PKTHDR:
        m.m_pkthdr.len += length
    return m


cdef mbuf *m_pullup(mbuf *n, int length) noexcept nogil:
    """Make the first `length` bytes contiguous in the first mbuf.  In place
    when the first mbuf is writable and its storage has the room behind the
    data; otherwise in a new first mbuf (plain up to MHLEN, a 2k cluster up
    to MCLBYTES).  On failure (no memory, length > MCLBYTES, or a chain
    shorter than length) the chain is freed and NULL returned, as FreeBSD."""
    cdef mbuf *m
    cdef int need, cnt, hdr
    if n == NULL:
        return NULL
    if n.m_len >= length:
        return n
    if length > MCLBYTES:
        m_freem(n)
        return NULL
    if M_WRITABLE(n) and (M_START(n) + M_SIZE(n)) - n.m_data >= length:
        m = n
        need = length - m.m_len
        n = n.m_next
    else:
        hdr = n.m_flags & M_PKTHDR
        if length <= MHLEN:
            m = m_get(M_NOWAIT, n.m_type)
        else:
            m = m_getcl(M_NOWAIT, n.m_type, 0)
        if m == NULL:
            m_freem(n)
            return NULL
        if hdr:
            m_move_pkthdr(m, n)
        need = length
    while need > 0 and n != NULL:
        cnt = imin(need, n.m_len)
        memcpy(m.m_data + m.m_len, n.m_data, <size_t>cnt)
        m.m_len += cnt
        need -= cnt
        n.m_len -= cnt
        n.m_data += cnt
        if n.m_len == 0:
            n = m_free(n)
    m.m_next = n
    if need > 0:
        m_freem(m)
        return NULL
    return m


cdef void m_adj(mbuf *mp, int req_len) noexcept nogil:
    """Trim req_len bytes from the head (req_len >= 0) or -req_len bytes from
    the tail (req_len < 0).  Head trimming leaves emptied mbufs in the chain
    (the first keeps the packet header); tail trimming frees the mbufs after
    the new end.  pkthdr.len follows."""
    cdef int length, count
    cdef mbuf *m
    if mp == NULL:
        return
    if req_len >= 0:
        length = req_len
        m = mp
        while m != NULL and length > 0:
            if m.m_len <= length:
                length -= m.m_len
                m.m_len = 0
                m = m.m_next
            else:
                m.m_len -= length
                m.m_data += length
                length = 0
        if mp.m_flags & M_PKTHDR:
            mp.m_pkthdr.len -= (req_len - length)
        return
    length = -req_len
    count = <int>m_length(mp, NULL) - length
    if count < 0:
        count = 0
    if mp.m_flags & M_PKTHDR:
        mp.m_pkthdr.len = count
    m = mp
    while m != NULL:
        if m.m_len >= count:
            m.m_len = count
            if m.m_next != NULL:
                m_freem(m.m_next)
                m.m_next = NULL
            return
        count -= m.m_len
        m = m.m_next


cdef void m_cat(mbuf *m, mbuf *n) noexcept nogil:
    """Append chain n to chain m.  Small internal mbufs of n are copied into
    m's trailing space (when writable) and freed; the rest is linked.  No
    packet header is touched (see m_catpkt)."""
    while m.m_next != NULL:
        m = m.m_next
    while n != NULL:
        if (n.m_flags & M_EXT) or n.m_len > M_TRAILINGSPACE(m):
            m.m_next = n
            return
        if n.m_len > 0:
            memcpy(m.m_data + m.m_len, n.m_data, <size_t>n.m_len)
            m.m_len += n.m_len
        n = m_free(n)


cdef void m_catpkt(mbuf *m, mbuf *n) noexcept nogil:
    """Append packet n to packet m: lengths add, n's header is demoted."""
    m.m_pkthdr.len += n.m_pkthdr.len
    m_demote_pkthdr(n)
    m_cat(m, n)


cdef mbuf *m_split(mbuf *m0, int len0, int how) noexcept nogil:
    """Split the chain at byte len0: m0 keeps [0, len0), the returned chain
    holds the rest.  A cluster straddling the cut is shared, internal data
    copied.  With a packet header, the tail gets one too (both lengths set).
    NULL when out of mbufs, when len0 is past the end, and -- without a
    packet header -- when there is nothing after len0."""
    cdef mbuf *m = m0
    cdef mbuf *n = NULL
    cdef mbuf *k = NULL
    cdef mbuf *dst
    cdef int length = len0, remain, hdr
    if m0 == NULL or len0 < 0:
        return NULL
    while m != NULL and length > m.m_len:
        length -= m.m_len
        m = m.m_next
    if m == NULL:
        return NULL
    remain = m.m_len - length
    hdr = m0.m_flags & M_PKTHDR
    if not hdr and remain == 0:
        n = m.m_next
        m.m_next = NULL
        return n
    # Allocate everything first: a failure must leave m0 untouched.
    if hdr:
        n = m_gethdr(how, m0.m_type)
        if n == NULL:
            return NULL
    if remain > 0 and (not hdr or (not (m.m_flags & M_EXT) and remain > MHLEN)):
        k = m_get(how, m.m_type)
        if k == NULL:
            if n != NULL:
                m_free(n)
            return NULL
    if hdr:
        m_dup_pkthdr(n, m0)
        n.m_pkthdr.len = m0.m_pkthdr.len - len0
        m0.m_pkthdr.len = len0
    dst = k if k != NULL else n
    if remain > 0:
        if m.m_flags & M_EXT:
            mb_dupcl(dst, m)
            dst.m_data = m.m_data + length
        else:
            M_ALIGN(dst, remain)
            memcpy(dst.m_data, m.m_data + length, <size_t>remain)
        dst.m_len = remain
    if n != NULL and k != NULL:
        n.m_next = k
    dst.m_next = m.m_next
    m.m_next = NULL
    m.m_len = length
    return n if n != NULL else k


cdef mbuf *m_defrag(mbuf *m0, int how) noexcept nogil:
    """The chain copied into as few mbufs as m_getm gives (page-size jumbos,
    then one 2k cluster or plain mbuf), shared clusters unshared; m0 is
    freed.  NULL (m0 untouched) when out of memory.  That is m_dup, then
    m0 let go."""
    cdef mbuf *n = m_dup(m0, how)
    if n != NULL:
        m_freem(m0)
    return n


cdef mbuf *m_collapse(mbuf *m0, int how, int maxfrags) noexcept nogil:
    """Bring the chain to at most maxfrags mbufs without a full copy: first
    pack each mbuf's successors into its writable trailing space (dropping
    empty ones), then merge neighbours after the first into new 2k clusters.
    m0, or NULL when that is not enough (the chain is still valid, possibly
    rearranged, and still the caller's)."""
    cdef mbuf *m
    cdef mbuf *n
    cdef mbuf *prev
    cdef mbuf *k
    cdef int count
    if m0 == NULL or maxfrags < 1:
        return NULL
    count = m_count(m0)
    if count <= maxfrags:
        return m0
    # 1: squeeze successors into trailing space.
    m = m0
    while m != NULL:
        n = m.m_next
        while n != NULL and (n.m_len == 0 or n.m_len <= M_TRAILINGSPACE(m)):
            if n.m_len > 0:
                memcpy(m.m_data + m.m_len, n.m_data, <size_t>n.m_len)
                m.m_len += n.m_len
            n = m_free(n)
            m.m_next = n
            count -= 1
        m = n
    if count <= maxfrags:
        return m0
    # 2: merge pairs after the head into fresh clusters.
    prev = m0
    m = m0.m_next
    while m != NULL and m.m_next != NULL:
        n = m.m_next
        if m.m_len + n.m_len <= MCLBYTES:
            k = m_getcl(how, m.m_type, 0)
            if k == NULL:
                return NULL
            memcpy(k.m_data, m.m_data, <size_t>m.m_len)
            memcpy(k.m_data + m.m_len, n.m_data, <size_t>n.m_len)
            k.m_len = m.m_len + n.m_len
            k.m_next = n.m_next
            prev.m_next = k
            m_free(m)
            m_free(n)
            count -= 1
            if count <= maxfrags:
                return m0
            m = k
        else:
            prev = m
            m = n
    return NULL


cdef int m_makewritable(mbuf *m0, int off, int length, int how) noexcept nogil:
    """Give every mbuf holding a byte of [off, off+length) storage of its own
    (copying shared clusters): 0, or -1 when out of memory."""
    cdef mbuf *m = m0
    cdef int pos = 0
    cdef int end = off + length
    if off < 0 or length < 0:
        return -1
    while m != NULL and pos < end:
        if (m.m_len > 0 and pos + m.m_len > off and (m.m_flags & M_EXT) and
                not M_WRITABLE(m)):
            if mb_unshare(m, how) != 0:
                return -1
        pos += m.m_len
        m = m.m_next
    return 0


cdef int m_copyback(mbuf *m0, int off, int length, const char *cp) noexcept nogil:
    """Write `length` bytes from cp at offset `off`, extending the chain (a
    gap before off is zero-filled) and pkthdr.len as needed.  Never writes
    into storage shared with another chain (it is copied first).  0, or -1
    when out of memory (then the chain's contents are unchanged)."""
    cdef mbuf *last
    cdef mbuf *ext = NULL
    cdef mbuf *p
    cdef mbuf *m
    cdef int total, end, need, room, grow, take, cnt
    if m0 == NULL or off < 0 or length < 0:
        return -1
    total = <int>m_length(m0, &last)
    end = off + length
    if off < total and m_makewritable(m0, off, imin(length, total - off), M_NOWAIT) != 0:
        return -1
    if end > total:
        need = end - total
        room = M_TRAILINGSPACE(last)
        if need > room:
            ext = m_getm(need - room, M_NOWAIT, last.m_type, 0)
            if ext == NULL:
                return -1
        grow = imin(room, need)
        if grow > 0:
            memset(last.m_data + last.m_len, 0, <size_t>grow)
            last.m_len += grow
            need -= grow
        p = ext
        while p != NULL:
            take = imin(M_SIZE(p), need)
            memset(p.m_data, 0, <size_t>take)
            p.m_len = take
            need -= take
            p = p.m_next
        last.m_next = ext
        if (m0.m_flags & M_PKTHDR) and m0.m_pkthdr.len < end:
            m0.m_pkthdr.len = end
    m = m0
    while off > 0 and m != NULL:
        if off < m.m_len:
            break
        off -= m.m_len
        m = m.m_next
    while length > 0 and m != NULL:
        cnt = imin(m.m_len - off, length)
        memcpy(m.m_data + off, cp, <size_t>cnt)
        cp += cnt
        length -= cnt
        off = 0
        m = m.m_next
    return 0


cdef int m_append(mbuf *m0, int length, const char *cp) noexcept nogil:
    """Append `length` bytes at the end of the chain (trailing space first,
    then new mbufs); pkthdr.len grows by length.  1 on success, 0 when out of
    memory (nothing appended): FreeBSD's convention."""
    cdef mbuf *last
    cdef mbuf *ext = NULL
    cdef mbuf *p
    cdef int room, take
    if m0 == NULL or length < 0:
        return 0
    m_length(m0, &last)
    room = M_TRAILINGSPACE(last)
    if length > room:
        ext = m_getm(length - room, M_NOWAIT, last.m_type, 0)
        if ext == NULL:
            return 0
    if (m0.m_flags & M_PKTHDR):
        m0.m_pkthdr.len += length
    take = imin(room, length)
    if take > 0:
        memcpy(last.m_data + last.m_len, cp, <size_t>take)
        last.m_len += take
        cp += take
        length -= take
    p = ext
    while p != NULL:
        take = imin(M_SIZE(p), length)
        memcpy(p.m_data, cp, <size_t>take)
        p.m_len = take
        cp += take
        length -= take
        p = p.m_next
    last.m_next = ext
    return 1


cdef mbuf *m_devget(const char *buf, int totlen, int off, int rcvif) noexcept nogil:
    """A packet built from a buffer: `off` bytes of leading space in the first
    mbuf (e.g. ETHER_ALIGN, 0 <= off < MHLEN), then totlen bytes.  NULL when
    out of memory or for bad arguments."""
    cdef mbuf *m
    cdef mbuf *p
    cdef int take
    if totlen <= 0 or off < 0 or off >= MHLEN:
        return NULL
    m = m_getm(totlen + off, M_NOWAIT, MT_DATA, M_PKTHDR)
    if m == NULL:
        return NULL
    m.m_data += off
    m.m_pkthdr.len = totlen
    m.m_pkthdr.rcvif = rcvif
    p = m
    while p != NULL and totlen > 0:
        take = imin(<int>((M_START(p) + M_SIZE(p)) - p.m_data), totlen)
        memcpy(p.m_data, buf, <size_t>take)
        p.m_len = take
        buf += take
        totlen -= take
        p = p.m_next
    return m


# =============================================================================
# file descriptors: the dataplane's receive and transmit
# =============================================================================

cdef mbuf *m_read_fd(int fd, int maxlen, int leading, int rcvif, int how) noexcept nogil:
    """Read one frame of at most maxlen bytes from fd straight into cluster
    memory, `leading` bytes into the storage (room to prepend, or alignment).
    The storage is chosen by leading + maxlen: a Packet-zone pair up to 2k, a
    page, 9k or 16k jumbo up to 16k, a chain of 16k jumbos (readv) beyond.
    Returns the packet (pkthdr.len, rcvif set; storage not used is given
    back), or NULL with errno: EAGAIN/EWOULDBLOCK (nothing to read), ENOBUFS
    (allocation denied: the frame stays queued, see m_discard_fd), EINVAL,
    0 (end of file), or read()'s own error."""
    cdef mbuf *m
    cdef mbuf *p
    cdef mbuf *prev
    cdef iovec iov[MB_IOV_MAX]
    cdef int need, cnt, i, e
    cdef ssize_t r, left
    if maxlen <= 0 or leading < 0 or leading >= MHLEN:
        mb_set_errno(EINVAL)
        return NULL
    need = maxlen + leading
    if need > MB_IOV_MAX * MJUM16BYTES:
        mb_set_errno(EINVAL)
        return NULL
    if need <= MJUM16BYTES:
        m = mb_getsized(how, MT_DATA, M_PKTHDR, need if need > MHLEN else MHLEN + 1)
    else:
        m = m_getjcl(how, MT_DATA, M_PKTHDR, MJUM16BYTES)
        p = m
        cnt = need - MJUM16BYTES
        while p != NULL and cnt > 0:
            p.m_next = m_getjcl(how, MT_DATA, 0, MJUM16BYTES)
            p = p.m_next
            cnt -= MJUM16BYTES
        if p == NULL:
            m_freem(m)
            m = NULL
    if m == NULL:
        mb_set_errno(ENOBUFS)
        return NULL
    m.m_data += leading
    if m.m_next == NULL:
        iov[0].iov_base = m.m_data
        iov[0].iov_len = <size_t>maxlen
        cnt = 1
        r = read(fd, m.m_data, <size_t>maxlen)
    else:
        cnt = 0
        left = maxlen
        p = m
        while p != NULL and left > 0:
            iov[cnt].iov_base = p.m_data
            iov[cnt].iov_len = <size_t>imin(M_TRAILINGSPACE(p), <int>left)
            left -= <ssize_t>iov[cnt].iov_len
            cnt += 1
            p = p.m_next
        r = readv(fd, iov, cnt)
    if r <= 0:
        e = errno if r < 0 else 0
        m_freem(m)
        mb_set_errno(e)
        return NULL
    left = r
    p = m
    prev = m
    i = 0
    while p != NULL and left > 0:
        p.m_len = <int32_t>(left if <size_t>left < iov[i].iov_len else iov[i].iov_len)
        left -= p.m_len
        prev = p
        p = p.m_next
        i += 1
    if prev.m_next != NULL:
        m_freem(prev.m_next)
        prev.m_next = NULL
    m.m_pkthdr.len = <int32_t>r
    m.m_pkthdr.rcvif = rcvif
    return m


cdef ssize_t m_discard_fd(int fd) noexcept nogil:
    """Read and drop one frame (what a NIC does without buffers): the byte
    count, 0 at end of file, or -1 with errno."""
    cdef char buf[65536]
    return read(fd, buf, sizeof(buf))


cdef int m_to_iovec(mbuf *m, iovec *iov, int maxiov) noexcept nogil:
    """One iovec per non-empty mbuf of the chain: the count, or -1 with
    errno EMSGSIZE when more than maxiov would be needed."""
    cdef int n = 0
    while m != NULL:
        if m.m_len > 0:
            if n >= maxiov:
                mb_set_errno(EMSGSIZE)
                return -1
            iov[n].iov_base = m.m_data
            iov[n].iov_len = <size_t>m.m_len
            n += 1
        m = m.m_next
    return n


cdef ssize_t m_writev_fd(int fd, mbuf *m) noexcept nogil:
    """writev() the chain as one frame.  The chain stays the caller's (free
    it, or keep it to retry on EAGAIN).  Bytes written, or -1 with errno
    (EMSGSIZE: more than MB_IOV_MAX non-empty mbufs, m_collapse it first).
    A chain of one mbuf (a forwarded frame, its Ethernet header prepended in
    the cluster's leading space) goes out with plain write(): the same frame,
    without the kernel copying in and walking an iovec array."""
    cdef iovec iov[MB_IOV_MAX]
    cdef int n
    if m.m_next == NULL:
        return write(fd, m.m_data, <size_t>m.m_len)
    n = m_to_iovec(m, iov, MB_IOV_MAX)
    if n < 0:
        return -1
    return writev(fd, iov, n)


# =============================================================================
# Python: constants, limits, stats, drain
# =============================================================================

pthread_mutex_init(&mb_lock, NULL)
if mbuf_init() != 0:
    raise MemoryError("mbuf: cannot create the mbuf zones")

SIZES = {"MSIZE": MSIZE, "MLEN": MLEN, "MHLEN": MHLEN, "MINCLSIZE": MINCLSIZE,
         "MCLBYTES": MCLBYTES, "MJUMPAGESIZE": MJUMPAGESIZE, "MJUM9BYTES": MJUM9BYTES,
         "MJUM16BYTES": MJUM16BYTES}
globals().update(SIZES)
CONSTANTS = {"M_COPYALL": M_COPYALL, "MB_IOV_MAX": MB_IOV_MAX, "M_EXT": M_EXT,
             "M_PKTHDR": M_PKTHDR, "M_RDONLY": M_RDONLY, "MT_DATA": MT_DATA,
             "EXT_CLUSTER": EXT_CLUSTER, "EXT_JUMBOP": EXT_JUMBOP, "EXT_JUMBO9": EXT_JUMBO9,
             "EXT_JUMBO16": EXT_JUMBO16, "EXT_PACKET": EXT_PACKET}
globals().update(CONSTANTS)

ZONE_NAMES = ("mbuf_packet", "mbuf", "mbuf_cluster", "mbuf_jumbo_page", "mbuf_jumbo_9k",
              "mbuf_jumbo_16k")
LIMIT_NAMES = ("nmbclusters", "nmbufs", "nmbjumbop", "nmbjumbo9", "nmbjumbo16")


class MbufDenied(MemoryError):
    """An mbuf or cluster allocation was refused (a zone limit, or memory)."""


class LimitError(ValueError):
    """A set of mbuf limits was refused; the message says why."""


cdef dict _row(uma_zone_stat *st):
    return {"name": st.name.decode(), "size": st.size, "limit": st.limit, "used": st.used,
            "free": st.free, "requests": st.requests, "fails": st.fails,
            "sleeps": st.sleeps, "items": st.items, "bucket_size": st.bucket_size,
            "keg_free": st.keg_free, "keg_slabs": st.keg_slabs,
            "keg_slabsize": st.keg_slabsize}


def init() -> None:
    """mbuf_init(): create the mbuf zones and apply the limits derived from
    memory.  Done when this module is imported; calling it again changes
    nothing (neither the zones nor limits set since)."""
    cdef int rc
    with nogil:
        rc = mbuf_init()
    if rc != 0:
        raise MemoryError("mbuf: cannot create the mbuf zones")


def zone_stats() -> dict:
    """{zone name: vmstat -z row} for the six mbuf zones, in FreeBSD's
    vmstat -z order; plain dicts (what netstat.netstat_m() takes)."""
    cdef uma_zone_stat st[MB_NZONES]
    cdef int n
    with nogil:
        n = mbuf_zone_stats(st, MB_NZONES)
    return {st[i].name.decode(): _row(&st[i]) for i in range(n)}


def zones() -> dict:
    """{zone name: uma.Zone handle} (non-owning) of the mbuf zones."""
    return {mb_zone_at(i).uz_name.decode(): zone_wrap(mb_zone_at(i)) for i in range(MB_NZONES)}


def get_limits() -> dict:
    """The current limits by tunable name (kern.ipc.<name>); 0 = unlimited."""
    return {name: mb_limits[i] for i, name in enumerate(LIMIT_NAMES)}


def check_limits(**limits) -> dict:
    """The full set of limits that set_limits(**limits) would apply; raises
    LimitError (nothing applied) when they are inconsistent."""
    cur = get_limits()
    for name, value in limits.items():
        key = name[len("kern.ipc."):] if name.startswith("kern.ipc.") else name
        if key not in cur:
            raise LimitError(f"unknown mbuf limit {name!r} (one of {', '.join(LIMIT_NAMES)})")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise LimitError(f"kern.ipc.{key}: {value!r} is not a count >= 0 (0 = unlimited)")
        cur[key] = value
    if cur["nmbufs"]:
        clusters = cur["nmbclusters"] + cur["nmbjumbop"] + cur["nmbjumbo9"] + cur["nmbjumbo16"]
        if cur["nmbufs"] < clusters:
            raise LimitError(
                f"kern.ipc.nmbufs={cur['nmbufs']} is below the cluster limits "
                f"nmbclusters+nmbjumbop+nmbjumbo9+nmbjumbo16={clusters}: every cluster "
                f"needs an mbuf; raise nmbufs (or set it to 0, unlimited) first")
    return cur


def set_limits(**limits) -> dict:
    """Change mbuf limits at run time, e.g. set_limits(nmbclusters=1024);
    names with or without the "kern.ipc." prefix, 0 = unlimited.  Raising and
    lowering both work; lowering below what is in use refuses new requests
    until usage falls.  All given values are applied together or, when the
    result would be inconsistent, none (LimitError).  Returns the new set."""
    cur = check_limits(**limits)
    cdef uint64_t lim[MBL_COUNT]
    cdef int rc
    for i, name in enumerate(LIMIT_NAMES):
        lim[i] = cur[name]
    with nogil:
        rc = mbuf_set_limits(lim)
    if rc != 0:
        raise LimitError(f"mbuf limits refused: {cur}")
    return get_limits()


def physmem() -> int:
    """The memory size the default limits derive from (bytes)."""
    return mbuf_physmem()


def default_limits(physmem=None) -> dict:
    """The limits mbuf_init() applies, for a memory size (default: this
    machine's, or a smaller cgroup limit): FreeBSD's tunable_mbinit()."""
    cdef uint64_t lim[MBL_COUNT]
    mbuf_default_limits(mbuf_physmem() if physmem is None else <uint64_t>physmem, lim)
    return {name: lim[i] for i, name in enumerate(LIMIT_NAMES)}


def drain() -> int:
    """Give cached mbufs and clusters back (this thread's caches and the
    zones' lists); bytes unmapped."""
    cdef uint64_t n
    with nogil:
        n = mbuf_drain()
    return n


def discard_fd(int fd) -> int:
    """m_discard_fd: read and drop one frame; its length (0 at end of file)."""
    cdef ssize_t r
    cdef int e
    with nogil:
        r = m_discard_fd(fd)
        e = errno
    if r < 0:
        raise OSError(e, __import__("os").strerror(e))
    return r


# =============================================================================
# Python: the Mbuf handle
# =============================================================================

cdef Mbuf mbuf_wrap(mbuf *m):
    cdef Mbuf h = Mbuf.__new__(Mbuf)
    h.m = m
    return h


cdef mbuf *mbuf_unwrap(Mbuf h) except? NULL:
    cdef mbuf *m = h._chain()
    h.m = NULL
    return m


cdef inline mbuf *_denied_if_null(mbuf *m) except NULL:
    if m == NULL:
        raise MbufDenied("mbuf allocation denied")
    return m


cdef inline int _how_nogil(bint wait) noexcept nogil:
    return M_WAITOK if wait else M_NOWAIT


_KINDS = {"mbuf": 0, "cluster": MCLBYTES, "jumbop": MJUMPAGESIZE, "jumbo9": MJUM9BYTES,
          "jumbo16": MJUM16BYTES}


@cython.freelist(64)
cdef class Mbuf:
    """A chain of mbufs owned by Python.  Every method checks its arguments
    and the handle: a freed handle (after free(), freem(), or after its chain
    was handed to another, as by cat()) raises ValueError; a denied
    allocation raises MbufDenied.  Dropping the handle frees the chain."""

    def __cinit__(self):
        self.m = NULL

    def __dealloc__(self):
        if self.m != NULL:
            m_freem(self.m)
            self.m = NULL

    cdef mbuf *_chain(self) except NULL:
        if self.m == NULL:
            raise ValueError("mbuf chain already freed")
        return self.m

    # --- allocation ---------------------------------------------------------

    @staticmethod
    def get(int type=MT_DATA, bint wait=False) -> Mbuf:
        """m_get: one mbuf, MLEN bytes of internal storage."""
        cdef mbuf *m
        cdef int how = _how_nogil(wait)
        with nogil:             # M_WAITOK may sleep: never with the GIL
            m = m_get(how, type)
        return mbuf_wrap(_denied_if_null(m))

    @staticmethod
    def gethdr(int type=MT_DATA, bint wait=False) -> Mbuf:
        """m_gethdr: one mbuf with a packet header, MHLEN bytes."""
        cdef mbuf *m
        cdef int how = _how_nogil(wait)
        with nogil:
            m = m_gethdr(how, type)
        return mbuf_wrap(_denied_if_null(m))

    @staticmethod
    def getcl(bint pkthdr=True, int type=MT_DATA, bint wait=False) -> Mbuf:
        """m_getcl: an mbuf with a 2k cluster (a Packet-zone pair)."""
        cdef mbuf *m
        cdef int how = _how_nogil(wait)
        cdef int flags = M_PKTHDR if pkthdr else 0
        if not wait:            # the common case: no GIL round trip
            return mbuf_wrap(_denied_if_null(m_getcl(how, type, flags)))
        with nogil:
            m = m_getcl(how, type, flags)
        return mbuf_wrap(_denied_if_null(m))

    @staticmethod
    def getjcl(int size, bint pkthdr=True, int type=MT_DATA, bint wait=False) -> Mbuf:
        """m_getjcl: an mbuf with a cluster of 2048, 4096, 9216 or 16384."""
        cdef mbuf *m
        cdef int how = _how_nogil(wait)
        cdef int flags = M_PKTHDR if pkthdr else 0
        if size not in (MCLBYTES, MJUMPAGESIZE, MJUM9BYTES, MJUM16BYTES):
            raise ValueError(f"no cluster size {size}")
        with nogil:
            m = m_getjcl(how, type, flags, size)
        return mbuf_wrap(_denied_if_null(m))

    @staticmethod
    def devget(const unsigned char[:] data, int leading=0, int rcvif=0) -> Mbuf:
        """m_devget: a packet holding a copy of data (non-empty), with
        `leading` bytes of room in front (0 <= leading < MHLEN)."""
        if data.shape[0] == 0:
            raise ValueError("devget of an empty buffer")
        if not 0 <= leading < MHLEN:
            raise ValueError(f"leading must be in [0, {MHLEN})")
        return mbuf_wrap(_denied_if_null(
            m_devget(<const char *>&data[0], <int>data.shape[0], leading, rcvif)))

    @staticmethod
    def chain(segments, kinds=None, leading=None, bint pkthdr=True) -> Mbuf:
        """A chain with one mbuf per segment (bytes), for tests: kinds[i] is
        "mbuf" (internal storage), "cluster" (a Packet-zone pair), "jumbop",
        "jumbo9" or "jumbo16"; leading[i] bytes of room before the data."""
        segs = [bytes(s) for s in segments]
        if not segs:
            raise ValueError("a chain needs at least one segment")
        kinds = list(kinds) if kinds is not None else ["mbuf" if len(s) <= MHLEN else "cluster"
                                                        for s in segs]
        leading = list(leading) if leading is not None else [0] * len(segs)
        if len(kinds) != len(segs) or len(leading) != len(segs):
            raise ValueError("segments, kinds and leading differ in length")
        cdef mbuf *top = NULL
        cdef mbuf **tail = &top
        cdef mbuf *m
        cdef int flags, size, lead
        cdef bytes s
        for i, s in enumerate(segs):
            if kinds[i] not in _KINDS:
                raise ValueError(f"unknown mbuf kind {kinds[i]!r}")
            size = _KINDS[kinds[i]]
            lead = leading[i]
            flags = M_PKTHDR if (pkthdr and i == 0) else 0
            if size == 0:
                m = m_gethdr(M_NOWAIT, MT_DATA) if flags else m_get(M_NOWAIT, MT_DATA)
            else:
                m = m_getjcl(M_NOWAIT, MT_DATA, flags, size)
            if m == NULL:
                m_freem(top)
                raise MbufDenied("mbuf allocation denied")
            tail[0] = m
            tail = &m.m_next
            if lead < 0 or lead + len(s) > M_SIZE(m):
                m_freem(top)
                raise ValueError(f"segment {i}: {lead}+{len(s)} bytes do not fit "
                                 f"in {M_SIZE(m)} ({kinds[i]})")
            m.m_data += lead
            if len(s):
                memcpy(m.m_data, PyBytes_AS_STRING(s), len(s))
            m.m_len = len(s)
        if pkthdr:
            m_fixhdr(top)
        return mbuf_wrap(top)

    @staticmethod
    def read_fd(int fd, int maxlen=MCLBYTES, int leading=0, int rcvif=0, bint wait=False):
        """m_read_fd: one frame from fd, or None at end of file.  Raises
        BlockingIOError when nothing is there, MbufDenied when no buffer
        could be had (the frame is left queued), OSError otherwise."""
        cdef mbuf *m
        cdef int e
        cdef int how = _how_nogil(wait)
        with nogil:
            m = m_read_fd(fd, maxlen, leading, rcvif, how)
            e = errno
        if m != NULL:
            return mbuf_wrap(m)
        if e == 0:
            return None
        if e == ENOBUFS:
            raise MbufDenied("no buffer for the frame (ENOBUFS)")
        raise OSError(e, __import__("os").strerror(e))

    def writev_fd(self, int fd) -> int:
        """m_writev_fd: write the chain as one frame; bytes written.  The chain
        stays with this handle."""
        cdef mbuf *m = self._chain()
        cdef ssize_t r
        cdef int e
        with nogil:
            r = m_writev_fd(fd, m)
            e = errno
        if r < 0:
            raise OSError(e, __import__("os").strerror(e))
        return r

    def iovec(self, int maxiov=MB_IOV_MAX) -> list:
        """m_to_iovec: [(address, length)] of the non-empty mbufs."""
        cdef mbuf *m = self._chain()
        cdef iovec iov[MB_IOV_MAX]
        if not 0 < maxiov <= MB_IOV_MAX:
            raise ValueError(f"maxiov must be in [1, {MB_IOV_MAX}]")
        cdef int n = m_to_iovec(m, iov, maxiov)
        if n < 0:
            raise OverflowError(f"chain needs more than {maxiov} iovecs")
        return [(<uintptr_t>iov[i].iov_base, iov[i].iov_len) for i in range(n)]

    # --- the API on the chain -------------------------------------------------

    cdef int _range(self, off, length, int total) except -1:
        if off < 0 or length < 0 or off + length > total:
            raise ValueError(f"range [{off}, {off}+{length}) outside the chain of {total} bytes")
        return 0

    cdef int _span(self, mbuf *m, int off, length) except -1:
        """The length of [off, off+length) of chain m -- to its end when length
        is None -- checked to lie inside it."""
        cdef int total = <int>m_length(m, NULL)
        cdef int n = total - off if length is None else length
        self._range(off, n, total)
        return n

    def clget(self) -> Mbuf:
        """m_clget on the first mbuf (which must be empty, without storage)."""
        cdef mbuf *m = self._chain()
        if m.m_flags & M_EXT:
            raise ValueError("the mbuf already has external storage")
        if m.m_len != 0:
            raise ValueError("m_clget on an mbuf holding data")
        if m_clget(m, M_NOWAIT) == 0:
            raise MbufDenied("cluster allocation denied")
        return self

    def copym(self, int off=0, length=None) -> Mbuf:
        """m_copym: a copy of [off, off+length) sharing the clusters."""
        cdef mbuf *m = self._chain()
        cdef int n = self._span(m, off, length)
        if n == 0:
            return Mbuf.get()
        return mbuf_wrap(_denied_if_null(m_copym(m, off, M_COPYALL if length is None else n,
                                                 M_NOWAIT)))

    def copypacket(self) -> Mbuf:
        """m_copypacket: the whole chain, clusters shared."""
        return mbuf_wrap(_denied_if_null(m_copypacket(self._chain(), M_NOWAIT)))

    def dup(self) -> Mbuf:
        """m_dup: a deep, writable copy."""
        return mbuf_wrap(_denied_if_null(m_dup(self._chain(), M_NOWAIT)))

    def prepend(self, data) -> Mbuf:
        """M_PREPEND: room for n bytes in front (data = n, contents left as
        they are) or the given bytes.  On a denied allocation the chain is
        freed (FreeBSD's contract) and MbufDenied raised."""
        cdef mbuf *m = self._chain()
        cdef bytes b = None
        cdef int n
        if isinstance(data, int):
            n = data
        else:
            b = bytes(data)
            n = len(b)
        if not 0 <= n <= MJUM16BYTES:
            raise ValueError(f"prepend of {n} bytes (at most {MJUM16BYTES})")
        self.m = NULL
        m = M_PREPEND(m, n, M_NOWAIT)
        if m == NULL:
            raise MbufDenied("M_PREPEND: allocation denied, chain freed")
        self.m = m
        if b is not None and n:
            m_copyback(m, 0, n, PyBytes_AS_STRING(b))
        return self

    def pullup(self, int n) -> Mbuf:
        """m_pullup: make the first n bytes (n <= MCLBYTES) contiguous in the
        first mbuf.  On a denied allocation the chain is freed and
        MbufDenied raised."""
        cdef mbuf *m = self._chain()
        cdef int total = <int>m_length(m, NULL)
        if not 0 <= n <= MCLBYTES or n > total:
            raise ValueError(f"pullup of {n} bytes (chain {total}, at most {MCLBYTES})")
        self.m = NULL
        m = m_pullup(m, n)
        if m == NULL:
            raise MbufDenied("m_pullup: allocation denied, chain freed")
        self.m = m
        return self

    def adj(self, int n) -> Mbuf:
        """m_adj: trim n bytes from the head, or -n from the tail."""
        m_adj(self._chain(), n)
        return self

    def cat(self, Mbuf other not None) -> Mbuf:
        """m_cat (m_catpkt with packet headers): other's chain is appended
        and the other handle is freed."""
        cdef mbuf *m = self._chain()
        cdef mbuf *n
        if other is self:
            raise ValueError("cannot cat a chain to itself")
        n = mbuf_unwrap(other)
        if (m.m_flags & M_PKTHDR) and (n.m_flags & M_PKTHDR):
            m_catpkt(m, n)
        else:
            if n.m_flags & M_PKTHDR:
                m_demote_pkthdr(n)
            m_cat(m, n)
            if m.m_flags & M_PKTHDR:
                m_fixhdr(m)
        return self

    def split(self, int off) -> Mbuf:
        """m_split: keep [0, off), return a new handle for the rest."""
        cdef mbuf *m = self._chain()
        cdef int total = <int>m_length(m, NULL)
        cdef mbuf *n
        self._range(off, 0, total)
        n = m_split(m, off, M_NOWAIT)
        if n == NULL:
            if not (m.m_flags & M_PKTHDR) and off == total:
                return Mbuf.get()
            raise MbufDenied("m_split: allocation denied")
        return mbuf_wrap(n)

    def defrag(self) -> Mbuf:
        """m_defrag: the data copied into as few mbufs as possible."""
        cdef mbuf *n = _denied_if_null(m_defrag(self._chain(), M_NOWAIT))
        self.m = n
        return self

    def collapse(self, int maxfrags) -> bool:
        """m_collapse: at most maxfrags mbufs; False when it could not be
        done (the chain is still valid)."""
        if maxfrags < 1:
            raise ValueError("maxfrags must be >= 1")
        return m_collapse(self._chain(), M_NOWAIT, maxfrags) != NULL

    def copydata(self, int off=0, length=None) -> bytes:
        """m_copydata: the bytes [off, off+length)."""
        cdef mbuf *m = self._chain()
        cdef int n = self._span(m, off, length)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        if n:
            m_copydata(m, off, n, PyBytes_AS_STRING(out))
        return out

    def copyback(self, int off, data) -> Mbuf:
        """m_copyback: write data at off, extending the chain as needed
        (a gap is zero-filled); shared clusters are copied first."""
        cdef mbuf *m = self._chain()
        cdef bytes b = bytes(data)
        if off < 0 or off + len(b) > 2**30:
            raise ValueError(f"copyback at {off} of {len(b)} bytes")
        if m_copyback(m, off, len(b), PyBytes_AS_STRING(b)) != 0:
            raise MbufDenied("m_copyback: allocation denied (chain unchanged)")
        return self

    def append(self, data) -> Mbuf:
        """m_append: add data at the end."""
        cdef mbuf *m = self._chain()
        cdef bytes b = bytes(data)
        if m_length(m, NULL) + len(b) > 2**30:
            raise ValueError("chain would exceed 1 GiB")
        if m_append(m, len(b), PyBytes_AS_STRING(b)) == 0:
            raise MbufDenied("m_append: allocation denied (chain unchanged)")
        return self

    def makewritable(self, int off=0, length=None) -> Mbuf:
        """m_makewritable: private storage for every mbuf of the range."""
        cdef mbuf *m = self._chain()
        cdef int n = self._span(m, off, length)
        if m_makewritable(m, off, n, M_NOWAIT) != 0:
            raise MbufDenied("m_makewritable: allocation denied")
        return self

    def fixhdr(self) -> int:
        """m_fixhdr: set pkthdr.len to the chain length; that length."""
        return m_fixhdr(self._chain())

    def free(self):
        """m_free of the first mbuf: the handle moves on to the rest of the
        chain (and is freed if there is none).  True if mbufs remain."""
        cdef mbuf *m = self._chain()
        self.m = m_free(m)
        return self.m != NULL

    def freem(self):
        """m_freem: free the whole chain."""
        cdef mbuf *m = self._chain()
        self.m = NULL
        m_freem(m)

    # --- inspection ---------------------------------------------------------------

    @property
    def freed(self) -> bool:
        return self.m == NULL

    @property
    def length(self) -> int:
        """m_length: bytes in the chain."""
        return m_length(self._chain(), NULL)

    def __len__(self):
        return m_length(self._chain(), NULL)

    def __bytes__(self):
        return self.copydata()

    @property
    def pkthdr_len(self):
        """m_pkthdr.len, or None without a packet header."""
        cdef mbuf *m = self._chain()
        return m.m_pkthdr.len if m.m_flags & M_PKTHDR else None

    @property
    def rcvif(self):
        cdef mbuf *m = self._chain()
        return m.m_pkthdr.rcvif if m.m_flags & M_PKTHDR else None

    @property
    def flags(self) -> int:
        return self._chain().m_flags

    @property
    def nmbufs(self) -> int:
        return m_count(self._chain())

    def lengths(self) -> list:
        """m_len of every mbuf."""
        cdef mbuf *m = self._chain()
        out = []
        while m != NULL:
            out.append(m.m_len)
            m = m.m_next
        return out

    def segments(self) -> list:
        """The data of every mbuf, as bytes."""
        cdef mbuf *m = self._chain()
        out = []
        while m != NULL:
            out.append(PyBytes_FromStringAndSize(m.m_data, m.m_len))
            m = m.m_next
        return out

    def cluster_refcounts(self) -> list:
        """Per mbuf: its cluster's reference count, None for internal data."""
        cdef mbuf *m = self._chain()
        out = []
        while m != NULL:
            out.append(uma_refcnt_get(m.m_ext.ext_cnt) if m.m_flags & M_EXT else None)
            m = m.m_next
        return out

    def cluster_addresses(self) -> list:
        """Per mbuf: its cluster's address, None for internal data."""
        cdef mbuf *m = self._chain()
        out = []
        while m != NULL:
            out.append(<uintptr_t>m.m_ext.ext_buf if m.m_flags & M_EXT else None)
            m = m.m_next
        return out

    def layout(self) -> list:
        """Per mbuf: a dict of len, flags, storage kind and size, leading and
        trailing space, refcount, writable."""
        cdef mbuf *m = self._chain()
        out = []
        while m != NULL:
            ext = bool(m.m_flags & M_EXT)
            out.append({
                "len": m.m_len, "flags": m.m_flags, "pkthdr": bool(m.m_flags & M_PKTHDR),
                "ext_type": m.m_ext.ext_type if ext else 0, "size": M_SIZE(m),
                "leading": <int>(m.m_data - M_START(m)),
                "trailing": <int>((M_START(m) + M_SIZE(m)) - (m.m_data + m.m_len)),
                "refcnt": m_refcnt(m), "writable": M_WRITABLE(m),
            })
            m = m.m_next
        return out

    def __repr__(self):
        if self.m == NULL:
            return "<Mbuf freed>"
        return f"<Mbuf {m_count(self.m)} mbufs, {m_length(self.m, NULL)} bytes>"
