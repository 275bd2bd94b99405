# cython: language_level=3
#
# uma.pxd -- the C-level interface of the UMA slab allocator.
#
# Layers, bottom to top (each function is prefixed by the layer it belongs to):
#
#   slab_   an aligned mmap()ed block: header (free-index stack, optional
#           refcounts) followed by equal-sized items.  item -> slab is an
#           address mask (vtoslab).
#   keg_    a slab cache of one item size: partial / free / full slab lists,
#           keg init/fini hooks (item enters/leaves VM), optional item limit.
#   zone_   hands items out of one keg: bucket lists (full / empty), ctor/dtor
#           on every alloc/free, zinit/zfini when items enter/leave the zone,
#           limit, stats.  Several zones may sit on one keg (uma_zsecond_create).
#   cache_  per-thread alloc/free buckets per zone; the fast path takes no lock.
#   bucket_ a fixed array of item pointers moved between caches and zones.
#
# Every function here is nogil and never raises; failures are NULL / -1.

from libc.stdint cimport uint16_t, uint32_t, uint64_t, int64_t, uintptr_t

from allocator_pyx.includes cimport pthread_cond_t, pthread_mutex_t

cdef enum:
    # allocation flags (as malloc(9))
    M_NOWAIT = 0x0001
    M_WAITOK = 0x0002
    M_ZERO = 0x0100

    # keg/zone flags
    UMA_ZONE_REFCNT = 0x0001      # per-item reference counts in the slab header
    UMA_ZONE_SECONDARY = 0x0002   # zone is stacked on another zone's keg

    UMA_MAX_ZONES = 64
    UMA_BUCKET_MAX = 256
    UMA_NAME_LEN = 32

# Hook signatures, as FreeBSD's uma(9).
ctypedef int (*uma_ctor)(void *mem, int size, void *arg, int flags) noexcept nogil
ctypedef void (*uma_dtor)(void *mem, int size, void *arg) noexcept nogil
ctypedef int (*uma_init)(void *mem, int size, int flags) noexcept nogil
ctypedef void (*uma_fini)(void *mem, int size) noexcept nogil

cdef struct uma_keg_s
cdef struct uma_zone_s

cdef struct uma_slab_s:
    uma_keg_s *us_keg
    uma_slab_s *us_next
    uma_slab_s *us_prev
    char *us_data               # first item
    uint32_t us_freecount       # entries valid in us_free
    uint32_t us_list            # which keg list holds the slab
    uint16_t *us_free           # stack of free item indices
    uint32_t *us_refcnt         # one counter per item (UMA_ZONE_REFCNT) or NULL

ctypedef uma_slab_s uma_slab

cdef struct uma_keg_s:
    pthread_mutex_t uk_lock
    char uk_name[UMA_NAME_LEN]
    uint32_t uk_size            # item size
    uint32_t uk_rsize           # item stride (size rounded to alignment)
    uint32_t uk_ipers           # items per slab
    uint32_t uk_flags
    size_t uk_slabsize          # power of two; slabs are aligned to it
    uintptr_t uk_slabmask
    size_t uk_hdrsize           # offset of the first item in a slab
    uma_slab *uk_part_slab      # slab lists
    uma_slab *uk_free_slab
    uma_slab *uk_full_slab
    uint64_t uk_nslabs
    uint64_t uk_free            # free items sitting in slabs
    uint64_t uk_limit           # max items out of slabs, 0 = none
    uma_init uk_init            # item moves VM -> slab
    uma_fini uk_fini            # item moves slab -> VM
    uma_zone_s *uk_primary      # the zone created with the keg
    int uk_nzones

ctypedef uma_keg_s uma_keg

cdef struct uma_bucket_s:
    uma_bucket_s *ub_next
    int ub_cnt
    int ub_entries
    void *ub_bucket[UMA_BUCKET_MAX]

ctypedef uma_bucket_s uma_bucket

cdef struct uma_zone_s:
    pthread_mutex_t uz_lock
    pthread_cond_t uz_cv        # limit sleepers
    char uz_name[UMA_NAME_LEN]
    int uz_id                   # index into every thread's cache array
    uint32_t uz_flags
    uint32_t uz_size
    uma_keg *uz_keg
    uma_ctor uz_ctor
    uma_dtor uz_dtor
    uma_init uz_init            # item moves keg -> zone
    uma_fini uz_fini            # item moves zone -> keg
    uma_bucket *uz_full_bucket  # bucket lists
    uma_bucket *uz_empty_bucket
    uint64_t uz_nfull_items     # items in full buckets on the zone
    int uz_bucket_size          # entries per new bucket
    int uz_bucket_max           # bucket size without a limit
    uint64_t uz_limit           # max items out of the keg for this zone, 0 = none
    uint64_t uz_items           # items out of the keg for this zone (used + cached)
    int uz_sleepers
    int uz_slow                 # bypass per-thread caches (limit pressure)
    int64_t uz_wait_ns          # M_WAITOK timeout, 0 = forever
    uint64_t uz_allocs          # counts folded in from exited threads and slow paths
    uint64_t uz_frees
    uint64_t uz_fails           # netstat -m "denied"
    uint64_t uz_sleeps          # netstat -m "delayed"

