# cython: language_level=3
#
# mbuf.pxd -- memory buffers on UMA: the C types, the zones and the API.
#
# Every function here is nogil and never raises: allocation failures are
# NULL (errno is not touched unless said), bad arguments -1 / NULL.
#
# Layout of one mbuf (MSIZE = 256 bytes, 64-bit):
#
#     0  m_next m_nextpkt m_data m_len m_flags m_type        header, 32 bytes
#    32  +-- m_dat[MLEN = 224] ---------------------------+  no M_PKTHDR
#        | m_pkthdr (56 bytes)                             |  M_PKTHDR
#    88  | m_pktdat[MHLEN = 168]  or  m_ext (40 bytes)     |  M_EXT
#   256  +-------------------------------------------------+
#
# MLEN and MHLEN are FreeBSD's 64-bit values (224, 168).  As in today's
# FreeBSD the external-storage descriptor sits at a fixed place, right after
# the packet header, whether or not M_PKTHDR is set: an M_EXT mbuf without a
# packet header simply leaves the packet-header bytes unused.
#
# Naming: m_ (the mbuf(9) API), M_ (FreeBSD's macros, here inline functions),
# mb_ (zone glue and internals), mbuf_ (initialisation, limits, stats).

from libc.errno cimport ENOBUFS
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from posix.uio cimport iovec

