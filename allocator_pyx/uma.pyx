# cython: language_level=3
"""UMA: a slab allocator with kegs, zones and per-thread caches.

How the pieces stack (FreeBSD's uma_core.c after the mbuma change):

    thread A cache   thread B cache        per-thread: alloc + free bucket per zone,
      [alloc][free]    [alloc][free]       no lock on the fast path
            \\            /
             zone "x"  ---  zone "y" (secondary, own zinit/zfini)
        full/empty bucket lists, ctor/dtor, limit, stats   (zone lock)
                    \\        /
                       keg                 slab lists part/free/full, limit,
                        |                  keg init/fini           (keg lock)
              slab  slab  slab             aligned mmap() blocks, header first:
                                           free-index stack [+ refcounts]

Lock order: uma_global_lock (zone table, thread list) -> zone lock -> keg lock.
A zone's zinit/zfini may allocate from or free to *another* zone while this
zone's lock is held (the Packet zone attaches clusters that way); so a zone
must never be stacked, through its hooks, on a zone that calls back into it.

Caches work as Bonwick's magazines: allocations pop from and frees push to
the alloc ("loaded") bucket, so an item freed is the next one handed out while
it is still in the CPU cache; the free bucket is the spare that is swapped in
when the loaded one runs empty or full, and only when both are empty (full)
is a bucket exchanged with the zone under its lock.

Bucket sizing.  A new bucket holds clamp(256 KiB / item size, 16, 256)
entries: 256 mbufs, 128 clusters, 64 page-size jumbos, 28 9k and 16 16k
jumbos.  Two buckets per thread per zone bound what one thread can sit on to
about 512 KiB of items per zone, while a bucket exchange (one lock round trip)
is amortised over at least 16 items.  A zone with a limit shrinks its new
buckets to limit/16 (at least 1), so that the items parked in one thread's
cache stay a small part of the limit.

Limits.  A zone limit caps uz_items: the items taken out of the keg for the
zone, in use *or* cached (FreeBSD's uz_items).  At the cap a M_NOWAIT request
fails (uz_fails, netstat's "denied"); a M_WAITOK request sleeps (uz_sleeps,
"delayed") in 10 ms slices until an item comes back or its timeout passes.
While a zone is at its limit (or above a freshly lowered one), or has
sleepers, it is "slow": allocations and frees bypass the per-thread caches
and go to the keg item by item, so every free is seen by the sleepers at once
and usage falls as items come back.  Speed at the cap is traded for that.
Deliberate races: uz_slow is read without the lock on the fast path, so a free
that races with a sleeper's arrival may still land in a cache; the sleeper's
10 ms slices bound that.  Items parked in *another* thread's cache are not
stolen at the cap (as in FreeBSD): that thread hands them back on its next
slow-path call, when it exits, or on uma_thread_flush().  Above the cap (a
lowered limit) they are trimmed; see below.

Trimming after a limit is lowered.  A limit is a memory bound: once it is
lowered, the items out for the zone -- in use plus cached, uz_items -- must
come down to it, the cached ones at once, those in use as they are freed.
The thread that lowers it trims what it may touch: its own buckets and the
zone's lists (zone_trim: full buckets to the keg while the zone is over its
limit, and every bucket larger than the zone's new bucket size emptied and
freed), then the keg's empty slabs go back to the OS (keg_drain).  Another
thread's buckets belong to that thread, whose fast path takes no lock, so
nobody else may empty them.  FreeBSD binds itself to each CPU in turn to
drain the CPUs' caches (pcpu_cache_drain_safe); here the owner is asked
instead: lowering bumps uma_trim_gen, and a long-lived thread calls
uma_thread_trim() once per wake-up (the forwarding loop does, and wakes at
least every 50 ms): a TLS load and an acquire load when nothing changed;
when the generation moved, the thread's buckets of every zone over its limit
(or larger than the zone's buckets now are) go to the keg and are freed, the
zones' lists are trimmed and the kegs' empty slabs unmapped.  A thread that
exits while a zone is over its limit leaves its buckets on the zone's lists
and bumps the generation, so that the next trimmer (or any slow-path call on
the zone) returns them.  A free while a zone is over its limit goes straight
to the keg (the zone is slow), never to a cache, so once trimmed the zone
stays at or under its limit.

Deliberate races in the trim, each bounded by the owner's next wake-up: the
fast path reads uz_slow without the lock, so a free racing with the lowering
may still land in the owner's cache after the lowering thread trimmed; the
generation is bumped after the zone lock that published the limit and
uz_slow is released, and read with acquire, so the owner's trim -- and every
fast path after it -- sees the zone slow and that item is returned with the
rest.  A thread that never calls uma_thread_trim keeps its buckets until its
next slow-path call on the zone (every call is one while the zone is over its
limit) or its exit; in the router the forwarding loop is the only long-lived
thread that allocates.

Statistics.  USED is the allocations minus the frees, summed over the zone
and every thread's counters without their owners' cooperation, so a snapshot
taken while they run may be a few items off; it is clamped to uz_items (read
under the zone lock, exact), and FREE is uz_items - USED plus what the keg may
still hand the zone (see uma_zone_stats).  USED + FREE is therefore exact
whatever the skew, and never above the limit unless more is in use than a
freshly lowered limit allows (then FREE is 0).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset, strncpy
from posix.mman cimport (MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ,
                         PROT_WRITE, mmap, munmap)
from posix.time cimport CLOCK_MONOTONIC, timespec

from allocator_pyx.includes cimport (likely, now_ns, pthread_cond_broadcast, pthread_cond_destroy,
                                     pthread_cond_init, pthread_cond_timedwait, pthread_condattr_init,
                                     pthread_condattr_setclock, pthread_condattr_t, pthread_key_create,
                                     pthread_key_t, pthread_mutex_destroy, pthread_mutex_init,
                                     pthread_mutex_lock, pthread_mutex_unlock, pthread_setspecific,
                                     unlikely)

cimport cython

cdef extern from *:
    """
    /* The calling thread's UMA record: one TLS load on the fast path.
       initial-exec: a direct %fs-relative load instead of a call to
       __tls_get_addr (the module is dlopen()ed; glibc keeps static TLS
       room for a few such variables). */
    static __thread void *uma_tls __attribute__((tls_model("initial-exec"))) = NULL;
    static inline void uma_atomic_add64(uint64_t *p, int64_t v)
    { __atomic_add_fetch(p, (uint64_t)v, __ATOMIC_RELAXED); }
    static inline uint64_t uma_atomic_load64(uint64_t *p)
    { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void uma_atomic_inc_release64(uint64_t *p)
    { __atomic_add_fetch(p, 1, __ATOMIC_RELEASE); }
    static inline uint64_t uma_atomic_load_acquire64(uint64_t *p)
    { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    """
    void *uma_tls
    void uma_atomic_add64(uint64_t *p, int64_t v) nogil
    uint64_t uma_atomic_load64(uint64_t *p) nogil
    void uma_atomic_inc_release64(uint64_t *p) nogil
    uint64_t uma_atomic_load_acquire64(uint64_t *p) nogil

# --- per-thread caches ----------------------------------------------------------

cdef struct uma_cache:
    uma_bucket *uc_allocbucket
    uma_bucket *uc_freebucket
    uint64_t uc_allocs
    uint64_t uc_frees

cdef struct uma_thread_s:
    uma_thread_s *ut_next
    uma_thread_s *ut_prev
    uint64_t ut_trim_gen        # uma_trim_gen when the thread last trimmed
    uma_cache ut_cache[UMA_MAX_ZONES]

ctypedef uma_thread_s uma_thread

cdef enum:
    SLAB_FREE = 0
    SLAB_PART = 1
    SLAB_FULL = 2
    UMA_SLEEP_SLICE_NS = 10000000      # 10 ms
    UMA_BUCKET_BYTES = 262144          # item bytes per bucket, see the module doc
    UMA_BUCKET_MIN = 16
    UMA_ITEM_ALIGN = 64

cdef pthread_mutex_t uma_global_lock
cdef pthread_key_t uma_thread_key
cdef uma_zone *uma_zones[UMA_MAX_ZONES]
cdef uma_thread *uma_threads = NULL
cdef uint64_t uma_mapped = 0           # bytes of slabs mapped, all kegs
cdef uint64_t uma_trim_gen = 0         # bumped when caches must be trimmed (module doc)


cdef inline void lock(pthread_mutex_t *m) noexcept nogil:
    pthread_mutex_lock(m)


cdef inline void unlock(pthread_mutex_t *m) noexcept nogil:
    pthread_mutex_unlock(m)


# =============================================================================
# slab layer
# =============================================================================

cdef void *slab_map(size_t size) noexcept nogil:
    """mmap() `size` bytes aligned to `size` (a power of two)."""
    cdef char *p = <char *>mmap(NULL, 2 * size, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if <void *>p == MAP_FAILED:
        return NULL
    cdef uintptr_t a = (<uintptr_t>p + size - 1) & ~(<uintptr_t>size - 1)
    cdef size_t head = a - <uintptr_t>p
    if head:
        munmap(p, head)
    if size - head:
        munmap(<char *>a + size, size - head)
    return <void *>a


cdef uma_slab *slab_of(uma_keg *keg, void *item) noexcept nogil:
    return <uma_slab *>(<uintptr_t>item & keg.uk_slabmask)


cdef inline uint32_t slab_index(uma_keg *keg, uma_slab *slab, void *item) noexcept nogil:
    return <uint32_t>((<char *>item - slab.us_data) / keg.uk_rsize)


cdef void slab_unlink(uma_keg *keg, uma_slab *slab) noexcept nogil:
    if slab.us_prev != NULL:
        slab.us_prev.us_next = slab.us_next
    elif slab.us_list == SLAB_FREE:
        keg.uk_free_slab = slab.us_next
    elif slab.us_list == SLAB_PART:
        keg.uk_part_slab = slab.us_next
    else:
        keg.uk_full_slab = slab.us_next
    if slab.us_next != NULL:
        slab.us_next.us_prev = slab.us_prev
    slab.us_next = slab.us_prev = NULL


cdef void slab_link(uma_keg *keg, uma_slab *slab, uint32_t which) noexcept nogil:
    cdef uma_slab **head
    if which == SLAB_FREE:
        head = &keg.uk_free_slab
    elif which == SLAB_PART:
        head = &keg.uk_part_slab
    else:
        head = &keg.uk_full_slab
    slab.us_list = which
    slab.us_prev = NULL
    slab.us_next = head[0]
    if head[0] != NULL:
        head[0].us_prev = slab
    head[0] = slab


cdef inline void slab_relink(uma_keg *keg, uma_slab *slab) noexcept nogil:
    cdef uint32_t which
    if slab.us_freecount == 0:
        which = SLAB_FULL
    elif slab.us_freecount == keg.uk_ipers:
        which = SLAB_FREE
    else:
        which = SLAB_PART
    if which != slab.us_list:
        slab_unlink(keg, slab)
        slab_link(keg, slab, which)


# =============================================================================
# keg layer
# =============================================================================

cdef int keg_layout(uma_keg *keg) noexcept nogil:
    """Choose the slab size: the smallest power of two >= 64 KiB wasting
    at most 1/16 of the slab (header included in the waste)."""
    cdef size_t slabsize = 65536, hdr, per_item_hdr, waste
    cdef uint32_t ipers
    per_item_hdr = sizeof(uint16_t) + (sizeof(uint32_t) if keg.uk_flags & UMA_ZONE_REFCNT else 0)
    while slabsize <= 4 * 1024 * 1024:
        ipers = <uint32_t>((slabsize - sizeof(uma_slab)) / (keg.uk_rsize + per_item_hdr))
        if ipers > 65535:
            ipers = 65535
        hdr = (sizeof(uma_slab) + ipers * per_item_hdr + UMA_ITEM_ALIGN - 1) & ~(<size_t>UMA_ITEM_ALIGN - 1)
        while ipers > 0 and hdr + <size_t>ipers * keg.uk_rsize > slabsize:
            ipers -= 1
        waste = slabsize - <size_t>ipers * keg.uk_rsize
        if ipers > 0 and waste * 16 <= slabsize:
            break
        slabsize *= 2
    if ipers == 0:
        return -1
    keg.uk_slabsize = slabsize
    keg.uk_slabmask = ~(<uintptr_t>slabsize - 1)
    keg.uk_hdrsize = hdr
    keg.uk_ipers = ipers
    return 0


cdef uma_keg *keg_create(const char *name, size_t size, uma_init init, uma_fini fini,
                         uint32_t flags) noexcept nogil:
    cdef uma_keg *keg = <uma_keg *>calloc(1, sizeof(uma_keg))
    if keg == NULL:
        return NULL
    strncpy(keg.uk_name, name, UMA_NAME_LEN - 1)
    keg.uk_size = <uint32_t>size
    if size >= UMA_ITEM_ALIGN:
        keg.uk_rsize = <uint32_t>((size + UMA_ITEM_ALIGN - 1) & ~(<size_t>UMA_ITEM_ALIGN - 1))
    else:
        keg.uk_rsize = <uint32_t>((size + 15) & ~(<size_t>15))
    keg.uk_flags = flags & UMA_ZONE_REFCNT
    keg.uk_init = init
    keg.uk_fini = fini
    if keg_layout(keg) != 0:
        free(keg)
        return NULL
    pthread_mutex_init(&keg.uk_lock, NULL)
    return keg


cdef uma_slab *keg_alloc_slab(uma_keg *keg, int flags) noexcept nogil:
    """A new slab from the OS, every item run through the keg's init."""
    cdef char *mem = <char *>slab_map(keg.uk_slabsize)
    cdef uma_slab *slab
    cdef uint32_t i, j
    if mem == NULL:
        return NULL
    slab = <uma_slab *>mem
    slab.us_keg = keg
    slab.us_data = mem + keg.uk_hdrsize
    slab.us_free = <uint16_t *>(mem + sizeof(uma_slab))
    if keg.uk_flags & UMA_ZONE_REFCNT:
        slab.us_refcnt = <uint32_t *>(slab.us_free + keg.uk_ipers)
    else:
        slab.us_refcnt = NULL
    slab.us_freecount = keg.uk_ipers
    for i in range(keg.uk_ipers):
        slab.us_free[i] = <uint16_t>(keg.uk_ipers - 1 - i)   # pop ascending
    if keg.uk_init != NULL:
        for i in range(keg.uk_ipers):
            if keg.uk_init(slab.us_data + <size_t>i * keg.uk_rsize, keg.uk_size, flags) != 0:
                if keg.uk_fini != NULL:
                    for j in range(i):
                        keg.uk_fini(slab.us_data + <size_t>j * keg.uk_rsize, keg.uk_size)
                munmap(mem, keg.uk_slabsize)
                return NULL
    slab_link(keg, slab, SLAB_FREE)
    keg.uk_nslabs += 1
    keg.uk_free += keg.uk_ipers
    uma_atomic_add64(&uma_mapped, <int64_t>keg.uk_slabsize)
    return slab


cdef inline uint64_t keg_items_out(uma_keg *keg) noexcept nogil:
    return keg.uk_nslabs * keg.uk_ipers - keg.uk_free


cdef uint32_t keg_fetch(uma_keg *keg, void **out, uint32_t n, int flags) noexcept nogil:
    """Take up to n items out of the keg's slabs (keg lock held), within the
    keg limit; partial slabs first so that free slabs can be drained."""
    cdef uint32_t got = 0
    cdef uint64_t outn
    cdef uma_slab *slab
    if keg.uk_limit:
        outn = keg_items_out(keg)
        if outn >= keg.uk_limit:
            return 0
        if n > keg.uk_limit - outn:
            n = <uint32_t>(keg.uk_limit - outn)
    while got < n:
        slab = keg.uk_part_slab
        if slab == NULL:
            slab = keg.uk_free_slab
        if slab == NULL:
            slab = keg_alloc_slab(keg, flags)
            if slab == NULL:
                break
        while got < n and slab.us_freecount > 0:
            slab.us_freecount -= 1
            out[got] = slab.us_data + <size_t>slab.us_free[slab.us_freecount] * keg.uk_rsize
            got += 1
            keg.uk_free -= 1
        slab_relink(keg, slab)
    return got


cdef void keg_release(uma_keg *keg, void *item) noexcept nogil:
    """Put one item back in its slab (keg lock held)."""
    cdef uma_slab *slab = slab_of(keg, item)
    slab.us_free[slab.us_freecount] = <uint16_t>slab_index(keg, slab, item)
    slab.us_freecount += 1
    keg.uk_free += 1
    slab_relink(keg, slab)


cdef uint64_t keg_drain(uma_keg *keg) noexcept nogil:
    """Unmap every slab with no item out (keg lock held); bytes returned."""
    cdef uma_slab *slab
    cdef uint64_t freed = 0
    cdef uint32_t i
    while keg.uk_free_slab != NULL:
        slab = keg.uk_free_slab
        slab_unlink(keg, slab)
        if keg.uk_fini != NULL:
            for i in range(keg.uk_ipers):
                keg.uk_fini(slab.us_data + <size_t>i * keg.uk_rsize, keg.uk_size)
        keg.uk_nslabs -= 1
        keg.uk_free -= keg.uk_ipers
        munmap(<void *>slab, keg.uk_slabsize)
        freed += keg.uk_slabsize
    uma_atomic_add64(&uma_mapped, -<int64_t>freed)
    return freed


cdef bint keg_owns(uma_keg *keg, void *item) noexcept nogil:
    """Whether item is an item boundary inside one of keg's slabs (walks the
    slab lists under the keg lock: for tools and tests, not hot paths)."""
    cdef uma_slab *want = slab_of(keg, item)
    cdef uma_slab *s
    cdef uma_slab *heads[3]
    cdef int k
    cdef bint found = False
    lock(&keg.uk_lock)
    heads[0] = keg.uk_free_slab
    heads[1] = keg.uk_part_slab
    heads[2] = keg.uk_full_slab
    for k in range(3):
        s = heads[k]
        while s != NULL and not found:
            if s == want:
                found = (<char *>item >= s.us_data and
                         (<char *>item - s.us_data) % keg.uk_rsize == 0 and
                         slab_index(keg, s, item) < keg.uk_ipers)
            s = s.us_next
    unlock(&keg.uk_lock)
    return found


cdef void keg_destroy(uma_keg *keg) noexcept nogil:
    """Unmap every slab.  Slabs still holding items (leaked by a caller)
    are unmapped too: the keg is going away."""
    cdef uma_slab *slab
    cdef uma_slab *nxt
    cdef int k
    lock(&keg.uk_lock)
    keg_drain(keg)
    for k in range(2):
        slab = keg.uk_part_slab if k == 0 else keg.uk_full_slab
        while slab != NULL:
            nxt = slab.us_next
            munmap(<void *>slab, keg.uk_slabsize)
            uma_atomic_add64(&uma_mapped, -<int64_t>keg.uk_slabsize)
            slab = nxt
    unlock(&keg.uk_lock)
    pthread_mutex_destroy(&keg.uk_lock)
    free(keg)


# =============================================================================
# bucket layer
# =============================================================================

cdef uma_bucket *bucket_alloc(int entries) noexcept nogil:
    cdef uma_bucket *b = <uma_bucket *>malloc(sizeof(uma_bucket))
    if b != NULL:
        b.ub_next = NULL
        b.ub_cnt = 0
        b.ub_entries = entries
    return b


cdef inline void bucket_push(uma_bucket **head, uma_bucket *b) noexcept nogil:
    b.ub_next = head[0]
    head[0] = b


cdef inline uma_bucket *bucket_pop(uma_bucket **head) noexcept nogil:
    cdef uma_bucket *b = head[0]
    if b != NULL:
        head[0] = b.ub_next
        b.ub_next = NULL
    return b


# =============================================================================
# zone layer
# =============================================================================

cdef inline void zone_update_slow(uma_zone *zone) noexcept nogil:
    """Recompute whether the caches are bypassed (zone lock held)."""
    cdef uma_keg *keg = zone.uz_keg
    zone.uz_slow = (zone.uz_sleepers > 0 or
                    (zone.uz_limit != 0 and zone.uz_items >= zone.uz_limit) or
                    (keg.uk_limit != 0 and keg_items_out(keg) >= keg.uk_limit))


cdef inline void zone_update_bucket_size(uma_zone *zone) noexcept nogil:
    cdef uint64_t bs = zone.uz_bucket_max
    if zone.uz_limit and zone.uz_limit / 16 < bs:
        bs = zone.uz_limit / 16
    if keg_limit_of(zone) and keg_limit_of(zone) / 16 < bs:
        bs = keg_limit_of(zone) / 16
    zone.uz_bucket_size = <int>(bs if bs > 0 else 1)


cdef inline uint64_t keg_limit_of(uma_zone *zone) noexcept nogil:
    return zone.uz_keg.uk_limit


cdef void zone_release(uma_zone *zone, void **items, int n) noexcept nogil:
    """Items leave the zone for the keg (zone lock held): zfini, then the
    keg.  The caller accounts uz_items."""
    cdef int i
    cdef uma_keg *keg = zone.uz_keg
    if zone.uz_fini != NULL:
        for i in range(n):
            zone.uz_fini(items[i], zone.uz_size)
    lock(&keg.uk_lock)
    for i in range(n):
        keg_release(keg, items[i])
    unlock(&keg.uk_lock)
    zone.uz_items -= n
    zone_update_slow(zone)


cdef int zone_import(uma_zone *zone, void **out, int n, int flags) noexcept nogil:
    """Items enter the zone from the keg (zone lock held), within the zone
    limit; zinit runs on each; items whose zinit fails go back."""
    cdef uma_keg *keg = zone.uz_keg
    cdef int got, i, kept = 0
    if zone.uz_limit:
        if zone.uz_items >= zone.uz_limit:
            return 0
        if <uint64_t>n > zone.uz_limit - zone.uz_items:
            n = <int>(zone.uz_limit - zone.uz_items)
    lock(&keg.uk_lock)
    got = <int>keg_fetch(keg, out, <uint32_t>n, flags)
    unlock(&keg.uk_lock)
    zone.uz_items += got
    zone_update_slow(zone)
    if zone.uz_init == NULL:
        return got
    for i in range(got):
        if zone.uz_init(out[i], zone.uz_size, flags) == 0:
            out[kept] = out[i]
            kept += 1
        else:
            lock(&keg.uk_lock)
            keg_release(keg, out[i])
            unlock(&keg.uk_lock)
            zone.uz_items -= 1
    zone_update_slow(zone)
    return kept


cdef void zone_drain_buckets(uma_zone *zone) noexcept nogil:
    """Every full bucket's items back to the keg; empty buckets freed
    (zone lock held)."""
    cdef uma_bucket *b
    while zone.uz_full_bucket != NULL:
        b = bucket_pop(&zone.uz_full_bucket)
        zone.uz_nfull_items -= b.ub_cnt
        zone_release(zone, b.ub_bucket, b.ub_cnt)
        free(b)
    while zone.uz_empty_bucket != NULL:
        free(bucket_pop(&zone.uz_empty_bucket))


cdef inline bint zone_over_limit(uma_zone *zone) noexcept nogil:
    """More items out for the zone than its limit allows, or out of its keg
    than the keg's (zone lock held; the keg's count is read without the keg
    lock, as zone_update_slow reads it)."""
    cdef uma_keg *keg = zone.uz_keg
    return ((zone.uz_limit != 0 and zone.uz_items > zone.uz_limit) or
            (keg.uk_limit != 0 and keg_items_out(keg) > keg.uk_limit))


cdef void zone_trim(uma_zone *zone) noexcept nogil:
    """The zone's own cache after a limit was lowered (zone lock held): full
    buckets go to the keg while the zone is over its limit, and a bucket
    larger than the zone's buckets now are is emptied to the keg and freed
    (it would let one cache hold more than the limit means it to)."""
    cdef uma_bucket **pp
    cdef uma_bucket *b
    cdef int k
    for k in range(2):
        pp = &zone.uz_full_bucket if k == 0 else &zone.uz_empty_bucket
        while pp[0] != NULL:
            b = pp[0]
            if b.ub_entries > zone.uz_bucket_size or (b.ub_cnt > 0 and zone_over_limit(zone)):
                pp[0] = b.ub_next
                if b.ub_cnt > 0:
                    zone.uz_nfull_items -= b.ub_cnt
                    zone_release(zone, b.ub_bucket, b.ub_cnt)
                free(b)
            else:
                pp = &b.ub_next


cdef void zone_take_bucket(uma_zone *zone, uma_bucket *b) noexcept nogil:
    """A bucket from a cache goes to the zone lists (zone lock held)."""
    if b.ub_cnt > 0:
        zone.uz_nfull_items += b.ub_cnt
        bucket_push(&zone.uz_full_bucket, b)
    else:
        bucket_push(&zone.uz_empty_bucket, b)


cdef inline void *zone_ctor(uma_zone *zone, void *item, void *arg, int flags) noexcept nogil:
    if flags & M_ZERO:
        memset(item, 0, zone.uz_size)
    if zone.uz_ctor != NULL and zone.uz_ctor(item, zone.uz_size, arg, flags) != 0:
        zone_free_item(zone, item, NULL, False)
        return NULL
    return item


cdef void *zone_alloc_item(uma_zone *zone, void *arg, int flags, int64_t timeout_ns) noexcept nogil:
    """One item under the zone lock, bypassing the caches: the limit path.
    Waits (M_WAITOK) in slices for an item to come back."""
    cdef void *item = NULL
    cdef uma_bucket *b
    cdef uma_cache *c
    cdef int64_t deadline = 0, now, slice_ns
    cdef timespec ts
    cdef bint slept = False
    if timeout_ns > 0:
        deadline = now_ns() + timeout_ns
    c = cache_lookup(zone)          # may register the thread: before the zone lock
    lock(&zone.uz_lock)
    if zone.uz_slow:
        if c != NULL:
            cache_flush_to_keg(zone, c)
        if zone.uz_full_bucket != NULL and zone_over_limit(zone):
            zone_trim(zone)
    while True:
        if zone.uz_full_bucket != NULL and not (zone.uz_limit and zone.uz_items > zone.uz_limit):
            b = zone.uz_full_bucket
            b.ub_cnt -= 1
            item = b.ub_bucket[b.ub_cnt]
            zone.uz_nfull_items -= 1
            if b.ub_cnt == 0:
                bucket_pop(&zone.uz_full_bucket)
                bucket_push(&zone.uz_empty_bucket, b)
            break
        if zone_import(zone, &item, 1, flags) == 1:
            break
        item = NULL
        if not (flags & M_WAITOK):
            zone.uz_fails += 1
            break
        if not slept:
            zone.uz_sleeps += 1
            slept = True
        now = now_ns()
        if deadline and now >= deadline:
            zone.uz_fails += 1
            break
        slice_ns = UMA_SLEEP_SLICE_NS
        if deadline and deadline - now < slice_ns:
            slice_ns = deadline - now
        now += slice_ns
        ts.tv_sec = now // 1000000000
        ts.tv_nsec = now % 1000000000
        zone.uz_sleepers += 1
        zone_update_slow(zone)
        pthread_cond_timedwait(&zone.uz_cv, &zone.uz_lock, &ts)
        zone.uz_sleepers -= 1
        zone_update_slow(zone)
    if item != NULL:
        zone.uz_allocs += 1
    unlock(&zone.uz_lock)
    if item == NULL:
        return NULL
    return zone_ctor(zone, item, arg, flags)


cdef void zone_free_item(uma_zone *zone, void *item, void *arg, bint dtor) noexcept nogil:
    """One item straight back to the keg, waking sleepers: the limit path."""
    cdef uma_cache *c
    if dtor and zone.uz_dtor != NULL:
        zone.uz_dtor(item, zone.uz_size, arg)
    c = cache_lookup(zone)          # may register the thread: before the zone lock
    lock(&zone.uz_lock)
    if zone.uz_slow:
        if c != NULL:
            cache_flush_to_keg(zone, c)
        if zone.uz_full_bucket != NULL and zone_over_limit(zone):
            zone_trim(zone)
    zone_release(zone, &item, 1)
    zone.uz_frees += 1
    zone_update_slow(zone)
    if zone.uz_sleepers:
        pthread_cond_broadcast(&zone.uz_cv)
    unlock(&zone.uz_lock)
    if zone.uz_keg.uk_limit:
        keg_wake_zones(zone.uz_keg)


cdef void keg_wake_zones(uma_keg *keg) noexcept nogil:
    """A keg item came back under a keg limit: wake sleepers of every zone
    on the keg.  Unlocked peek at uz_sleepers; the sleep slices cover a miss."""
    cdef int i
    cdef uma_zone *z
    for i in range(UMA_MAX_ZONES):
        z = uma_zones[i]
        if z != NULL and z.uz_keg == keg and z.uz_sleepers:
            pthread_cond_broadcast(&z.uz_cv)


# =============================================================================
# cache layer (per thread)
# =============================================================================

cdef uma_thread *thread_register() noexcept nogil:
    cdef uma_thread *t = <uma_thread *>calloc(1, sizeof(uma_thread))
    global uma_threads, uma_tls
    if t == NULL:
        return NULL
    t.ut_trim_gen = uma_atomic_load_acquire64(&uma_trim_gen)
    lock(&uma_global_lock)
    t.ut_next = uma_threads
    if uma_threads != NULL:
        uma_threads.ut_prev = t
    uma_threads = t
    unlock(&uma_global_lock)
    pthread_setspecific(uma_thread_key, t)
    uma_tls = t
    return t


cdef void thread_dtor(void *arg) noexcept nogil:
    """Thread exit: the thread's buckets go to their zones' lists (no zfini
    runs, so a Packet item keeps its cluster), its counters to the zones.
    Nothing goes to a keg here: a zfini freeing into another zone would
    register this exiting thread anew, under the global lock.  So a zone left
    over its limit (or holding buckets larger than its own) is handed to the
    next trimmer instead (cache_trim_request)."""
    cdef uma_thread *t = <uma_thread *>arg
    cdef uma_zone *z
    cdef uma_cache *c
    cdef int i
    cdef bint trim = False
    global uma_threads, uma_tls
    uma_tls = NULL
    lock(&uma_global_lock)
    for i in range(UMA_MAX_ZONES):
        z = uma_zones[i]
        c = &t.ut_cache[i]
        if z == NULL:
            continue
        lock(&z.uz_lock)
        if cache_needs_trim(z, c):
            trim = True
        cache_flush_to_zone(z, c)
        z.uz_allocs += c.uc_allocs
        z.uz_frees += c.uc_frees
        c.uc_allocs = c.uc_frees = 0
        unlock(&z.uz_lock)
    if t.ut_prev != NULL:
        t.ut_prev.ut_next = t.ut_next
    else:
        uma_threads = t.ut_next
    if t.ut_next != NULL:
        t.ut_next.ut_prev = t.ut_prev
    unlock(&uma_global_lock)
    free(t)
    if trim:
        cache_trim_request()


cdef inline uma_cache *cache_lookup(uma_zone *zone) noexcept nogil:
    cdef uma_thread *t = <uma_thread *>uma_tls
    if unlikely(t == NULL):
        t = thread_register()
        if t == NULL:
            return NULL
    return &t.ut_cache[zone.uz_id]


cdef void cache_flush_to_zone(uma_zone *zone, uma_cache *c) noexcept nogil:
    """Both buckets to the zone's lists (zone lock held)."""
    if c.uc_allocbucket != NULL:
        zone_take_bucket(zone, c.uc_allocbucket)
        c.uc_allocbucket = NULL
    if c.uc_freebucket != NULL:
        zone_take_bucket(zone, c.uc_freebucket)
        c.uc_freebucket = NULL


cdef void cache_flush_to_keg(uma_zone *zone, uma_cache *c) noexcept nogil:
    """Both buckets' items back to the keg (zone lock held): how a slow
    zone's usage falls."""
    cdef uma_bucket *b
    cdef int k
    for k in range(2):
        b = c.uc_allocbucket if k == 0 else c.uc_freebucket
        if b != NULL and b.ub_cnt > 0:
            zone_release(zone, b.ub_bucket, b.ub_cnt)
            b.ub_cnt = 0


cdef inline bint cache_bucket_oversize(uma_zone *zone, uma_bucket *b) noexcept nogil:
    return b != NULL and b.ub_entries > zone.uz_bucket_size


cdef inline bint cache_needs_trim(uma_zone *zone, uma_cache *c) noexcept nogil:
    """c holds items of a zone over its limit, or a bucket larger than the
    zone's buckets now are (zone lock held)."""
    return ((((c.uc_allocbucket != NULL and c.uc_allocbucket.ub_cnt > 0) or
              (c.uc_freebucket != NULL and c.uc_freebucket.ub_cnt > 0)) and zone_over_limit(zone))
            or cache_bucket_oversize(zone, c.uc_allocbucket)
            or cache_bucket_oversize(zone, c.uc_freebucket))


cdef void cache_trim(uma_zone *zone, uma_cache *c) noexcept nogil:
    """The owner's trim of its cache (zone lock held): while the zone is over
    its limit, and for a bucket larger than the zone's buckets now are, the
    bucket's items go to the keg and the bucket is freed (the next one comes
    at the zone's current size)."""
    cdef uma_bucket *b
    cdef int k
    for k in range(2):
        b = c.uc_allocbucket if k == 0 else c.uc_freebucket
        if b == NULL:
            continue
        if not (cache_bucket_oversize(zone, b) or (b.ub_cnt > 0 and zone_over_limit(zone))):
            continue
        if b.ub_cnt > 0:
            zone_release(zone, b.ub_bucket, b.ub_cnt)
            b.ub_cnt = 0
        free(b)
        if k == 0:
            c.uc_allocbucket = NULL
        else:
            c.uc_freebucket = NULL


cdef inline void cache_trim_request() noexcept nogil:
    """Ask every thread to trim its caches at its next uma_thread_trim().
    Called after the zone lock that published the new limit and uz_slow was
    released: whoever sees the new generation sees them."""
    uma_atomic_inc_release64(&uma_trim_gen)


cdef void cache_trim_thread(uma_thread *t) noexcept nogil:
    """Trim t's caches (t is the calling thread) and every zone's lists,
    then unmap the kegs' empty slabs: what was trimmed is memory again.
    Secondary zones first: their zfini frees into primary zones, which are
    trimmed after them."""
    cdef uma_zone *z
    cdef int i, pass_
    lock(&uma_global_lock)
    for pass_ in range(2):
        for i in range(UMA_MAX_ZONES):
            z = uma_zones[i]
            if z == NULL or (pass_ == 0) != ((z.uz_flags & UMA_ZONE_SECONDARY) != 0):
                continue
            lock(&z.uz_lock)
            cache_trim(z, &t.ut_cache[z.uz_id])
            zone_trim(z)
            zone_update_slow(z)
            if z.uz_sleepers:
                pthread_cond_broadcast(&z.uz_cv)
            unlock(&z.uz_lock)
    for i in range(UMA_MAX_ZONES):
        z = uma_zones[i]
        if z != NULL and z.uz_keg.uk_primary == z:
            lock(&z.uz_keg.uk_lock)
            keg_drain(z.uz_keg)
            unlock(&z.uz_keg.uk_lock)
    unlock(&uma_global_lock)


cdef void *cache_alloc_slow(uma_zone *zone, void *arg, int flags, int64_t timeout_ns) noexcept nogil:
    """The alloc bucket is empty: swap in the free bucket, or exchange the
    empty bucket for a full one from the zone, or fill one from the keg."""
    cdef uma_cache *c
    cdef uma_bucket *b
    cdef int n
    if zone.uz_slow:
        return zone_alloc_item(zone, arg, flags, timeout_ns)
    c = cache_lookup(zone)
    if c == NULL:
        return zone_alloc_item(zone, arg, flags, timeout_ns)
    b = c.uc_freebucket
    if b != NULL and b.ub_cnt > 0:
        c.uc_freebucket = c.uc_allocbucket
        c.uc_allocbucket = b
    else:
        lock(&zone.uz_lock)
        b = bucket_pop(&zone.uz_full_bucket)
        if b != NULL:
            zone.uz_nfull_items -= b.ub_cnt
            if c.uc_allocbucket != NULL:
                bucket_push(&zone.uz_empty_bucket, c.uc_allocbucket)
            c.uc_allocbucket = b
        else:
            b = c.uc_allocbucket
            if b == NULL:
                b = bucket_pop(&zone.uz_empty_bucket)
                if b == NULL:
                    b = bucket_alloc(zone.uz_bucket_size)
                c.uc_allocbucket = b
            if b != NULL:
                n = zone.uz_bucket_size
                if n > b.ub_entries:
                    n = b.ub_entries
                b.ub_cnt = zone_import(zone, b.ub_bucket, n, flags)
        unlock(&zone.uz_lock)
        if b == NULL or b.ub_cnt == 0:
            # At a limit (or out of memory): the item-at-a-time path decides.
            return zone_alloc_item(zone, arg, flags, timeout_ns)
    b.ub_cnt -= 1
    c.uc_allocs += 1
    return zone_ctor(zone, b.ub_bucket[b.ub_cnt], arg, flags)


cdef void cache_free_slow(uma_zone *zone, void *item) noexcept nogil:
    """The alloc bucket is full (or missing).  If the free bucket has room
    the two swap; otherwise the full free bucket goes to the zone, the full
    alloc bucket becomes the free bucket and an empty one is loaded."""
    cdef uma_cache *c
    cdef uma_bucket *b
    if zone.uz_slow:
        zone_free_item(zone, item, NULL, False)
        return
    c = cache_lookup(zone)
    if c == NULL:
        zone_free_item(zone, item, NULL, False)
        return
    b = c.uc_freebucket
    if b != NULL and b.ub_cnt < b.ub_entries:
        c.uc_freebucket = c.uc_allocbucket
        c.uc_allocbucket = b
    else:
        lock(&zone.uz_lock)
        if b != NULL:
            zone_take_bucket(zone, b)
        c.uc_freebucket = c.uc_allocbucket
        b = bucket_pop(&zone.uz_empty_bucket)
        if b == NULL:
            b = bucket_alloc(zone.uz_bucket_size)
        c.uc_allocbucket = b
        unlock(&zone.uz_lock)
        if b == NULL:
            zone_free_item(zone, item, NULL, False)
            return
    b = c.uc_allocbucket
    b.ub_bucket[b.ub_cnt] = item
    b.ub_cnt += 1
    c.uc_frees += 1


# =============================================================================
# uma(9) interface
# =============================================================================

cdef inline void *zone_alloc(uma_zone *zone, void *arg, int flags, int64_t timeout_ns) noexcept nogil:
    """The fast path: pop from this thread's alloc bucket, no lock."""
    cdef uma_thread *t = <uma_thread *>uma_tls
    cdef uma_cache *c
    cdef uma_bucket *b
    cdef void *item
    if likely(t != NULL and not zone.uz_slow):
        c = &t.ut_cache[zone.uz_id]
        b = c.uc_allocbucket
        if likely(b != NULL and b.ub_cnt > 0):
            b.ub_cnt -= 1
            item = b.ub_bucket[b.ub_cnt]
            c.uc_allocs += 1
            if likely(zone.uz_ctor == NULL and not (flags & M_ZERO)):
                return item
            return zone_ctor(zone, item, arg, flags)
    return cache_alloc_slow(zone, arg, flags, timeout_ns)


cdef void *uma_zalloc_arg(uma_zone *zone, void *arg, int flags) noexcept nogil:
    return zone_alloc(zone, arg, flags, zone.uz_wait_ns)


cdef void *uma_zalloc(uma_zone *zone, int flags) noexcept nogil:
    return zone_alloc(zone, NULL, flags, zone.uz_wait_ns)


cdef void *uma_zalloc_timed(uma_zone *zone, void *arg, int flags, int64_t timeout_ns) noexcept nogil:
    return zone_alloc(zone, arg, flags, timeout_ns)


cdef void uma_zfree_arg(uma_zone *zone, void *item, void *arg) noexcept nogil:
    cdef uma_thread *t = <uma_thread *>uma_tls
    cdef uma_cache *c
    cdef uma_bucket *b
    if item == NULL:
        return
    if zone.uz_dtor != NULL:
        zone.uz_dtor(item, zone.uz_size, arg)
    if likely(t != NULL and not zone.uz_slow):
        c = &t.ut_cache[zone.uz_id]
        b = c.uc_allocbucket       # LIFO: the next alloc gets this item, cache-hot
        if likely(b != NULL and b.ub_cnt < b.ub_entries):
            b.ub_bucket[b.ub_cnt] = item
            b.ub_cnt += 1
            c.uc_frees += 1
            return
    cache_free_slow(zone, item)


cdef void uma_zfree(uma_zone *zone, void *item) noexcept nogil:
    uma_zfree_arg(zone, item, NULL)


cdef uma_zone *zone_create(const char *name, uma_keg *keg, uma_ctor ctor, uma_dtor dtor,
                           uma_init zinit, uma_fini zfini, uint32_t flags) noexcept nogil:
    cdef uma_zone *zone
    cdef pthread_condattr_t ca
    cdef int i, id = -1
    cdef uint64_t bs
    zone = <uma_zone *>calloc(1, sizeof(uma_zone))
    if zone == NULL:
        return NULL
    lock(&uma_global_lock)
    for i in range(UMA_MAX_ZONES):
        if uma_zones[i] == NULL:
            id = i
            break
    if id < 0:
        unlock(&uma_global_lock)
        free(zone)
        return NULL
    strncpy(zone.uz_name, name, UMA_NAME_LEN - 1)
    zone.uz_id = id
    zone.uz_flags = flags
    zone.uz_keg = keg
    zone.uz_size = keg.uk_size
    zone.uz_ctor = ctor
    zone.uz_dtor = dtor
    zone.uz_init = zinit
    zone.uz_fini = zfini
    bs = UMA_BUCKET_BYTES / keg.uk_size
    if bs > UMA_BUCKET_MAX:
        bs = UMA_BUCKET_MAX
    if bs < UMA_BUCKET_MIN:
        bs = UMA_BUCKET_MIN
    zone.uz_bucket_max = <int>bs
    zone_update_bucket_size(zone)
    pthread_mutex_init(&zone.uz_lock, NULL)
    pthread_condattr_init(&ca)
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)
    pthread_cond_init(&zone.uz_cv, &ca)
    lock(&keg.uk_lock)
    keg.uk_nzones += 1
    if keg.uk_primary == NULL:
        keg.uk_primary = zone
    unlock(&keg.uk_lock)
    uma_zones[id] = zone
    unlock(&uma_global_lock)
    return zone


cdef uma_zone *uma_zcreate(const char *name, size_t size, uma_ctor ctor, uma_dtor dtor,
                           uma_init init, uma_fini fini, uint32_t flags) noexcept nogil:
    cdef uma_keg *keg
    cdef uma_zone *zone
    if size == 0 or size > 1024 * 1024:
        return NULL
    keg = keg_create(name, size, init, fini, flags)
    if keg == NULL:
        return NULL
    zone = zone_create(name, keg, ctor, dtor, NULL, NULL, flags & ~UMA_ZONE_SECONDARY)
    if zone == NULL:
        keg_destroy(keg)
    return zone


cdef uma_zone *uma_zsecond_create(const char *name, uma_ctor ctor, uma_dtor dtor,
                                  uma_init zinit, uma_fini zfini,
                                  uma_zone *master) noexcept nogil:
    return zone_create(name, master.uz_keg, ctor, dtor, zinit, zfini,
                       (master.uz_flags & UMA_ZONE_REFCNT) | UMA_ZONE_SECONDARY)


cdef void uma_zone_set_zinit(uma_zone *zone, uma_init zinit, uma_fini zfini) noexcept nogil:
    lock(&zone.uz_lock)
    zone.uz_init = zinit
    zone.uz_fini = zfini
    unlock(&zone.uz_lock)


cdef int uma_zdestroy(uma_zone *zone) noexcept nogil:
    """Destroy a zone with no item in use.  Precondition (not checked): no
    other thread uses the zone; their caches for it are reclaimed here."""
    cdef uma_zone_stat st
    cdef uma_thread *t
    cdef uma_keg *keg = zone.uz_keg
    cdef bint last
    cache_lookup(zone)              # register before the locks (zfini may free)
    uma_zone_stats(zone, &st)
    if st.used != 0:
        return -1
    lock(&uma_global_lock)
    lock(&zone.uz_lock)
    t = uma_threads
    while t != NULL:
        cache_flush_to_zone(zone, &t.ut_cache[zone.uz_id])
        t.ut_cache[zone.uz_id].uc_allocs = 0
        t.ut_cache[zone.uz_id].uc_frees = 0
        t = t.ut_next
    zone_drain_buckets(zone)
    unlock(&zone.uz_lock)
    uma_zones[zone.uz_id] = NULL
    lock(&keg.uk_lock)
    keg.uk_nzones -= 1
    if keg.uk_primary == zone:
        keg.uk_primary = NULL
    last = keg.uk_nzones == 0
    unlock(&keg.uk_lock)
    unlock(&uma_global_lock)
    pthread_mutex_destroy(&zone.uz_lock)
    pthread_cond_destroy(&zone.uz_cv)
    free(zone)
    if last:
        keg_destroy(keg)
    return 0


cdef void uma_zone_set_max(uma_zone *zone, uint64_t nitems) noexcept nogil:
    """Cap the zone (0 = unlimited); safe while other threads allocate.
    Lowering below uz_items revokes nothing in use: the calling thread's
    cache and the zone's lists are trimmed at once, the other threads' at
    their next uma_thread_trim() (module doc), and the zone is slow until
    usage falls to the limit."""
    cdef uma_cache *c = cache_lookup(zone)
    cdef int old_bs
    cdef bint trim = False
    lock(&zone.uz_lock)
    old_bs = zone.uz_bucket_size
    zone.uz_limit = nitems
    zone_update_bucket_size(zone)
    if zone.uz_bucket_size < old_bs or zone_over_limit(zone):
        if c != NULL:
            cache_trim(zone, c)
        zone_trim(zone)
        trim = True
    zone_update_slow(zone)
    pthread_cond_broadcast(&zone.uz_cv)
    unlock(&zone.uz_lock)
    if trim:
        lock(&zone.uz_keg.uk_lock)
        keg_drain(zone.uz_keg)
        unlock(&zone.uz_keg.uk_lock)
        cache_trim_request()


cdef uint64_t uma_zone_get_max(uma_zone *zone) noexcept nogil:
    return zone.uz_limit


cdef void uma_keg_set_max(uma_zone *zone, uint64_t nitems) noexcept nogil:
    """Cap the items out of the zone's keg (all its zones together)."""
    cdef int i, old_bs
    cdef uma_zone *z
    cdef uma_keg *keg = zone.uz_keg
    cdef uma_thread *t
    cdef bint trim = False
    # Register the calling thread before any lock: trimming below runs zfini
    # hooks, which free into other zones through this thread's cache.
    cache_lookup(zone)
    t = <uma_thread *>uma_tls
    lock(&uma_global_lock)
    lock(&keg.uk_lock)
    keg.uk_limit = nitems
    unlock(&keg.uk_lock)
    for i in range(UMA_MAX_ZONES):
        z = uma_zones[i]
        if z != NULL and z.uz_keg == keg:
            lock(&z.uz_lock)
            old_bs = z.uz_bucket_size
            zone_update_bucket_size(z)
            if z.uz_bucket_size < old_bs or zone_over_limit(z):
                if t != NULL:
                    cache_trim(z, &t.ut_cache[i])
                zone_trim(z)
                trim = True
            zone_update_slow(z)
            pthread_cond_broadcast(&z.uz_cv)
            unlock(&z.uz_lock)
    if trim:
        lock(&keg.uk_lock)
        keg_drain(keg)
        unlock(&keg.uk_lock)
    unlock(&uma_global_lock)
    if trim:
        cache_trim_request()


cdef uint64_t uma_keg_get_max(uma_zone *zone) noexcept nogil:
    return zone.uz_keg.uk_limit


cdef void uma_zone_set_wait(uma_zone *zone, int64_t timeout_ns) noexcept nogil:
    zone.uz_wait_ns = timeout_ns


cdef uint64_t uma_zone_drain(uma_zone *zone) noexcept nogil:
    """The calling thread's buckets and the zone's full buckets go back to
    the keg, then the keg's empty slabs to the OS.  Other threads' caches
    are left alone (they are theirs until they flush or exit)."""
    cdef uma_cache *c = cache_lookup(zone)
    cdef uint64_t freed
    lock(&zone.uz_lock)
    if c != NULL:
        cache_flush_to_zone(zone, c)
    zone_drain_buckets(zone)
    zone_update_slow(zone)
    unlock(&zone.uz_lock)
    lock(&zone.uz_keg.uk_lock)
    freed = keg_drain(zone.uz_keg)
    unlock(&zone.uz_keg.uk_lock)
    return freed


cdef uint64_t uma_reclaim() noexcept nogil:
    """Drain every zone: secondary zones first, since their zfini may free
    into primary zones (the Packet zone's clusters)."""
    cdef uint64_t freed = 0
    cdef int i, pass_
    cdef uma_zone *z
    for pass_ in range(2):
        for i in range(UMA_MAX_ZONES):
            z = uma_zones[i]      # zones are created/destroyed at setup only
            if z == NULL:
                continue
            if (pass_ == 0) == ((z.uz_flags & UMA_ZONE_SECONDARY) != 0):
                freed += uma_zone_drain(z)
    return freed


cdef void uma_thread_flush() noexcept nogil:
    """The calling thread's buckets go to their zones' lists; a zone over
    its limit then trims its lists (the items go to the keg)."""
    cdef uma_thread *t = <uma_thread *>uma_tls
    cdef uma_zone *z
    cdef int i
    if t == NULL:
        return
    lock(&uma_global_lock)
    for i in range(UMA_MAX_ZONES):
        z = uma_zones[i]
        if z != NULL:
            lock(&z.uz_lock)
            cache_flush_to_zone(z, &t.ut_cache[i])
            if zone_over_limit(z):
                zone_trim(z)
            unlock(&z.uz_lock)
    unlock(&uma_global_lock)


cdef void uma_thread_trim() noexcept nogil:
    """For a long-lived thread, once per wake-up (the forwarding loop): when
    a limit was lowered (or a thread exited over one) since this thread last
    looked, its buckets beyond the limits go to the kegs and the zones'
    lists are trimmed.  Otherwise a TLS load, an acquire load and a compare."""
    cdef uma_thread *t = <uma_thread *>uma_tls
    cdef uint64_t gen
    if t == NULL:
        return
    gen = uma_atomic_load_acquire64(&uma_trim_gen)
    if likely(t.ut_trim_gen == gen):
        return
    t.ut_trim_gen = gen
    cache_trim_thread(t)


cdef void uma_zone_stats(uma_zone *zone, uma_zone_stat *st) noexcept nogil:
    """A vmstat -z row.  Other threads' counters are read without their
    owners' cooperation: exact when they are idle, a few items off while they
    run.  USED is clamped to uz_items (exact: read under the zone lock) and
    the zone's cached items are uz_items - USED, so the skew moves items
    between USED and FREE but never changes USED + FREE (module doc)."""
    cdef uma_thread *t
    cdef uma_cache *c
    cdef uint64_t allocs, frees, used, kfree
    cdef uma_keg *keg = zone.uz_keg
    memset(st, 0, sizeof(uma_zone_stat))
    lock(&uma_global_lock)
    lock(&zone.uz_lock)
    allocs = zone.uz_allocs
    frees = zone.uz_frees
    t = uma_threads
    while t != NULL:
        c = &t.ut_cache[zone.uz_id]
        allocs += c.uc_allocs
        frees += c.uc_frees
        t = t.ut_next
    used = allocs - frees if allocs > frees else 0
    if used > zone.uz_items:
        used = zone.uz_items
    strncpy(st.name, zone.uz_name, UMA_NAME_LEN - 1)
    st.size = zone.uz_size
    st.limit = zone.uz_limit if zone.uz_limit else keg.uk_limit
    st.used = used
    st.requests = allocs
    st.fails = zone.uz_fails
    st.sleeps = zone.uz_sleeps
    st.items = zone.uz_items
    st.bucket_size = <uint64_t>zone.uz_bucket_size
    lock(&keg.uk_lock)
    st.keg_free = keg.uk_free
    st.keg_slabs = keg.uk_nslabs
    st.keg_slabsize = keg.uk_slabsize
    # vmstat -z FREE: the zone's cached items, and for the keg's primary zone
    # also the free items in the keg's slabs that a limit still lets out.  A
    # slab is mapped whole, so under a limit smaller than a slab (16 clusters
    # of a 31-item slab) the rest of it is memory no allocation can reach:
    # counting it would show a total above the limit.  (USED plus cache may
    # still exceed a limit lowered below what is in use: nothing is revoked.)
    kfree = keg.uk_free if keg.uk_primary == zone else 0
    if kfree and keg.uk_limit:
        kfree = min(kfree, keg.uk_limit - min(keg.uk_limit, keg_items_out(keg)))
    if kfree and zone.uz_limit:
        kfree = min(kfree, zone.uz_limit - min(zone.uz_limit, zone.uz_items))
    st.free = zone.uz_items - used + kfree
    unlock(&keg.uk_lock)
    unlock(&zone.uz_lock)
    unlock(&uma_global_lock)


cdef uint64_t uma_mapped_bytes() noexcept nogil:
    return uma_atomic_load64(&uma_mapped)


cdef int uma_zone_count() noexcept nogil:
    return UMA_MAX_ZONES


cdef uma_zone *uma_zone_at(int i) noexcept nogil:
    if i < 0 or i >= UMA_MAX_ZONES:
        return NULL
    return uma_zones[i]


cdef uint32_t *uma_find_refcnt(uma_zone *zone, void *item) noexcept nogil:
    """The reference count of an item of a UMA_ZONE_REFCNT keg, found from
    the item's address through its slab header."""
    cdef uma_keg *keg = zone.uz_keg
    cdef uma_slab *slab
    if not (keg.uk_flags & UMA_ZONE_REFCNT):
        return NULL
    slab = slab_of(keg, item)
    return &slab.us_refcnt[slab_index(keg, slab, item)]


cdef void uma_startup() noexcept nogil:
    pthread_mutex_init(&uma_global_lock, NULL)
    pthread_key_create(&uma_thread_key, thread_dtor)


uma_startup()


# =============================================================================
# Python handles: for tools and tests.  Misuse raises; it never crashes.
# =============================================================================

class ZoneBusy(RuntimeError):
    """The zone still has items in use."""


cdef Zone zone_wrap(uma_zone *z):
    cdef Zone zone = Zone.__new__(Zone)
    zone.zone = z
    zone.owner = False
    return zone


cdef dict _stat_dict(uma_zone_stat *st):
    return {
        "name": st.name.decode(),
        "size": st.size, "limit": st.limit, "used": st.used, "free": st.free,
        "requests": st.requests, "fails": st.fails, "sleeps": st.sleeps,
        "items": st.items, "bucket_size": st.bucket_size,
        "keg_free": st.keg_free, "keg_slabs": st.keg_slabs,
        "keg_slabsize": st.keg_slabsize,
    }


cdef class Zone:
    """A UMA zone.  `Zone.create(...)` makes a keg and its primary zone;
    `zone.secondary(name)` stacks another zone on the same keg."""

    def __cinit__(self):
        self.zone = NULL
        self.owner = False

    @staticmethod
    def create(str name, size_t size, *, bint refcnt=False, uint64_t limit=0) -> Zone:
        cdef bytes bname = name.encode()
        cdef uma_zone *z = uma_zcreate(bname, size, NULL, NULL, NULL, NULL,
                                       UMA_ZONE_REFCNT if refcnt else 0)
        if z == NULL:
            raise MemoryError(f"cannot create zone {name!r} of {size} bytes")
        cdef Zone zone = zone_wrap(z)
        zone.owner = True
        if limit:
            uma_zone_set_max(z, limit)
        return zone

    def secondary(self, str name) -> Zone:
        """A zone stacked on this zone's keg (uma_zsecond_create)."""
        self._check()
        cdef bytes bname = name.encode()
        cdef uma_zone *z = uma_zsecond_create(bname, NULL, NULL, NULL, NULL, self.zone)
        if z == NULL:
            raise MemoryError(f"cannot create zone {name!r}")
        cdef Zone zone = zone_wrap(z)
        zone.owner = True
        return zone

    cdef void _check(self) except *:
        if self.zone == NULL:
            raise ValueError("zone destroyed")

    @property
    def name(self) -> str:
        self._check()
        return self.zone.uz_name.decode()

    @property
    def size(self) -> int:
        self._check()
        return self.zone.uz_size

    @property
    def limit(self) -> int:
        self._check()
        return uma_zone_get_max(self.zone)

    @limit.setter
    def limit(self, uint64_t n):
        self._check()
        uma_zone_set_max(self.zone, n)

    @property
    def keg_limit(self) -> int:
        self._check()
        return uma_keg_get_max(self.zone)

    @keg_limit.setter
    def keg_limit(self, uint64_t n):
        self._check()
        with nogil:
            uma_keg_set_max(self.zone, n)

    @property
    def items_per_slab(self) -> int:
        self._check()
        return self.zone.uz_keg.uk_ipers

    @property
    def slab_size(self) -> int:
        self._check()
        return self.zone.uz_keg.uk_slabsize

    def alloc(self, bint wait=False, timeout=None, bint zero=False):
        """An Item, or None when denied (M_NOWAIT at the limit, or a wait
        that timed out).  timeout is in seconds; None waits forever."""
        cdef void *p
        cdef int flags = (M_WAITOK if wait else M_NOWAIT) | (M_ZERO if zero else 0)
        cdef int64_t tmo = 0
        self._check()
        if wait:
            if timeout is not None:
                tmo = <int64_t>(float(timeout) * 1e9)
                if tmo <= 0:
                    tmo = 1
            with nogil:
                p = uma_zalloc_timed(self.zone, NULL, flags, tmo)
        else:
            p = uma_zalloc_arg(self.zone, NULL, flags)
        if p == NULL:
            return None
        cdef Item it = Item.__new__(Item)
        it.ptr = p
        it.zone = self
        return it

    def free(self, Item item not None):
        if item.zone is not self:
            raise ValueError("item belongs to another zone")
        item.free()

    def drain(self) -> int:
        """Return cached items to the keg and empty slabs to the OS; the
        number of bytes unmapped."""
        self._check()
        cdef uint64_t n
        with nogil:
            n = uma_zone_drain(self.zone)
        return n

    def stats(self) -> dict:
        self._check()
        cdef uma_zone_stat st
        with nogil:
            uma_zone_stats(self.zone, &st)
        return _stat_dict(&st)

    def set_wait(self, timeout):
        """Default M_WAITOK timeout in seconds (None = forever)."""
        self._check()
        uma_zone_set_wait(self.zone, 0 if timeout is None else max(1, <int64_t>(timeout * 1e9)))

    def owns(self, Item item not None) -> bool:
        """Whether the item's address lies in this zone's keg."""
        self._check()
        return item.ptr != NULL and keg_owns(self.zone.uz_keg, item.ptr)

    def refcount(self, Item item not None) -> int:
        cdef uint32_t *rc = self._refcnt(item)
        return uma_refcnt_get(rc)

    def ref(self, Item item not None) -> int:
        """Take a reference: the new count."""
        return uma_refcnt_acquire(self._refcnt(item))

    def unref(self, Item item not None) -> int:
        """Drop a reference: the new count; the item is freed at zero."""
        cdef uint32_t *rc = self._refcnt(item)
        if uma_refcnt_get(rc) == 0:
            raise ValueError("reference count already zero")
        cdef uint32_t n = uma_refcnt_release(rc)
        if n == 0:
            item.free()
        return n

    cdef uint32_t *_refcnt(self, Item item) except NULL:
        self._check()
        if item.ptr == NULL:
            raise ValueError("item already freed")
        if item.zone.zone.uz_keg != self.zone.uz_keg:
            raise ValueError("item belongs to another keg")
        cdef uint32_t *rc = uma_find_refcnt(self.zone, item.ptr)
        if rc == NULL:
            raise ValueError(f"zone {self.name!r} has no reference counts")
        return rc

    def destroy(self):
        """Destroy the zone (and its keg with the last zone on it)."""
        self._check()
        if not self.owner:
            raise ValueError("zone is not owned by this handle")
        cdef int rc
        with nogil:
            rc = uma_zdestroy(self.zone)
        if rc != 0:
            raise ZoneBusy(f"zone {self.name!r} has items in use")
        self.zone = NULL

    def __dealloc__(self):
        # An owned zone left with items in use is kept (its items stay valid).
        if self.owner and self.zone != NULL:
            uma_zdestroy(self.zone)

    def __repr__(self):
        if self.zone == NULL:
            return "<Zone destroyed>"
        return f"<Zone {self.name!r} size={self.size} limit={self.limit}>"


@cython.freelist(256)
cdef class Item:
    """One allocated item.  Using it after free() raises ValueError."""

    def __cinit__(self):
        self.ptr = NULL

    cdef void _check(self) except *:
        if self.ptr == NULL:
            raise ValueError("item already freed")

    @property
    def freed(self) -> bool:
        return self.ptr == NULL

    @property
    def address(self) -> int:
        self._check()
        return <uintptr_t>self.ptr

    @property
    def size(self) -> int:
        return self.zone.zone.uz_size

    def free(self):
        self._check()
        cdef void *p = self.ptr
        self.ptr = NULL
        uma_zfree_arg(self.zone.zone, p, NULL)

    def read(self, Py_ssize_t offset=0, n=None) -> bytes:
        self._check()
        cdef Py_ssize_t size = self.zone.zone.uz_size
        cdef Py_ssize_t cnt = size - offset if n is None else n
        if offset < 0 or cnt < 0 or offset + cnt > size:
            raise IndexError("read outside the item")
        return PyBytes_FromStringAndSize(<char *>self.ptr + offset, cnt)

    def write(self, Py_ssize_t offset, const unsigned char[:] data):
        self._check()
        cdef Py_ssize_t size = self.zone.zone.uz_size
        cdef Py_ssize_t n = data.shape[0]
        if offset < 0 or offset + n > size:
            raise IndexError("write outside the item")
        if n:
            memcpy(<char *>self.ptr + offset, &data[0], n)

    def __repr__(self):
        if self.ptr == NULL:
            return "<Item freed>"
        return f"<Item {self.zone.name!r} at {<uintptr_t>self.ptr:#x}>"


def zones() -> list:
    """Every live zone, as non-owning handles."""
    cdef int i
    out = []
    for i in range(UMA_MAX_ZONES):
        if uma_zones[i] != NULL:
            out.append(zone_wrap(uma_zones[i]))
    return out


def vmstat() -> list:
    """vmstat -z rows (dicts) of every live zone."""
    cdef uma_zone_stat st
    cdef int i
    out = []
    lock(&uma_global_lock)
    zs = [i for i in range(UMA_MAX_ZONES) if uma_zones[i] != NULL]
    unlock(&uma_global_lock)
    for i in zs:
        if uma_zones[i] != NULL:
            uma_zone_stats(uma_zones[i], &st)
            out.append(_stat_dict(&st))
    return out


def mapped_bytes() -> int:
    """Bytes of slab memory mapped from the OS, all kegs."""
    return uma_mapped_bytes()


def reclaim() -> int:
    """Drain every zone; bytes unmapped."""
    cdef uint64_t n
    with nogil:
        n = uma_reclaim()
    return n


def thread_flush():
    """Hand the calling thread's cached buckets to their zones."""
    with nogil:
        uma_thread_flush()


def thread_trim():
    """What a long-lived thread does once per wake-up (uma_thread_trim):
    if a limit was lowered since it last looked, give back what the calling
    thread caches beyond the limits."""
    with nogil:
        uma_thread_trim()


def trim_generation() -> int:
    """How many times caches were asked to trim (uma_trim_gen)."""
    return uma_atomic_load_acquire64(&uma_trim_gen)