ctypedef uma_zone_s uma_zone

# One row of vmstat -z.
cdef struct uma_zone_stat:
    char name[UMA_NAME_LEN]
    uint64_t size
    uint64_t limit
    uint64_t used
    uint64_t free
    uint64_t requests
    uint64_t fails
    uint64_t sleeps
    uint64_t items              # out of the keg for this zone
    uint64_t bucket_size
    uint64_t keg_free           # free items in the keg's slabs
    uint64_t keg_slabs
    uint64_t keg_slabsize

# Atomic reference counts (UMA_ZONE_REFCNT); inline so every module gets them.
cdef extern from *:
    """
    static inline void uma_refcnt_set(uint32_t *p, uint32_t v)
    { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint32_t uma_refcnt_get(uint32_t *p)
    { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline uint32_t uma_refcnt_acquire(uint32_t *p)
    { return __atomic_add_fetch(p, 1, __ATOMIC_ACQ_REL); }
    static inline uint32_t uma_refcnt_release(uint32_t *p)
    { return __atomic_sub_fetch(p, 1, __ATOMIC_ACQ_REL); }
    """
    void uma_refcnt_set(uint32_t *p, uint32_t v) nogil
    uint32_t uma_refcnt_get(uint32_t *p) nogil
    uint32_t uma_refcnt_acquire(uint32_t *p) nogil
    uint32_t uma_refcnt_release(uint32_t *p) nogil

# --- zone creation (uma(9) names) -------------------------------------------
# A new keg with its primary zone.  init/fini are keg hooks.
cdef uma_zone *uma_zcreate(const char *name, size_t size, uma_ctor ctor, uma_dtor dtor,
                           uma_init init, uma_fini fini, uint32_t flags) noexcept nogil
# A zone on master's keg; zinit/zfini run when items enter/leave this zone.
cdef uma_zone *uma_zsecond_create(const char *name, uma_ctor ctor, uma_dtor dtor,
                                  uma_init zinit, uma_fini zfini,
                                  uma_zone *master) noexcept nogil
# Destroy a zone no thread is using and with no item in use: 0 or -1.
cdef int uma_zdestroy(uma_zone *zone) noexcept nogil

# --- allocation -----------------------------------------------------------
cdef void *uma_zalloc(uma_zone *zone, int flags) noexcept nogil
cdef void *uma_zalloc_arg(uma_zone *zone, void *arg, int flags) noexcept nogil
# M_WAITOK with an explicit timeout (ns, 0 = forever); NULL when it expires.
cdef void *uma_zalloc_timed(uma_zone *zone, void *arg, int flags, int64_t timeout_ns) noexcept nogil
cdef void uma_zfree(uma_zone *zone, void *item) noexcept nogil
cdef void uma_zfree_arg(uma_zone *zone, void *item, void *arg) noexcept nogil

# --- limits, drain, stats ---------------------------------------------------
cdef void uma_zone_set_max(uma_zone *zone, uint64_t nitems) noexcept nogil   # 0 = unlimited
cdef uint64_t uma_zone_get_max(uma_zone *zone) noexcept nogil
cdef void uma_keg_set_max(uma_zone *zone, uint64_t nitems) noexcept nogil    # the zone's keg
cdef uint64_t uma_keg_get_max(uma_zone *zone) noexcept nogil
cdef void uma_zone_set_wait(uma_zone *zone, int64_t timeout_ns) noexcept nogil
cdef void uma_zone_set_zinit(uma_zone *zone, uma_init zinit, uma_fini zfini) noexcept nogil
cdef uint64_t uma_zone_drain(uma_zone *zone) noexcept nogil   # returns bytes unmapped
cdef uint64_t uma_reclaim() noexcept nogil                     # drain every zone
cdef void uma_thread_flush() noexcept nogil    # return the calling thread's buckets
cdef void uma_thread_trim() noexcept nogil     # once per wake-up: trim after a lowered limit
cdef void uma_zone_stats(uma_zone *zone, uma_zone_stat *st) noexcept nogil
cdef uint64_t uma_mapped_bytes() noexcept nogil
cdef int uma_zone_count() noexcept nogil
cdef uma_zone *uma_zone_at(int i) noexcept nogil    # NULL for a free slot

# --- refcounts (UMA_ZONE_REFCNT) ----------------------------------------------
cdef uint32_t *uma_find_refcnt(uma_zone *zone, void *item) noexcept nogil

# --- slab/keg layer, exported for tools and tests ---------------------------
cdef uma_slab *slab_of(uma_keg *keg, void *item) noexcept nogil
cdef bint keg_owns(uma_keg *keg, void *item) noexcept nogil

# --- Python-visible handles (safe for tools and tests) -------------------------
cdef class Item

cdef class Zone:
    cdef uma_zone *zone
    cdef bint owner             # created from Python: destroyed with the object
    cdef object __weakref__
    cdef void _check(self) except *
    cdef uint32_t *_refcnt(self, Item item) except NULL

cdef class Item:
    cdef void *ptr              # NULL once freed: a freed handle raises
    cdef readonly Zone zone
    cdef void _check(self) except *

cdef Zone zone_wrap(uma_zone *z)