from allocator_pyx.uma cimport uma_zone, uma_zone_stat, uma_refcnt_get

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>

    #define MSIZE           256
    #define MCLBYTES        2048
    #define MJUMPAGESIZE    4096
    #define MJUM9BYTES      9216
    #define MJUM16BYTES     16384
    #define MB_HDRLEN       32      /* m_next .. m_type */
    #define MB_PKTHDRLEN    56      /* struct m_pkthdr_s */
    #define MLEN            (MSIZE - MB_HDRLEN)                 /* 224 */
    #define MHLEN           (MLEN - MB_PKTHDRLEN)               /* 168 */
    #define MINCLSIZE       (MHLEN + 1)
    #define M_COPYALL       1000000000

    /* Packet header: FreeBSD's fields the dataplane uses, plus the
       virtio_net_hdr ones (gso_type, csum_start/offset) of offloaded frames
       from a vnet-hdr TAP: see CSUM_* below. */
    struct m_pkthdr_s {
        int32_t  len;           /* total packet length */
        int32_t  rcvif;         /* receiving interface index, 0 = none */
        uint32_t flags;         /* PH_* protocol flags, free for the stack */
        uint32_t csum_flags;    /* CSUM_* */
        uint32_t csum_data;
        uint32_t flowid;
        uint16_t ether_vtag;
        uint16_t tso_segsz;     /* gso_size */
        uint16_t csum_start;
        uint16_t csum_offset;
        uint8_t  gso_type;
        uint8_t  rsstype;
        uint8_t  l2hlen;
        uint8_t  l3hlen;
        uint8_t  l4hlen;
        uint8_t  pkt_spare8;
        uint16_t fibnum;
        uint64_t rcv_tstmp;
        uint32_t trace;         /* the stack's packet-trace tag, 0 = not traced */
        uint32_t pkt_spare32;
    };

    /* External storage: a cluster of one of the cluster kegs.  ext_cnt
       points into the keg's slab header (uma_find_refcnt), resolved once when
       the storage is attached and copied with the descriptor. */
    struct m_ext_s {
        uint32_t *ext_cnt;      /* reference count, in the slab header */
        char     *ext_buf;      /* start of the storage */
        uint32_t  ext_size;
        uint8_t   ext_type;     /* EXT_* */
        uint8_t   ext_flags;
        uint16_t  ext_spare;
        void     *ext_zone;     /* uma_zone * the storage returns to */
        void     *ext_arg;      /* spare, for future external types */
    };

    struct mbuf {
        struct mbuf *m_next;    /* next buffer of this packet */
        struct mbuf *m_nextpkt; /* next packet of a queue */
        char        *m_data;    /* first byte of data */
        int32_t      m_len;     /* bytes of data in this mbuf */
        uint16_t     m_flags;   /* M_* */
        uint8_t      m_type;    /* MT_* */
        uint8_t      m_spare;
        union {
            struct {
                struct m_pkthdr_s m_pkthdr;
                union {
                    struct m_ext_s m_ext;
                    char m_pktdat[MHLEN];
                };
            };
            char m_dat[MLEN];
        };
    };

    _Static_assert(sizeof(struct m_pkthdr_s) == MB_PKTHDRLEN, "m_pkthdr size");
    _Static_assert(sizeof(struct mbuf) == MSIZE, "struct mbuf must be MSIZE bytes");
    _Static_assert(offsetof(struct mbuf, m_dat) == MB_HDRLEN, "m_dat offset");
    _Static_assert(offsetof(struct mbuf, m_pktdat) == MB_HDRLEN + MB_PKTHDRLEN, "m_pktdat offset");
    _Static_assert(offsetof(struct mbuf, m_ext) == MB_HDRLEN + MB_PKTHDRLEN, "m_ext offset");
    """
    enum:
        MSIZE
        MCLBYTES
        MJUMPAGESIZE
        MJUM9BYTES
        MJUM16BYTES
        MLEN
        MHLEN
        MINCLSIZE
        M_COPYALL

    cdef struct m_pkthdr_s:
        int32_t len
        int32_t rcvif
        uint32_t flags
        uint32_t csum_flags
        uint32_t csum_data
        uint32_t flowid
        uint16_t ether_vtag
        uint16_t tso_segsz
        uint16_t csum_start
        uint16_t csum_offset
        uint8_t gso_type
        uint8_t rsstype
        uint8_t l2hlen
        uint8_t l3hlen
        uint8_t l4hlen
        uint16_t fibnum
        uint64_t rcv_tstmp
        uint32_t trace

    cdef struct m_ext_s:
        uint32_t *ext_cnt
        char *ext_buf
        uint32_t ext_size
        uint8_t ext_type
        uint8_t ext_flags
        void *ext_zone
        void *ext_arg

    cdef struct mbuf:
        mbuf *m_next
        mbuf *m_nextpkt
        char *m_data
        int32_t m_len
        uint16_t m_flags
        uint8_t m_type
        m_pkthdr_s m_pkthdr
        m_ext_s m_ext
        char m_pktdat[MHLEN]
        char m_dat[MLEN]

cdef enum:
    # m_flags
    M_EXT = 0x0001          # external storage (a cluster) attached
    M_PKTHDR = 0x0002       # first mbuf of a packet: m_pkthdr valid
    M_EOR = 0x0004          # end of record
    M_RDONLY = 0x0008       # storage is read-only
    M_BCAST = 0x0010
    M_MCAST = 0x0020
    M_PROMISC = 0x0040
    M_VLANTAG = 0x0080      # ether_vtag valid
    M_PROTO1 = 0x0100       # protocol-private
    M_PROTO2 = 0x0200
    M_PROTO3 = 0x0400
    M_PROTO4 = 0x0800
    # flags a packet header carries to a copy or a new head
    M_COPYFLAGS = 0x0FF6    # everything but M_EXT and M_RDONLY

    # m_type
    MT_NOTMBUF = 0
    MT_DATA = 1
    MT_HEADER = 1
    MT_SONAME = 8
    MT_CONTROL = 14
    MT_OOBDATA = 15

    # m_ext.ext_type
    EXT_CLUSTER = 1         # mbuf_cluster, attached by m_clget
    EXT_JUMBOP = 3
    EXT_JUMBO9 = 4
    EXT_JUMBO16 = 5
    EXT_PACKET = 6          # a cluster of the Packet zone's pairs

    # m_pkthdr.csum_flags: checksum and segmentation offload (FreeBSD's
    # values and meanings; the USO and CSUM_DEV_ bits are this stack's).
    # On output, CSUM_IP_TCP/UDP mean "the L4 checksum is deferred": the
    # field holds the pseudo-header sum, and the one's complement sum from
    # the L4 header (at l2hlen + l3hlen) to the end completes it at
    # csum_data bytes into that header.  CSUM_IP_TSO: cut into segments of
    # tso_segsz payload bytes, each with l3hlen + l4hlen bytes of headers.
    CSUM_IP = 0x00000001            # IPv4 header checksum
    CSUM_IP_UDP = 0x00000002
    CSUM_IP_TCP = 0x00000004
    CSUM_IP_TSO = 0x00000010
    CSUM_IP6_UDP = 0x00000200
    CSUM_IP6_TCP = 0x00000400
    CSUM_IP6_TSO = 0x00001000
    CSUM_IP_USO = 0x00010000        # UDP segmentation (Linux's UDP_L4 GSO)
    CSUM_IP6_USO = 0x00020000
    CSUM_DEV_PARTIAL = 0x00100000   # received: the device deferred a checksum at csum_start /
                                    # csum_offset (frame offsets); the network layer interprets it
    CSUM_DEV_GSO = 0x00200000       # received: a super-frame, gso_type and tso_segsz as the device said
    CSUM_L4_CALC = 0x04000000       # received: L4 checksum checked ...
    CSUM_L4_VALID = 0x08000000      # ... and good (virtio DATA_VALID)
    CSUM_DELAY_DATA = 0x00000006    # CSUM_IP_TCP | CSUM_IP_UDP
    CSUM_DELAY_DATA_IPV6 = 0x00000600
    CSUM_SEG = 0x00031010           # any segmentation: TSO or USO, IPv4 or IPv6

    # limits, indices of mbuf_set_limits()' array (kern.ipc.*)
    MBL_NMBCLUSTERS = 0
    MBL_NMBUFS = 1
    MBL_NMBJUMBOP = 2
    MBL_NMBJUMBO9 = 3
    MBL_NMBJUMBO16 = 4
    MBL_COUNT = 5

    # zones in the order mbuf_zone_stats() reports them (FreeBSD vmstat -z order)
    MB_ZONE_PACKET = 0
    MB_ZONE_MBUF = 1
    MB_ZONE_CLUST = 2
    MB_ZONE_JUMBOP = 3
    MB_ZONE_JUMBO9 = 4
    MB_ZONE_JUMBO16 = 5
    MB_NZONES = 6

    MB_IOV_MAX = 64         # iovecs m_writev_fd builds on its stack

# The zones (valid after mbuf_init(), which importing the module runs).
cdef uma_zone *zone_mbuf
cdef uma_zone *zone_clust
cdef uma_zone *zone_pack
cdef uma_zone *zone_jumbop
cdef uma_zone *zone_jumbo9
cdef uma_zone *zone_jumbo16

# --- FreeBSD's macros, as inline functions ---------------------------------

cdef inline char *mtod(mbuf *m) noexcept nogil:
    return m.m_data

cdef inline uint32_t m_refcnt(mbuf *m) noexcept nogil:
    """References to m's storage (1 for internal storage)."""
    if m.m_flags & M_EXT:
        return uma_refcnt_get(m.m_ext.ext_cnt)
    return 1

