# if_packet.pxi -- an attached port's packet socket (forwarder/attach.py,
# attach_mode "packet") read through its receive ring, written in batches.
#
# The socket is read and written as a TAP with IFF_VNET_HDR is (if_tap.pxi):
# a struct virtio_net_hdr in front of every frame, super-frames and partial
# checksums both ways.  What differs is the way in, and the way out (below):
# the socket has a PACKET_RX_RING (TPACKET_V2, mapped by
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
# Out: the forwarding loop queues what it sends through a packet socket
# (pk_enqueue, from dp_transmit: complete frames, virtio-net header in
# front) and sends each port's queue with one sendmmsg() when the burst that
# filled it is done (pk_flush, from dp_run; a full queue of DP_TXQ frames is
# sent at once).  A write into a veth costs what it does mostly in the
# peer's receive path, which runs inside the call and per frame; what a
# batch saves is the system call around each frame: 2.3 us a 60-byte frame
# in batches of 32 against 2.9 us a write() in a C loop on this machine.
# Super-frames and chains go the same way (a msghdr per frame, an iovec per
# mbuf), so nothing falls back.  Frames the Python side sends (the lock held
# outside the loop: dp.tx_batching 0) are written at once, as a TAP's are.
#
# Trade-offs: a frame waits for the rest of its burst (at most DP_BURST
# frames' work, tens of microseconds) before it leaves, and its mbufs are
# held until then -- never across a wake-up: the queue is empty whenever
# the loop lets go of dp.lock.  A queue holding DP_TXQ_BYTES (16 KB: a
# TCP super-frame, or ten full-size frames) is sent at once: a system call
# saved is little beside what that many bytes cost, while each super-frame
# held for the end of a burst is data the receiver has not seen yet and an
# ACK its sender waits for longer (benchmarks/README.md, "Container
# wiring": one TCP stream with a 64 KB limit).  Bursts of small frames,
# where the calls are the cost, still leave in one call.  A frame the
# kernel refuses (the veth's peer backlog full: ENOBUFS; EAGAIN: the send
# buffer) ends sendmmsg's batch
# there; it is counted (tx_errors, DROP_TX_ERROR) and the rest is sent
# with the next call: at most one call per frame, never a wait, never a
# retry of the same frame.  sendmmsg() does not say why that frame failed
# when earlier ones went out; the next call does, failing at it again when
# the cause persists (an interface gone: ENETDOWN, ENXIO; then the rest of
# the queue is dropped with it).
#
# Not a PACKET_TX_RING: once a socket has one, every send goes through its
# slots (tpacket_snd), so a super-frame would need slots of 64 KB or a
# second socket; and a veth copies the ring's pages anyway when it hands
# the frame to its peer (skb_orphan_frags: the slots are zero-copy frags).
# Measured in the same C loop: 2.6 us a frame with a ring and a send() per
# 32 frames, slower than sendmmsg().
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
    cdef struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    cdef struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags) nogil
    enum:
        SOL_SOCKET
        SO_ERROR
        MSG_DONTWAIT

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


# --- out: batches of frames, one sendmmsg() each (see the header) -----------------

cdef void pk_enqueue(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """Queue a complete frame, virtio-net header in front, for the end of the
    burst (m is the queue's now); a full queue is sent first, and one that
    holds DP_TXQ_BYTES at once.  (A burst of DP_BURST frames read fills the
    64 slots only when its frames make more than two each and all of them
    small -- ARP holds flushed, say: DP_TXQ_BYTES nearly always comes first.)"""
    if ifp.txq_len == DP_TXQ:
        pk_flush(dp, ifp)
    ifp.txq[ifp.txq_len] = m
    ifp.txq_len += 1
    ifp.txq_bytes += m.m_pkthdr.len
    if not ifp.txq_dirty:
        ifp.txq_dirty = 1
        dp.txq_dirty[dp.ntxq_dirty] = ifp.index
        dp.ntxq_dirty += 1
    if ifp.txq_bytes >= DP_TXQ_BYTES:
        pk_flush(dp, ifp)               # a super-frame, or a burst's worth of bytes: send now


cdef inline void pk_tx_done(dp_state *dp, dp_ifnet *ifp, mbuf *m, bint sent) noexcept nogil:
    """Count a queued frame sent or refused (as dp_transmit counts a write), free it."""
    cdef uint32_t tid = m.m_pkthdr.trace
    cdef int len = m.m_pkthdr.len - ifp.vnet_hdrlen
    if sent:
        ifp.tx_packets += 1
        ifp.tx_bytes += len
        if unlikely(tid != 0):
            tr_step(dp, tid, TR_TX, 0, <uint32_t>len, 0, 0, <uint32_t>ifp.index, NULL, 0)
            tr_set_end(dp, tid, TR_END_TRANSMITTED, ifp.index)
    else:
        ifp.tx_errors += 1
        dp_drop_count(dp, m, DROP_TX_ERROR)
    m_freem(m)


cdef void pk_flush(dp_state *dp, dp_ifnet *ifp) noexcept nogil:
    """Send the port's queue: sendmmsg() of as many frames as DP_TXQ_IOV
    iovecs carry, again for the rest; every frame is counted and freed."""
    cdef mmsghdr msgs[DP_TXQ]
    cdef iovec iov[DP_TXQ_IOV]
    cdef int n = ifp.txq_len, i = 0, j, k, c, used, r, err
    cdef mbuf **q = ifp.txq
    ifp.txq_len = 0
    ifp.txq_bytes = 0
    while i < n:
        k = 0
        used = 0
        while i + k < n:
            c = m_to_iovec(q[i + k], &iov[used], DP_TXQ_IOV - used)
            if c < 0:
                break
            memset(&msgs[k], 0, sizeof(mmsghdr))
            msgs[k].msg_hdr.msg_iov = &iov[used]
            msgs[k].msg_hdr.msg_iovlen = <size_t>c
            used += c
            k += 1
        if k == 0:                      # more mbufs than DP_TXQ_IOV: refused, as writev() would
            pk_tx_done(dp, ifp, q[i], False)
            i += 1
            continue
        j = 0
        while j < k:
            r = -1
            err = ifp.lost_errno
            if not err:
                r = sendmmsg(ifp.fd, &msgs[j], <unsigned int>(k - j), MSG_DONTWAIT)
                err = errno if r < 0 else 0
            if r > 0:
                ifp.tx_batches += 1
                for c in range(r):
                    pk_tx_done(dp, ifp, q[i + j + c], True)
                j += r
            elif ifp.lost_errno or err == ENETDOWN or err == ENXIO or err == ENODEV or err == EBADF:
                while j < k:                # the interface is gone: so is the rest
                    pk_tx_done(dp, ifp, q[i + j], False)
                    j += 1
            else:                           # this frame refused (ENOBUFS, EAGAIN, EMSGSIZE, ...)
                pk_tx_done(dp, ifp, q[i + j], False)
                j += 1
        i += k


cdef void dp_tx_flush_all(dp_state *dp) noexcept nogil:
    """Send every queue filled since the last call (dp_run: after each burst)."""
    cdef int i
    cdef dp_ifnet *ifp
    for i in range(dp.ntxq_dirty):
        ifp = &dp.ifs[dp.txq_dirty[i]]
        ifp.txq_dirty = 0
        if ifp.txq_len:
            pk_flush(dp, ifp)
    dp.ntxq_dirty = 0
