# dp_loop.pxi -- the forwarding loop: epoll, read bursts, timers.
#
# Run to completion: a frame read in dp_rx_burst goes through every stage
# (and is transmitted, held for ARP or dropped) before the next one is read.
# The loop takes dp.lock once per wake-up, never per packet; the control
# plane's changes land between bursts.


cdef inline void dp_rx_frame(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    m.m_pkthdr.rcvif = ifp.index
    if ifp.vnet_hdrlen and not tap_input(dp, ifp, m):
        ifp.rx_packets += 1
        return
    ifp.rx_packets += 1
    ifp.rx_bytes += m.m_pkthdr.len
    if unlikely(ifp.observe):           # trace or capture: the one test per frame
        dp_observe_rx(dp, ifp, m)
    if unlikely(ifp.mirror_of >= 0):
        dp_inject(dp, ifp, m)
        return
    ether_input(dp, ifp, m)


cdef void dp_rx_burst(dp_state *dp, dp_ifnet *ifp) noexcept nogil:
    """Read up to DP_BURST frames, each straight into a Packet-zone cluster
    (and jumbo clusters for a super-frame: tap_read), and run each through
    tap_input and ether_input."""
    cdef int k, err
    cdef mbuf *m
    for k in range(DP_BURST):
        m = tap_read(ifp)
        if m == NULL:
            err = errno
            if err == EAGAIN:
                return
            if err == EMSGSIZE:         # longer than the buffers we had: cut short, dropped
                ifp.rx_nobuf += 1
                dp.drops[DROP_NO_BUFFER] += 1
                continue
            if err == ENOBUFS:
                # No buffer (a zone limit).  Free what is held for ARP and
                # retry once; otherwise the frame must still leave the
                # queue, or epoll keeps waking us for it.
                if arp_reclaim(dp) > 0:
                    m = tap_read(ifp)
                    if m != NULL:
                        dp_rx_frame(dp, ifp, m)
                        continue
                if tap_discard(ifp) < 0:
                    return
                ifp.rx_nobuf += 1
                dp.drops[DROP_NO_BUFFER] += 1
                continue
            if err != EINTR:
                ifp.rx_errors += 1
            if err == EBADFD or err == ENODEV or err == ENXIO or err == EIO or err == EBADF:
                # The TAP is gone for good (say the namespace it was moved to
                # was destroyed with its container): stop polling it, or
                # epoll reports it ready forever and the loop spins.
                epoll_ctl(dp.epfd, EPOLL_CTL_DEL, ifp.fd, NULL)
                ifp.lost_errno = err
            return
        dp_rx_frame(dp, ifp, m)


cdef void dp_timers(dp_state *dp) noexcept nogil:
    arp_timer(dp)
    nd6_timer(dp)
    nd6_ra_timer(dp)


cdef void dp_run(dp_state *dp) noexcept nogil:
    """The forwarding loop: wait for frames, run each burst to completion
    under dp.lock, fire timers; until dp.stop."""
    cdef epoll_event evs[DP_EPOLL_MAX]
    cdef int n, i
    cdef uint32_t tok
    cdef uint64_t junk
    # A private file-descriptor table for this thread.  In a process with
    # several threads the kernel takes and drops a reference on the file at
    # every read()/write() (fget/fput, atomics on a shared line); with a table
    # of its own the thread gets fdget's single-owner fast path, as a
    # single-threaded process does -- two atomics saved per system call, four
    # per packet.  The TAPs, the epoll and the eventfd are all open by now;
    # fds other threads open or close later are not seen here, and the
    # descriptors copied here are released when this thread exits.
    unshare(CLONE_FILES)
    dp.now_ns = now_ns()
    dp.icmp_refill_ns = dp.now_ns
    dp.next_timer_ns = dp.now_ns
    while not dp.stop:
        n = epoll_wait(dp.epfd, evs, DP_EPOLL_MAX, 50)
        uma_thread_trim()           # a limit lowered: give back what we cache beyond it
        pthread_mutex_lock(&dp.lock)
        dp.now_ns = now_ns()
        dp.tx_batching = 1              # packet sockets' output queued, sent after each burst
        icmp_refill(dp)
        for i in range(n):
            tok = evs[i].data.u32
            if tok == DP_WAKE:
                read(dp.wakefd, &junk, 8)
            elif <int>tok < dp.nifs and dp.ifs[tok].fd >= 0:
                dp_rx_burst(dp, &dp.ifs[tok])
                if dp.ntxq_dirty:
                    dp_tx_flush_all(dp)
        if dp.now_ns >= dp.next_timer_ns:
            dp_timers(dp)
            dp.next_timer_ns = dp.now_ns + DP_TIMER_NS
        if dp.ntxq_dirty:
            dp_tx_flush_all(dp)
        dp.tx_batching = 0              # nothing queued while the lock is let go
        dp.loops += 1
        dp.last_progress_ns = dp.now_ns
        pthread_mutex_unlock(&dp.lock)
    # Leaving: hand this thread's cached buckets back to the zones.
    uma_thread_flush()
