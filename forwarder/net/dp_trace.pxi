# dp_trace.pxi -- the packet trace (VPP's `trace add` / `show trace`):
# `forwarder trace start [--count N] [--interface IF] [--filter EXPR]`.
#
# Selection.  While a trace is armed (dp.tr_armed > 0: packets still to
# take), the ports it watches have OBS_TRACE in their observe word and
# dp_rx_frame offers their frames to tr_select, which takes one when the BPF
# filter accepts it: the frame gets a record in the ring and its id in
# m_pkthdr.trace.  When nothing watches, that is the one test a frame pays:
# `if unlikely(ifp.observe)`, on the ifnet the loop is reading anyway.
#
# Steps.  A stage records what it decided with trace(dp, m, TR_*, ...): an
# inline test of m_pkthdr.trace (in the mbuf header the stage has just
# read), and only for a traced packet a call that appends a step to its
# record.  The id travels with the packet, not with the call: fragments,
# segments and the ICMP error built from a traced packet carry it, a packet
# held for ARP or ND keeps it and records its release (or its drop) when it
# happens, and a packet that was not selected never writes, even when it is
# dropped in a traced packet's call chain (ARP hold overflow).  That is
# VPP's rule (the traced flag is in the buffer), and why a step costs
# nothing measurable when nothing is traced: a load and a branch the
# predictor learns, with the arguments computed only on the taken side
# (the helpers below that need work -- a second route lookup for the prefix
# -- do it there).
#
# The ring.  DP_TRACE_MAX records of DP_TRACE_STEPS steps, allocated at the
# first trace and reused: a trace of more packets than that keeps the last
# DP_TRACE_MAX.  A record is found from an id by (id - 1) % DP_TRACE_MAX and
# is the packet's only while its id is still there (a packet held longer
# than it takes the ring to wrap writes nothing).  The dataplane writes with
# no lock of its own and no allocation: the forwarding thread holds dp.lock
# for the whole burst anyway, and `trace show` copies the records under the
# same lock, between bursts -- so a reader never sees a half-written record,
# and the writer never waits for one.  Steps past DP_TRACE_STEPS are counted
# (lost_steps), never written.
#
# The end of a packet: transmitted, delivered, punted, dropped or ICMP error.
# The first one stays unless a weightier one comes: a drop replaces
# "delivered" (ND is delivered before nd6_ns_input decides; an echo reply
# may find no route) and "transmitted" (one fragment of several lost), and an
# ICMP error replaces the drop that caused it (ip_forward counts time
# exceeded as a drop, then answers it).


cdef inline dp_trace_rec *tr_rec(dp_state *dp, uint32_t id) noexcept nogil:
    """The record of trace id, or NULL when the ring has reused its slot."""
    cdef dp_trace_rec *r = &dp.tr_ring[(id - 1) % DP_TRACE_MAX]
    return r if r.id == id else NULL


cdef bint tr_filter_match(dp_state *dp, mbuf *m) noexcept nogil:
    """The trace's BPF filter over the frame's first mbuf (a load past it
    rejects, as in libpcap: a super-frame's headers are always there)."""
    return dp_bpf_run(<const dp_bpf_insn *>dp.tr_filter, <const uint8_t *>mdata(m),
                      <uint32_t>m.m_pkthdr.len, <uint32_t>m.m_len) != 0


