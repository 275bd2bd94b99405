# cython: language_level=3
#
# benchutil.pxd -- what the nogil timing loops (uma_tools, mbuf_bench) share
# besides the clock (allocator_pyx.includes.now_ns).

cdef extern from *:
    """
    /* Keep the compiler from pairing and eliding an allocation and its free. */
    #define bench_escape(p) __asm__ volatile("" : : "g"(p) : "memory")
    """
    void bench_escape(void *p) nogil

