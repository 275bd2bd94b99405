# dp_subr.pxi -- what every stage uses: packet pointers, the drop leg, new
# packets and the transmit leg.  Included by dataplane.pyx (one C unit).


cdef inline unsigned char *mdata(mbuf *m) noexcept nogil:
    return <unsigned char *>m.m_data


cdef inline void dp_drop_count(dp_state *dp, mbuf *m, int why) noexcept nogil:
    """Count m as dropped for why (dp_drop.h), m kept: the stage answers it
    (an ICMP error) or frees it."""
    dp.drops[why] += 1
    trace_drop(dp, m, why)
    cap_drop(dp, m, why)


cdef inline void dp_drop_m(dp_state *dp, mbuf *m, int why) noexcept nogil:
    """The drop leg of every stage: count the reason (dp_drop.h), free m."""
    dp_drop_count(dp, m, why)
    m_freem(m)


cdef int dp_drop_queue(dp_state *dp, mbufq *q, int why) noexcept nogil:
    """Drop every packet of q (each counted and traced); returns how many."""
    cdef int n = 0
    cdef mbuf *m = mbufq_dequeue(q)
    while m != NULL:
        dp_drop_m(dp, m, why)
        n += 1
        m = mbufq_dequeue(q)
    return n


cdef mbuf *dp_new_packet(int len) noexcept nogil:
    """An empty packet with DP_LINKHDR bytes of leading space and room for
    len bytes after it (header mbuf, or a cluster when it does not fit)."""
    cdef mbuf *m
    if len + DP_LINKHDR <= MHLEN:
        m = m_gethdr(M_NOWAIT, MT_DATA)
    else:
        m = m_getcl(M_NOWAIT, MT_DATA, M_PKTHDR)
    if m == NULL:
        return NULL
    m.m_data += DP_LINKHDR
    m.m_len = len
    m.m_pkthdr.len = len
    return m


cdef void dp_punt(dp_state *dp, dp_ifnet *ifp, mbuf *m, bint l3) noexcept nogil:
    """To the port's mirror in the control-plane namespace, the frame as it
    arrived (forwarder/cplane.py); l3: m starts at its IP header, the
    Ethernet header still in the leading space ether_input stepped over.
    Written as any transmit (the mirror counts it; a full mirror is a write
    error there, never a wait)."""
    if l3:
        m.m_data -= ETHER_HDR_LEN
        m.m_len += ETHER_HDR_LEN
        m.m_pkthdr.len += ETHER_HDR_LEN
    trace(dp, m, TR_PUNT, 0, 0, 0, 0, <uint32_t>ifp.mirror)
    trace_end(dp, m, TR_END_PUNTED, ifp.mirror)
    dp_transmit(dp, &dp.ifs[ifp.mirror], m)


cdef void dp_inject(dp_state *dp, dp_ifnet *mifp, mbuf *m) noexcept nogil:
    """What the mirror's kernel sent (its routing daemons' packets, its ARP
    and ND): out of the port, unchanged."""
    dp_transmit(dp, &dp.ifs[mifp.mirror_of], m)


cdef void dp_transmit(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """writev() the chain (a complete frame) to the TAP, behind its
    virtio-net header when the TAP has one (tap_output_hdr); m is consumed.
    A packet socket's frames queue instead while the forwarding loop runs a
    burst (pk_enqueue: one sendmmsg() at its end)."""
    cdef int len = m.m_pkthdr.len
    cdef uint32_t tid = m.m_pkthdr.trace
    cdef virtio_net_hdr vh
    if ifp.link_down:
        dp_drop_m(dp, m, DROP_INTERFACE_DOWN)
        return
    if unlikely(ifp.observe & OBS_CAP_OUT):
        cap_put(dp, m, ifp.index, CAP_OUT, 0, False)      # the frame, without virtio-net header
    if ifp.vnet_hdrlen:
        tap_output_hdr(ifp, &vh, m)
        m = M_PREPEND(m, VIRTIO_NET_HDR_LEN, M_NOWAIT)     # in the leading space when there is room
        if m == NULL:
            dp.drops[DROP_NO_BUFFER] += 1
            if unlikely(tid != 0):
                tr_drop_id(dp, tid, DROP_NO_BUFFER)
            return
        memcpy(mdata(m), &vh, VIRTIO_NET_HDR_LEN)
    if ifp.txb and dp.tx_batching:
        pk_enqueue(dp, ifp, m)          # a packet socket: sent at the end of the burst
        return
    if ifp.lost_errno or m_writev_fd(ifp.fd, m) < 0:
        ifp.tx_errors += 1
        dp_drop_count(dp, m, DROP_TX_ERROR)
    else:
        ifp.tx_packets += 1
        ifp.tx_bytes += len
        if unlikely(tid != 0):
            tr_step(dp, tid, TR_TX, 0, <uint32_t>len, 0, 0, <uint32_t>ifp.index, NULL, 0)
            tr_set_end(dp, tid, TR_END_TRANSMITTED, ifp.index)
    m_freem(m)


cdef inline bint dp_ppsratecheck(dp_state *dp, int64_t *start, int *count,
                                 int limit) noexcept nogil:
    """FreeBSD's ppsratecheck(9): at most limit events in each second, a
    second starting with the first event after the last one ended; limit 0
    means no limit.  The caller counts what this refuses."""
    if limit <= 0:
        return True
    if dp.now_ns - start[0] >= 1000000000:
        start[0] = dp.now_ns
        count[0] = 0
    if count[0] >= limit:
        return False
    count[0] += 1
    return True
