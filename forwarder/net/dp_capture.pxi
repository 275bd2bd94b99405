# dp_capture.pxi -- packet capture (FreeBSD's bpf(4) tap, VPP's `pcap trace`):
# `forwarder capture IF|drops [-w FILE|-] [-c N] [--filter EXPR]`.
#
# What is captured.  A port's frames as read (before anything changes them)
# and as written (after ether_output, before the virtio-net header), or the
# packets the dataplane drops, each with its reason.  A drop past
# ether_input has lost its Ethernet header (the stages work from the IP
# header on), so its record gets one rebuilt: the receiving port's MAC as
# destination, zeros as source, the EtherType of the IP version -- the
# record says so (synth), and the pcapng comment too.
#
# Cost when off.  A port's ifnet carries observe bits (OBS_*): dp_rx_frame
# tests one word it has in cache for the trace and the capture together,
# dp_transmit the same word; drops test dp.cap_drops on the drop leg only.
#
# The ring: single producer, single consumer, lock-free.  The forwarding
# thread writes records (a dp_cap_hdr and the frame's bytes, up to the
# snap length, 8-byte aligned) at cap_head; the capture's reader (a thread
# of the control server, forwarder/capture.py) copies out [cap_tail,
# cap_head) and advances cap_tail.  The producer publishes cap_head with a
# release store after the bytes are in, the consumer cap_tail after it has
# copied them, each reading the other's index with an acquire load -- the
# usual SPSC ring, with no lock between the two and no waiting on either
# side.  A record that does not fit in the space left is not written and
# counted in cap_lost: a slow reader (a pipe to a slow disk, a terminal)
# loses packets, never slows forwarding; `forwarder capture` reports the
# losses at the end.  The indices only grow (64 bits: no wrap in practice);
# positions are taken modulo the ring's size, and a record may wrap around
# its end (copies in two parts).
#
# The filter runs on the frame made contiguous in cap_buf (up to the snap
# length), before it enters the ring: a record is only written for a match.
#
# Arming and disarming take dp.lock (capture_start / capture_stop), which
# the producer holds for its whole burst, so after capture_stop returns the
# producer never touches the ring again and it can be freed.

cdef extern from *:
    """
    #ifndef FORWARDER_CAP_ATOMIC_H
    #define FORWARDER_CAP_ATOMIC_H
    static inline uint64_t cap_load_acq(const uint64_t *p)
    { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void cap_store_rel(uint64_t *p, uint64_t v)
    { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    #endif
    """
    uint64_t cap_load_acq(const uint64_t *p) nogil
    void cap_store_rel(uint64_t *p, uint64_t v) nogil


cdef inline bint dp_drop_at_l2(int why) noexcept nogil:
    """The drops decided while m still starts at its Ethernet header (in
    ether_input, arp_input, or on the way out of dp_transmit); every other
    reason is decided past ether_input, on the IP packet."""
    return (why == DROP_RUNT or why == DROP_NOT_OUR_MAC or why == DROP_ETHERTYPE
            or why == DROP_ARP_MALFORMED or why == DROP_ARP_NOT_ON_LINK
            or why == DROP_INTERFACE_DOWN or why == DROP_TX_ERROR)


cdef inline void cap_ring_copy(uint8_t *ring, uint64_t pos, const uint8_t *src,
                               uint32_t len) noexcept nogil:
    cdef uint32_t off = <uint32_t>(pos & (DP_CAP_RING - 1))
    cdef uint32_t first = DP_CAP_RING - off
    if first >= len:
        memcpy(ring + off, src, len)
    else:
        memcpy(ring + off, src, first)
        memcpy(ring, src + first, len - first)


cdef void cap_put(dp_state *dp, mbuf *m, int ifindex, int dir, int reason,
                  bint synth) noexcept nogil:
    """One record for m (kept), when the filter accepts it and it fits."""
    cdef dp_cap_hdr h
    cdef uint32_t caplen, l2 = 0, reclen
    cdef uint64_t head, tail
    cdef const uint8_t *mac
    cdef int vers
    cdef uint32_t len = <uint32_t>m.m_pkthdr.len
    if synth:
        l2 = ETHER_HDR_LEN
        mac = ETHER_BCAST
        if 0 <= ifindex < dp.nifs:
            mac = dp.ifs[ifindex].mac
        memcpy(dp.cap_buf, mac, ETHER_ADDR_LEN)
        memset(dp.cap_buf + ETHER_ADDR_LEN, 0, ETHER_ADDR_LEN)
        vers = (mdata(m)[0] >> 4) if m.m_len > 0 else 4
        st16(dp.cap_buf + 12, ETHERTYPE_IPV6 if vers == 6 else ETHERTYPE_IP)
    caplen = len + l2
    if caplen > dp.cap_snaplen:
        caplen = dp.cap_snaplen
    m_copydata(m, 0, <int>(caplen - l2), <char *>dp.cap_buf + l2)
    if dp.cap_filter_len and dp_bpf_run(<const dp_bpf_insn *>dp.cap_filter, dp.cap_buf,
                                        len + l2, caplen) == 0:
        dp.cap_filtered += 1
        return
    reclen = (<uint32_t>sizeof(dp_cap_hdr) + caplen + 7) & ~(<uint32_t>7)
    head = dp.cap_head                      # ours: a plain read
    tail = cap_load_acq(&dp.cap_tail)
    if head - tail + reclen > DP_CAP_RING:
        dp.cap_lost += 1
        return
    memset(&h, 0, sizeof(h))
    h.time_ns = now_ns()
    h.reclen = reclen
    h.caplen = caplen
    h.origlen = len + l2
    h.ifindex = <int16_t>ifindex
    h.dir = <uint8_t>dir
    h.synth = synth
    h.reason = <uint16_t>reason
    cap_ring_copy(dp.cap_ring, head, <const uint8_t *>&h, sizeof(h))
    cap_ring_copy(dp.cap_ring, head + sizeof(h), dp.cap_buf, caplen)
    dp.cap_captured += 1
    cap_store_rel(&dp.cap_head, head + reclen)


cdef inline void dp_observe_rx(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """A frame read on a port someone watches: the trace's selection, the
    capture of what the port receives."""
    if ifp.observe & OBS_TRACE:
        tr_select(dp, ifp, m)
        if m.m_pkthdr.csum_flags & (CSUM_DEV_PARTIAL | CSUM_DEV_GSO):
            trace(dp, m, TR_TAP_INPUT, m.m_pkthdr.gso_type, m.m_pkthdr.tso_segsz,
                  m.m_pkthdr.csum_start, m.m_pkthdr.csum_offset, 0)
    if ifp.observe & OBS_CAP_IN:
        cap_put(dp, m, ifp.index, CAP_IN, 0, False)


cdef inline void cap_drop(dp_state *dp, mbuf *m, int why) noexcept nogil:
    if unlikely(dp.cap_drops):
        cap_put(dp, m, m.m_pkthdr.rcvif, CAP_DROP, why, not dp_drop_at_l2(why))
