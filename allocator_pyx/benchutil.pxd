# cython: language_level=3
#
# benchutil.pxd -- what the nogil timing loops (uma_tools, mbuf_bench) share.

from libc.stdint cimport int64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef extern from *:
    """
    /* Keep the compiler from pairing and eliding an allocation and its free. */
    #define bench_escape(p) __asm__ volatile("" : : "g"(p) : "memory")
    """
    void bench_escape(void *p) nogil


cdef inline int64_t bench_now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