cdef inline bint M_WRITABLE(mbuf *m) noexcept nogil:
    """May m's data be written in place: not read-only and not shared."""
    if m.m_flags & M_RDONLY:
        return False
    if m.m_flags & M_EXT:
        return uma_refcnt_get(m.m_ext.ext_cnt) == 1
    return True

cdef inline char *M_START(mbuf *m) noexcept nogil:
    if m.m_flags & M_EXT:
        return m.m_ext.ext_buf
    if m.m_flags & M_PKTHDR:
        return m.m_pktdat
    return m.m_dat

cdef inline int M_SIZE(mbuf *m) noexcept nogil:
    if m.m_flags & M_EXT:
        return <int>m.m_ext.ext_size
    if m.m_flags & M_PKTHDR:
        return MHLEN
    return MLEN

cdef inline int M_LEADINGSPACE(mbuf *m) noexcept nogil:
    """Bytes free before the data that may be used (0 when not writable)."""
    if not M_WRITABLE(m):
        return 0
    return <int>(m.m_data - M_START(m))

cdef inline int M_TRAILINGSPACE(mbuf *m) noexcept nogil:
    """Bytes free after the data that may be used (0 when not writable)."""
    if not M_WRITABLE(m):
        return 0
    return <int>((M_START(m) + M_SIZE(m)) - (m.m_data + m.m_len))

