# cython: language_level=3
"""nogil timing loops over the mbuf API, for scripts/bench_alloc.py.

They call the mbuf layer the way the dataplane does: through mbuf.pxd (a
call through the module's exported function table), without the GIL.  Each
loop writes one byte of the data it gets, as a consumer would, and hides the
pointer from the compiler so nothing is elided."""

from libc.stdint cimport int64_t
from allocator_pyx.benchutil cimport bench_escape
from allocator_pyx.includes cimport now_ns

from allocator_pyx.uma cimport M_NOWAIT, uma_zalloc, uma_zfree
from allocator_pyx.mbuf cimport (M_COPYALL, M_PKTHDR, MCLBYTES, MT_DATA, m_append, m_clget,
                                 m_copym, m_free, m_freem, m_get, m_getcl, mbuf, mtod,
                                 zone_pack)

def getcl_freem_ns(long n) -> float:
    """ns per m_getcl(M_NOWAIT, MT_DATA, M_PKTHDR) + m_freem: a cached pair
    of the Packet zone out and back."""
    cdef long i
    cdef mbuf *m
    cdef int64_t t0, t1
    with nogil:
        m_freem(m_getcl(M_NOWAIT, MT_DATA, M_PKTHDR))     # warm the cache
        t0 = now_ns()
        for i in range(n):
            m = m_getcl(M_NOWAIT, MT_DATA, M_PKTHDR)
            mtod(m)[0] = <char>i
            bench_escape(m)
            m_freem(m)
        t1 = now_ns()
    return (t1 - t0) / <double>n


def pack_pair_ns(long n) -> float:
    """ns per bare uma_zalloc + uma_zfree on the Packet zone (its ctor runs;
    no mbuf-layer code): the floor m_getcl + m_freem is measured against."""
    cdef long i
    cdef mbuf *m
    cdef int64_t t0, t1
    with nogil:
        uma_zfree(zone_pack, uma_zalloc(zone_pack, M_NOWAIT))
        t0 = now_ns()
        for i in range(n):
            m = <mbuf *>uma_zalloc(zone_pack, M_NOWAIT)
            m.m_ext.ext_buf[0] = <char>i
            bench_escape(m)
            uma_zfree(zone_pack, m)
        t1 = now_ns()
    return (t1 - t0) / <double>n


def get_free_ns(long n) -> float:
    """ns per m_get + m_free (a plain mbuf)."""
    cdef long i
    cdef mbuf *m
    cdef int64_t t0, t1
    with nogil:
        m_free(m_get(M_NOWAIT, MT_DATA))
        t0 = now_ns()
        for i in range(n):
            m = m_get(M_NOWAIT, MT_DATA)
            mtod(m)[0] = <char>i
            bench_escape(m)
            m_free(m)
        t1 = now_ns()
    return (t1 - t0) / <double>n


def get_clget_freem_ns(long n) -> float:
    """ns per m_get + m_clget + m_freem: mbuf and cluster from the two
    primary zones, the path the Packet zone saves."""
    cdef long i
    cdef mbuf *m
    cdef int64_t t0, t1
    with nogil:
        m = m_get(M_NOWAIT, MT_DATA)
        m_clget(m, M_NOWAIT)
        m_freem(m)
        t0 = now_ns()
        for i in range(n):
            m = m_get(M_NOWAIT, MT_DATA)
            m_clget(m, M_NOWAIT)
            mtod(m)[0] = <char>i
            bench_escape(m)
            m_freem(m)
        t1 = now_ns()
    return (t1 - t0) / <double>n


def copym_3cl_ns(long n) -> float:
    """ns per m_copym(M_COPYALL) + m_freem of a chain of three full 2k
    clusters: three mbufs allocated, three reference counts raised and
    dropped, no data copied."""
    cdef long i
    cdef int k
    cdef mbuf *top = NULL
    cdef mbuf *m
    cdef mbuf *c
    cdef int64_t t0, t1
    cdef char fill[MCLBYTES]
    for k in range(MCLBYTES):
        fill[k] = <char>k
    with nogil:
        for k in range(3):
            m = m_getcl(M_NOWAIT, MT_DATA, M_PKTHDR if k == 0 else 0)
            m_append(m, MCLBYTES, fill)
            if top == NULL:
                top = m
            else:
                c = top
                while c.m_next != NULL:
                    c = c.m_next
                c.m_next = m
        top.m_pkthdr.len = 3 * MCLBYTES
        m_freem(m_copym(top, 0, M_COPYALL, M_NOWAIT))
        t0 = now_ns()
        for i in range(n):
            c = m_copym(top, 0, M_COPYALL, M_NOWAIT)
            bench_escape(c)
            m_freem(c)
        t1 = now_ns()
        m_freem(top)
    return (t1 - t0) / <double>n
