# cython: language_level=3
"""nogil loops over UMA for the benchmark and the concurrency tests.

They call the allocator the way every other Cython module does: through the
uma.pxd interface (a call through the module's exported function table)."""

from libc.stdint cimport uint32_t, uint64_t, int64_t, uintptr_t
from libc.stdlib cimport free, malloc
from allocator_pyx.benchutil cimport bench_escape
from allocator_pyx.includes cimport now_ns

from allocator_pyx.uma cimport (M_NOWAIT, M_WAITOK, Zone, uma_zalloc, uma_zalloc_timed,
                                uma_zfree)

def pair_ns(Zone zone not None, long n) -> float:
    """ns per uma_zalloc + uma_zfree pair from the calling thread's cache
    (each item written once, as a consumer would)."""
    cdef long i
    cdef char *p
    cdef int64_t t0, t1
    with nogil:
        p = <char *>uma_zalloc(zone.zone, M_NOWAIT)      # warm the cache
        uma_zfree(zone.zone, p)
        t0 = now_ns()
        for i in range(n):
            p = <char *>uma_zalloc(zone.zone, M_NOWAIT)
            p[0] = <char>i
            bench_escape(p)
            uma_zfree(zone.zone, p)
        t1 = now_ns()
    return (t1 - t0) / <double>n


def malloc_pair_ns(size_t size, long n) -> float:
    """ns per glibc malloc + free pair of the same size, same loop body."""
    cdef long i
    cdef char *p
    cdef int64_t t0, t1
    with nogil:
        t0 = now_ns()
        for i in range(n):
            p = <char *>malloc(size)
            p[0] = <char>i
            bench_escape(p)
            free(p)
        t1 = now_ns()
    return (t1 - t0) / <double>n


def batch_ns(Zone zone not None, long rounds, int batch) -> float:
    """ns per item when `batch` items are allocated then all freed: the
    pattern of a receive burst; exercises bucket exchanges with the zone."""
    cdef void **held = <void **>malloc(sizeof(void *) * batch)
    cdef long r
    cdef int i
    cdef int64_t t0, t1
    if held == NULL:
        raise MemoryError()
    with nogil:
        t0 = now_ns()
        for r in range(rounds):
            for i in range(batch):
                held[i] = uma_zalloc(zone.zone, M_NOWAIT)
            for i in range(batch):
                uma_zfree(zone.zone, held[i])
        t1 = now_ns()
    free(held)
    return (t1 - t0) / (<double>rounds * batch)


cdef inline uint32_t xorshift(uint32_t *s) noexcept nogil:
    cdef uint32_t x = s[0]
    x ^= x << 13
    x ^= x >> 17
    x ^= x << 5
    s[0] = x
    return x


def stress(Zone zone not None, long iterations, uint32_t seed, uint64_t tag, int hold) -> dict:
    """Random alloc/free for `iterations` steps without the GIL, holding at
    most `hold` items.  Each held item carries a stamp (tag, serial) in its
    first 16 bytes; a stamp found changed at free time means the item was
    handed to somebody else meanwhile.  Everything is freed at the end."""
    cdef void **held = <void **>malloc(sizeof(void *) * hold)
    cdef uint64_t *stamp = <uint64_t *>malloc(sizeof(uint64_t) * hold)
    cdef long it
    cdef int n = 0, k
    cdef uint64_t serial = 0, allocs = 0, denied = 0, corrupt = 0
    cdef uint64_t *p
    cdef uint32_t s = seed if seed else 1
    if held == NULL or stamp == NULL:
        free(held)
        free(stamp)
        raise MemoryError()
    with nogil:
        for it in range(iterations):
            if n < hold and (n == 0 or xorshift(&s) % 2 == 0):
                p = <uint64_t *>uma_zalloc(zone.zone, M_NOWAIT)
                if p == NULL:
                    denied += 1
                    continue
                allocs += 1
                serial += 1
                p[0] = tag
                p[1] = serial
                held[n] = p
                stamp[n] = serial
                n += 1
            else:
                k = <int>(xorshift(&s) % <uint32_t>n)
                p = <uint64_t *>held[k]
                if p[0] != tag or p[1] != stamp[k]:
                    corrupt += 1
                p[0] = 0
                uma_zfree(zone.zone, p)
                n -= 1
                held[k] = held[n]
                stamp[k] = stamp[n]
        while n > 0:
            n -= 1
            p = <uint64_t *>held[n]
            if p[0] != tag or p[1] != stamp[n]:
                corrupt += 1
            p[0] = 0
            uma_zfree(zone.zone, p)
    free(held)
    free(stamp)
    return {"allocs": allocs, "denied": denied, "corrupt": corrupt}


def hold_and_wait(Zone zone not None, double timeout) -> int:
    """One M_WAITOK allocation without the GIL; returns the item's address
    (0 on timeout) after freeing it again."""
    cdef void *p
    cdef int64_t tmo = <int64_t>(timeout * 1e9)
    with nogil:
        p = uma_zalloc_timed(zone.zone, NULL, M_WAITOK, tmo)
        if p != NULL:
            uma_zfree(zone.zone, p)
    return <uintptr_t>p