cdef inline void M_ALIGN(mbuf *m, int length) noexcept nogil:
    """Place length bytes at the end of an empty mbuf's storage, long-aligned,
    leaving the room in front for headers to be prepended."""
    m.m_data = M_START(m) + ((M_SIZE(m) - length) & ~(<int>sizeof(long) - 1))

# --- setup, limits, stats ----------------------------------------------------

cdef int mbuf_init() noexcept nogil                    # 0, or -1 if a zone cannot be made
cdef uint64_t mbuf_physmem() noexcept nogil            # RAM, or a smaller cgroup v2 limit
cdef void mbuf_default_limits(uint64_t physmem, uint64_t *lim) noexcept nogil
cdef int mbuf_check_limits(const uint64_t *lim) noexcept nogil     # 0 or EINVAL
cdef int mbuf_set_limits(const uint64_t *lim) noexcept nogil       # all MBL_COUNT; 0 or EINVAL
cdef int mbuf_set_limit(int which, uint64_t value) noexcept nogil  # 0 or EINVAL
cdef uint64_t mbuf_get_limit(int which) noexcept nogil
cdef uint64_t mbuf_drain() noexcept nogil               # bytes returned to the OS
cdef int mbuf_zone_stats(uma_zone_stat *st, int n) noexcept nogil  # rows filled

# --- allocation ----------------------------------------------------------------
# how: M_NOWAIT or M_WAITOK (uma.pxd); type: MT_*; flags: M_PKTHDR and M_COPYFLAGS.

cdef mbuf *m_get(int how, int type) noexcept nogil
cdef mbuf *m_gethdr(int how, int type) noexcept nogil
cdef mbuf *m_getcl(int how, int type, int flags) noexcept nogil
cdef mbuf *m_getjcl(int how, int type, int flags, int size) noexcept nogil
cdef mbuf *m_getm(int length, int how, int type, int flags) noexcept nogil
cdef int m_clget(mbuf *m, int how) noexcept nogil      # M_EXT when attached, else 0
cdef int m_cljget(mbuf *m, int how, int size) noexcept nogil
cdef mbuf *m_free(mbuf *m) noexcept nogil              # returns m.m_next
cdef void m_freem(mbuf *m) noexcept nogil

# --- packet headers ---------------------------------------------------------

cdef void m_move_pkthdr(mbuf *to, mbuf *fr) noexcept nogil
cdef void m_dup_pkthdr(mbuf *to, mbuf *fr) noexcept nogil
cdef void m_demote_pkthdr(mbuf *m) noexcept nogil

# --- chains ------------------------------------------------------------------

cdef mbuf *m_copym(mbuf *m, int off, int length, int how) noexcept nogil
cdef mbuf *m_copypacket(mbuf *m, int how) noexcept nogil
cdef mbuf *m_dup(mbuf *m, int how) noexcept nogil
cdef mbuf *m_prepend(mbuf *m, int length, int how) noexcept nogil
cdef mbuf *M_PREPEND(mbuf *m, int length, int how) noexcept nogil
cdef mbuf *m_pullup(mbuf *m, int length) noexcept nogil
cdef void m_adj(mbuf *m, int req_len) noexcept nogil
cdef void m_cat(mbuf *m, mbuf *n) noexcept nogil
cdef void m_catpkt(mbuf *m, mbuf *n) noexcept nogil
cdef mbuf *m_split(mbuf *m0, int len0, int how) noexcept nogil
cdef mbuf *m_defrag(mbuf *m0, int how) noexcept nogil
cdef mbuf *m_collapse(mbuf *m0, int how, int maxfrags) noexcept nogil
cdef int m_copydata(mbuf *m, int off, int length, char *cp) noexcept nogil
cdef int m_copyback(mbuf *m0, int off, int length, const char *cp) noexcept nogil
cdef int m_append(mbuf *m0, int length, const char *cp) noexcept nogil
cdef int m_makewritable(mbuf *m0, int off, int length, int how) noexcept nogil
cdef unsigned int m_length(mbuf *m0, mbuf **last) noexcept nogil
cdef unsigned int m_fixhdr(mbuf *m0) noexcept nogil
cdef int m_count(mbuf *m0) noexcept nogil
cdef mbuf *m_devget(const char *buf, int totlen, int off, int rcvif) noexcept nogil