cdef void tr_select(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """A frame read while a trace is armed: give it a record when it matches."""
    cdef dp_trace_rec *r
    cdef uint32_t id
    if dp.tr_ifindex >= 0 and ifp.index != dp.tr_ifindex:
        return
    if dp.tr_filter_len and not tr_filter_match(dp, m):
        dp.tr_filtered += 1
        return
    dp.tr_next_id += 1
    if dp.tr_next_id == 0:              # (ids wrap after 2^32 packets; 0 means untraced)
        dp.tr_next_id = 1
    id = dp.tr_next_id
    r = &dp.tr_ring[(id - 1) % DP_TRACE_MAX]
    r.id = id
    r.ifindex = ifp.index
    r.time_ns = now_ns()
    r.len = m.m_pkthdr.len
    r.caplen = m.m_pkthdr.len if m.m_pkthdr.len < DP_TRACE_HEAD else DP_TRACE_HEAD
    m_copydata(m, 0, r.caplen, <char *>r.head)
    r.nsteps = 0
    r.lost_steps = 0
    r.end = TR_END_NONE
    r.end_arg = 0
    m.m_pkthdr.trace = id
    dp.tr_armed -= 1
    if dp.tr_armed == 0:
        tr_unwatch(dp)


cdef void tr_unwatch(dp_state *dp) noexcept nogil:
    """The trace is done (or stopped): no port tests for it any more."""
    cdef int i
    for i in range(dp.nifs):
        dp.ifs[i].observe &= ~OBS_TRACE


cdef dp_trace_step *tr_add(dp_state *dp, uint32_t id, int point) noexcept nogil:
    """A new step of packet id's record (NULL: record gone, or full)."""
    cdef dp_trace_rec *r = tr_rec(dp, id)
    cdef dp_trace_step *s
    if r == NULL:
        return NULL
    if r.nsteps >= DP_TRACE_STEPS:
        if r.lost_steps < 0xffff:
            r.lost_steps += 1
        return NULL
    s = &r.steps[r.nsteps]
    r.nsteps += 1
    memset(s, 0, sizeof(dp_trace_step))
    s.point = <uint16_t>point
    s.dt_us = <uint32_t>((now_ns() - r.time_ns) // 1000)
    return s


cdef void tr_step(dp_state *dp, uint32_t id, int point, uint32_t x, uint32_t a, uint32_t b,
                  uint32_t c, uint32_t d, const void *data, int len) noexcept nogil:
    cdef dp_trace_step *s = tr_add(dp, id, point)
    if s == NULL:
        return
    s.x = <uint16_t>x
    s.a = a
    s.b = b
    s.c = c
    s.d = d
    if len > 32:
        len = 32
    if len > 0:
        memcpy(s.data, data, len)


cdef inline void trace(dp_state *dp, const mbuf *m, int point, uint32_t x, uint32_t a,
                       uint32_t b, uint32_t c, uint32_t d) noexcept nogil:
    """Record a step of m when m is traced."""
    if unlikely(m.m_pkthdr.trace != 0):
        tr_step(dp, m.m_pkthdr.trace, point, x, a, b, c, d, NULL, 0)


cdef inline void trace_data(dp_state *dp, const mbuf *m, int point, uint32_t x, uint32_t a,
                            uint32_t b, uint32_t c, uint32_t d, const void *data,
                            int len) noexcept nogil:
    """A step with up to 32 bytes of data (addresses, MACs)."""
    if unlikely(m.m_pkthdr.trace != 0):
        tr_step(dp, m.m_pkthdr.trace, point, x, a, b, c, d, data, len)


cdef inline int tr_end_rank(int end) noexcept nogil:
    if end == TR_END_ICMP_ERROR:
        return 3
    if end == TR_END_DROPPED:
        return 2
    return 0 if end == TR_END_NONE else 1


cdef void tr_set_end(dp_state *dp, uint32_t id, int end, int arg) noexcept nogil:
    cdef dp_trace_rec *r = tr_rec(dp, id)
    if r == NULL:
        return
    if tr_end_rank(end) > tr_end_rank(r.end):
        r.end = <uint16_t>end
        r.end_arg = <uint16_t>arg


cdef inline void trace_end(dp_state *dp, const mbuf *m, int end, int arg) noexcept nogil:
    """m's journey ends here (first end wins; see the top of this file)."""
    if unlikely(m.m_pkthdr.trace != 0):
        tr_set_end(dp, m.m_pkthdr.trace, end, arg)


cdef inline void trace_drop(dp_state *dp, const mbuf *m, int why) noexcept nogil:
    if unlikely(m.m_pkthdr.trace != 0):
        tr_step(dp, m.m_pkthdr.trace, TR_DROP, 0, <uint32_t>why, 0, 0, 0, NULL, 0)
        tr_set_end(dp, m.m_pkthdr.trace, TR_END_DROPPED, why)


cdef void tr_drop_id(dp_state *dp, uint32_t id, int why) noexcept nogil:
    """The drop of a traced packet that is already gone (M_PREPEND frees
    the chain it cannot extend)."""
    tr_step(dp, id, TR_DROP, 0, <uint32_t>why, 0, 0, 0, NULL, 0)
    tr_set_end(dp, id, TR_END_DROPPED, why)


cdef inline void trace_copy(mbuf *to, const mbuf *m) noexcept nogil:
    """A packet built from m (fragment, segment, ICMP error) is traced as m."""
    to.m_pkthdr.trace = m.m_pkthdr.trace


# --- steps that need work to describe ---------------------------------------------

cdef void tr_nd6(dp_state *dp, const mbuf *m, int point, const dp_nd6 *e, int held) noexcept nogil:
    cdef uint8_t data[32]
    memcpy(data, e.ip.s6, 16)
    memcpy(data + 16, e.mac, 6)
    memset(data + 22, 0, 10)
    tr_step(dp, m.m_pkthdr.trace, point, 0, <uint32_t>e.state, <uint32_t>held, 0,
            <uint32_t>e.ifindex, data, 32)


cdef inline void trace_nd6(dp_state *dp, const mbuf *m, int point, const dp_nd6 *e,
                           int held) noexcept nogil:
    """A neighbour-cache step (nd6.pxi): the entry's address, MAC and state."""
    if unlikely(m.m_pkthdr.trace != 0):
        tr_nd6(dp, m, point, e, held)


cdef void tr_arp_update(dp_state *dp, const mbuf *m, const dp_arp *e, const uint8_t *sha,
                        int state) noexcept nogil:
    cdef uint8_t data[12]
    memcpy(data, sha, 6)
    memcpy(data + 6, e.mac, 6)
    tr_step(dp, m.m_pkthdr.trace, TR_ARP_UPDATE, 0, <uint32_t>state, e.ip, 0,
            <uint32_t>e.ifindex, data, 12)


cdef inline void trace_arp_update(dp_state *dp, const mbuf *m, const dp_arp *e,
                                  const uint8_t *sha, int state) noexcept nogil:
    """An ARP packet changes e (if_ether.pxi arp_update): its new MAC sha,
    the cached one, the state it goes to."""
    if unlikely(m.m_pkthdr.trace != 0):
        tr_arp_update(dp, m, e, sha, state)


cdef void tr_ip_lookup(dp_state *dp, const mbuf *m, uint32_t dst,
                       const rt_nexthop *nh) noexcept nogil:
    cdef uint32_t e = rt_lookup_entry(dp.rt, dst)
    cdef int plen = rt_entry_plen(e) if e != 0 else 0
    cdef uint32_t prefix = dst & (<uint32_t>0xffffffff << (32 - plen)) if plen > 0 else 0
    if nh == NULL:
        tr_step(dp, m.m_pkthdr.trace, TR_IP_LOOKUP, 0, dst, 0, 0, 0xffffffff, NULL, 0)
        return
    tr_step(dp, m.m_pkthdr.trace, TR_IP_LOOKUP, <uint32_t>plen, prefix, nh.gateway,
            <uint32_t>nh.type, <uint32_t>nh.ifindex, NULL, 0)


cdef inline void trace_ip_lookup(dp_state *dp, const mbuf *m, uint32_t dst,
                                 const rt_nexthop *nh) noexcept nogil:
    if unlikely(m.m_pkthdr.trace != 0):
        tr_ip_lookup(dp, m, dst, nh)


cdef void tr_ip6_lookup(dp_state *dp, const mbuf *m, const uint8_t *dst,
                        const rt6_nexthop *nh) noexcept nogil:
    cdef uint8_t data[32]
    cdef uint32_t e = rt6_lookup_entry(dp.rt6, dst) if dp.rt6 != NULL else 0
    cdef int plen = rt6_entry_plen(e) if e != 0 else -1
    memset(data, 0, 32)
    if nh == NULL or plen < 0:
        memcpy(data, dst, 16)
        tr_step(dp, m.m_pkthdr.trace, TR_IP6_LOOKUP, 0, 0, 0, 0, 0xffffffff, data, 32)
        return
    in6_prefix_copy(data, dst, plen)
    memcpy(data + 16, nh.gateway, 16)
    tr_step(dp, m.m_pkthdr.trace, TR_IP6_LOOKUP, <uint32_t>plen, 0, 0, <uint32_t>nh.type,
            <uint32_t>nh.ifindex, data, 32)


cdef inline void trace_ip6_lookup(dp_state *dp, const mbuf *m, const uint8_t *dst,
                                  const rt6_nexthop *nh) noexcept nogil:
    if unlikely(m.m_pkthdr.trace != 0):
        tr_ip6_lookup(dp, m, dst, nh)


cdef inline void in6_prefix_copy(uint8_t *out, const uint8_t *a, int plen) noexcept nogil:
    """out = a's first plen bits, the rest zero."""
    cdef int i
    for i in range(16):
        if plen >= 8:
            out[i] = a[i]
            plen -= 8
        elif plen > 0:
            out[i] = a[i] & <uint8_t>(0xff << (8 - plen))
            plen = 0
        else:
            out[i] = 0
