# cython: language_level=3
#
# includes.pxd -- the system interfaces every extension of the project uses,
# declared once (after uvloop's includes/*.pxd).
#
# What Cython's own libc/posix .pxd files do not declare, or declare without
# nogil, is here: pthread mutexes, condition variables and thread keys, epoll,
# eventfd, unshare(2), the sysconf names, branch hints and one monotonic
# clock.  Modules cimport the names from here instead of writing their own
# `cdef extern` blocks, so a signature is corrected in one place.
#
# Everything is nogil: the allocator and the dataplane call these from
# threads that do not hold the GIL.

from libc.stdint cimport int64_t, uint32_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

# --- threads (pthread(3)) ---------------------------------------------------------
cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    ctypedef unsigned int pthread_key_t
    int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *a)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_condattr_init(pthread_condattr_t *a)
    int pthread_condattr_setclock(pthread_condattr_t *a, int clock)
    int pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *a)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const timespec *t)
    int pthread_key_create(pthread_key_t *k, void (*dtor)(void *) noexcept nogil)
    int pthread_setspecific(pthread_key_t k, const void *v)

# --- event loop (epoll(7), eventfd(2)) ------------------------------------------------
cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *ev)
    int epoll_wait(int epfd, epoll_event *evs, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC

# --- processes and memory ---------------------------------------------------------------
cdef extern from "<sched.h>" nogil:
    int unshare(int flags)
    enum:
        CLONE_FILES

cdef extern from "<unistd.h>" nogil:
    enum:
        _SC_PHYS_PAGES          # glibc; posix.unistd has _SC_PAGESIZE, usleep, read, write

# --- compiler hints -----------------------------------------------------------------------
cdef extern from *:
    """
    #ifndef MBUMA_INCLUDES_H
    #define MBUMA_INCLUDES_H
    #define likely(x)   __builtin_expect(!!(x), 1)
    #define unlikely(x) __builtin_expect(!!(x), 0)
    #include <errno.h>
    static inline void set_errno(int e) { errno = e; }
    #endif
    """
    bint likely(bint) nogil
    bint unlikely(bint) nogil
    void set_errno(int e) nogil     # a NULL-returning function's reason, as libc does


cdef inline int64_t now_ns() noexcept nogil:
    """CLOCK_MONOTONIC in nanoseconds: the one clock of the allocator's sleeps,
    the dataplane's timers and every benchmark loop (never steps with the
    wall clock)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
