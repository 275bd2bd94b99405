# if_packet.pxi -- an attached port's packet socket (forwarder/attach.py,
# attach_mode "packet") read through its receive ring.
#
# The socket is read and written as a TAP with IFF_VNET_HDR is (if_tap.pxi):
# a struct virtio_net_hdr in front of every frame, super-frames and partial
# checksums both ways, one writev() per frame out.  What differs is the way
# in: the socket has a PACKET_RX_RING (TPACKET_V2, mapped by
# forwarder/netns.py: packet_open), a ring of fixed-size slots the kernel
# copies each frame into, behind the header and a struct tpacket2_hdr whose
# tp_status hands the slot over (TP_STATUS_USER: ours; writing
# TP_STATUS_KERNEL gives it back).  Reading a frame is then a memcpy into a
# Packet-zone cluster and no system call: a recvmsg() of a packet socket
# costs what a TAP's read() does, about as much as the rest of the frame's
# work here.  The slots are sized for MTU-sized frames; a longer one (a TCP
# super-frame) takes its slot with TP_STATUS_COPY and a cut-short copy, and
# the whole frame is queued on the socket itself (PACKET_COPY_THRESH), in
# order, where tap_read_chain reads it with readv() into the jumbo spares:
# one copy, as from a TAP.
#
# The kernel fills the slots in order and we take them in order, so
# ring_next is always the next slot it will have filled.  An empty ring
# with the socket woken means a socket error (ENETDOWN: the interface went
# away or down); getsockopt(SO_ERROR) reads and clears it, or epoll would
# report it for ever.

cdef extern from "<linux/if_packet.h>":
    cdef struct tpacket2_hdr:
        uint32_t tp_status
        uint32_t tp_len
        uint32_t tp_snaplen
        uint16_t tp_mac
        uint16_t tp_net
    enum:
        TP_STATUS_KERNEL
        TP_STATUS_USER
        TP_STATUS_COPY

cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    int getsockopt(int fd, int level, int name, void *value, socklen_t *len) nogil
    enum:
        SOL_SOCKET
        SO_ERROR

cdef extern from *:
    """
    /* tp_status is shared with the kernel: read it before the slot's bytes,
       give the slot back after them */
    static inline uint32_t pk_status(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void pk_release(uint32_t *p) { __atomic_store_n(p, 0, __ATOMIC_RELEASE); }
    """
    uint32_t pk_status(uint32_t *p) nogil
    void pk_release(uint32_t *p) nogil


cdef inline tpacket2_hdr *pk_slot(dp_ifnet *ifp) noexcept nogil:
    return <tpacket2_hdr *>(ifp.ring + <size_t>ifp.ring_next * ifp.ring_frame_size)


cdef inline void pk_next(dp_ifnet *ifp, tpacket2_hdr *h) noexcept nogil:
    """Give the slot back and move on to the next one."""
    pk_release(&h.tp_status)
    ifp.ring_next += 1
    if ifp.ring_next == ifp.ring_frames:
        ifp.ring_next = 0


cdef mbuf *packet_read(dp_ifnet *ifp) noexcept nogil:
    """The next frame of the ring, virtio-net header in front; NULL with
    errno as tap_read's: EAGAIN (none), ENOBUFS (no cluster: the slot stays
    ours, for dp_rx_burst to retry or to give up with packet_discard),
    EMSGSIZE (cut short and dropped, counted by dp_rx_burst), or the
    socket's pending error."""
    cdef tpacket2_hdr *h = pk_slot(ifp)
    cdef uint32_t st = pk_status(&h.tp_status)
    cdef mbuf *m
    cdef int err = 0, n
    cdef socklen_t sl = sizeof(int)
    if not st & TP_STATUS_USER:
        if getsockopt(ifp.fd, SOL_SOCKET, SO_ERROR, &err, &sl) == 0 and err != 0:
            set_errno(err)
        else:
            set_errno(EAGAIN)
        return NULL
    if st & TP_STATUS_COPY:             # too long for a slot: whole on the socket's queue
        m = tap_read_chain(ifp)
        if m == NULL:
            err = errno
            if err == ENOBUFS or err == ENETDOWN:
                set_errno(err)          # the slot and the queued frame wait
                return NULL
            pk_next(ifp, h)             # EMSGSIZE (longer than 64 KB), or not there
            set_errno(EMSGSIZE)
            return NULL
        pk_next(ifp, h)
        return m
    if h.tp_snaplen < h.tp_len:         # cut short, no copy queued (the socket's buffer was full)
        pk_next(ifp, h)
        set_errno(EMSGSIZE)
        return NULL
    n = <int>h.tp_snaplen + ifp.vnet_hdrlen
    m = m_getcl(M_NOWAIT, MT_DATA, M_PKTHDR)
    if m == NULL:
        set_errno(ENOBUFS)
        return NULL
    memcpy(m.m_data, <char *>h + h.tp_mac - ifp.vnet_hdrlen, <size_t>n)
    pk_next(ifp, h)
    m.m_len = n
    m.m_pkthdr.len = n
    m.m_pkthdr.rcvif = ifp.index
    return m


cdef ssize_t packet_discard(dp_ifnet *ifp) noexcept nogil:
    """Drop the next frame (no buffer for it): as m_discard_fd does for a TAP."""
    cdef tpacket2_hdr *h = pk_slot(ifp)
    cdef uint32_t st = pk_status(&h.tp_status)
    if not st & TP_STATUS_USER:
        set_errno(EAGAIN)
        return -1
    if st & TP_STATUS_COPY:
        m_discard_fd(ifp.fd)
    pk_next(ifp, h)
    return 1