# --- packet queues (FreeBSD's struct mbufq, sys/sys/mbuf.h) ----------------------
#
# A FIFO of packets linked through m_nextpkt, with a length and a limit.
# mbufq_enqueue refuses a packet when the queue is full (ENOBUFS) and leaves
# it to the caller, who counts the drop under its own reason; mbufq_drain
# frees everything and says how much, for the same reason.  Not locked: the
# owner of the queue serialises (the dataplane holds its lock).

cdef struct mbufq:
    mbuf *mq_head
    mbuf *mq_tail
    int mq_len
    int mq_maxlen

cdef inline void mbufq_init(mbufq *mq, int maxlen) noexcept nogil:
    mq.mq_head = NULL
    mq.mq_tail = NULL
    mq.mq_len = 0
    mq.mq_maxlen = maxlen

cdef inline int mbufq_len(const mbufq *mq) noexcept nogil:
    return mq.mq_len

cdef inline bint mbufq_full(const mbufq *mq) noexcept nogil:
    return mq.mq_len >= mq.mq_maxlen

cdef inline int mbufq_enqueue(mbufq *mq, mbuf *m) noexcept nogil:
    """Append m (one packet); ENOBUFS, m untouched, when the queue is full."""
    if mbufq_full(mq):
        return ENOBUFS
    m.m_nextpkt = NULL
    if mq.mq_tail != NULL:
        mq.mq_tail.m_nextpkt = m
    else:
        mq.mq_head = m
    mq.mq_tail = m
    mq.mq_len += 1
    return 0

cdef inline mbuf *mbufq_dequeue(mbufq *mq) noexcept nogil:
    """The oldest packet, unlinked; NULL when empty."""
    cdef mbuf *m = mq.mq_head
    if m != NULL:
        mq.mq_head = m.m_nextpkt
        if mq.mq_head == NULL:
            mq.mq_tail = NULL
        m.m_nextpkt = NULL
        mq.mq_len -= 1
    return m

cdef inline int mbufq_drain(mbufq *mq) noexcept nogil:
    """Free every packet; the number freed."""
    cdef int n = 0
    cdef mbuf *m = mbufq_dequeue(mq)
    while m != NULL:
        m_freem(m)
        n += 1
        m = mbufq_dequeue(mq)
    return n

# --- file descriptors (the dataplane) ------------------------------------------

cdef mbuf *m_read_fd(int fd, int maxlen, int leading, int rcvif, int how) noexcept nogil
cdef ssize_t m_discard_fd(int fd) noexcept nogil
cdef int m_to_iovec(mbuf *m, iovec *iov, int maxiov) noexcept nogil
cdef ssize_t m_writev_fd(int fd, mbuf *m) noexcept nogil

# --- the safe Python handle ----------------------------------------------------

cdef class Mbuf:
    cdef mbuf *m                # chain head; NULL once freed or handed over
    cdef object __weakref__
    cdef mbuf *_chain(self) except NULL         # the chain, or ValueError once freed
    cdef int _range(self, off, length, int total) except -1
    cdef int _span(self, mbuf *m, int off, length) except -1   # checked length of [off, off+length)

cdef Mbuf mbuf_wrap(mbuf *m)    # take ownership of a chain (NULL -> None not allowed)
cdef mbuf *mbuf_unwrap(Mbuf h) except? NULL    # take the chain back from a handle
