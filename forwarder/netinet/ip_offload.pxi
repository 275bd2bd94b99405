# ip_offload.pxi -- checksum and segmentation offload for IPv4 (the roles of
# Linux's net/ipv4/tcp_offload.c and udp_offload.c, in FreeBSD's terms).
#
# A super-frame is forwarded as one packet: header checks, one lookup, one
# TTL decrement; its TCP checksum is left to whoever finally receives it
# (the pseudo-header does not contain the TTL).  Software is only needed at
# the edges where the packet meets something that cannot take it whole:
#
#   ip_offload_input   what the TAP said (CSUM_DEV_*) checked against the
#                      packet and turned into CSUM_IP_TCP/UDP, CSUM_IP_TSO/USO
#   ip_too_big         the MTU rule: a super-frame fits when each of its
#                      segments would (Linux's ip_exceeds_mtu for GSO skbs)
#   ip_output_if       the last IPv4 step: segment (ip_gso_output), fragment,
#                      or complete the checksum -- whatever the egress
#                      interface cannot do (its hwassist, FreeBSD's
#                      if_hwassist) -- then resolve and transmit
#   ip_gso_segment     cut a super-frame into segments, each a small header
#                      mbuf plus a range of the super-frame's clusters
#                      (m_copym: shared by reference count, never copied)


cdef bint ip_offload_input(dp_state *dp, dp_ifnet *ifp, mbuf *m, int hlen, int proto,
                           bint frag, bint v6) noexcept nogil:
    """Interpret the device's offload record of an IP packet (Ethernet
    header stripped, trimmed to its length; hlen: its IPv4 header, or the
    40 bytes of IPv6; proto: what follows; v6: an IPv6 packet, whose TCP/UDP
    header must follow the fixed header directly).  False when m was
    dropped: a header that does not match the packet is never passed on
    (the kernel that receives it would refuse or misparse it)."""
    cdef uint32_t f = m.m_pkthdr.csum_flags
    cdef int start = <int>m.m_pkthdr.csum_start - ETHER_HDR_LEN    # in the IP packet
    cdef int field = start + <int>m.m_pkthdr.csum_offset
    cdef int gso, thl = 0
    cdef uint32_t csum_tcp = CSUM_IP6_TCP if v6 else CSUM_IP_TCP
    cdef uint32_t csum_udp = CSUM_IP6_UDP if v6 else CSUM_IP_UDP
    cdef int gso_tcp = VIRTIO_NET_HDR_GSO_TCPV6 if v6 else VIRTIO_NET_HDR_GSO_TCPV4
    cdef bint l4 = False
    m.m_pkthdr.csum_flags = f & (CSUM_L4_CALC | CSUM_L4_VALID)
    if f & CSUM_DEV_PARTIAL:
        if start < hlen or field + 2 > m.m_pkthdr.len:
            dp_drop_m(dp, m, DROP_VNET_HDR_INVALID)
            return False
        # The common case, and the only one a super-frame may be: the TCP or
        # UDP checksum of an unfragmented datagram, right behind the header.
        if start == hlen and not frag and m.m_len >= hlen + UDP_HDR_LEN:
            if (proto == IPPROTO_TCP and m.m_pkthdr.csum_offset == TCP_OFF_SUM
                    and m.m_len >= hlen + TCP_HDR_LEN):
                thl = th_hlen(<tcp_hdr *>(mdata(m) + hlen))
                l4 = TCP_HDR_LEN <= thl and hlen + thl <= m.m_len
                m.m_pkthdr.csum_flags |= csum_tcp
            elif proto == IPPROTO_UDP and m.m_pkthdr.csum_offset == UDP_OFF_SUM:
                thl = UDP_HDR_LEN
                l4 = True
                m.m_pkthdr.csum_flags |= csum_udp
        if not l4:
            if f & CSUM_DEV_GSO:
                dp_drop_m(dp, m, DROP_VNET_HDR_INVALID)
                return False
            # Anywhere else (an ICMP message, a tunnel's inner header): done
            # now, as the device asked, and forwarded as an ordinary packet.
            m.m_pkthdr.csum_flags &= ~(CSUM_DELAY_DATA | CSUM_DELAY_DATA_IPV6)
            in_cksum_store(m, start, field)
            ifp.csum_sw += 1
            return True
        m.m_pkthdr.l2hlen = ETHER_HDR_LEN
        m.m_pkthdr.l3hlen = <uint8_t>hlen
        m.m_pkthdr.l4hlen = <uint8_t>thl
        m.m_pkthdr.csum_data = m.m_pkthdr.csum_offset
    if f & CSUM_DEV_GSO:
        gso = m.m_pkthdr.gso_type & ~VIRTIO_NET_HDR_GSO_ECN
        if not (f & CSUM_DEV_PARTIAL) or m.m_pkthdr.tso_segsz == 0:
            dp_drop_m(dp, m, DROP_VNET_HDR_INVALID)
            return False
        if gso == gso_tcp and (m.m_pkthdr.csum_flags & csum_tcp):
            m.m_pkthdr.csum_flags |= CSUM_IP6_TSO if v6 else CSUM_IP_TSO
        elif gso == VIRTIO_NET_HDR_GSO_UDP_L4 and (m.m_pkthdr.csum_flags & csum_udp):
            m.m_pkthdr.csum_flags |= CSUM_IP6_USO if v6 else CSUM_IP_USO
        else:
            dp_drop_m(dp, m, DROP_VNET_HDR_INVALID)
            return False
        if m.m_pkthdr.len - hlen - thl <= m.m_pkthdr.tso_segsz:
            # One segment's worth: an ordinary packet (so Linux decides too).
            m.m_pkthdr.csum_flags &= ~CSUM_SEG
        else:
            ifp.rx_gso += 1
            ifp.rx_gso_segs += <uint64_t>tso_segments(m, 0)
    return True


cdef inline bint ip_too_big(mbuf *m, int mtu) noexcept nogil:
    """The MTU rule.  A super-frame fits when each of its segments would."""
    if unlikely(m.m_pkthdr.csum_flags & CSUM_SEG):
        return m.m_pkthdr.l3hlen + m.m_pkthdr.l4hlen + m.m_pkthdr.tso_segsz > mtu
    return m.m_pkthdr.len > mtu


cdef int ip_gso_segment(mbuf *m, mbufq *segs) noexcept nogil:
    """Cut the super-frame m (kept: the caller frees it) into segments of
    tso_segsz payload bytes on segs, each with a full checksum: IPv4
    ip_len, ip_id (+1 per segment), header checksum, or IPv6 ip6_plen; TCP
    th_seq advanced, FIN and PSH only on the last, CWR only on the first;
    UDP uh_ulen.  The number of segments, or -1 when buffers ran out (segs
    drained)."""
    cdef ip_hdr *ip = <ip_hdr *>mdata(m)
    cdef bint v6 = (m.m_pkthdr.csum_flags & (CSUM_IP6_TSO | CSUM_IP6_USO)) != 0
    cdef ip6_hdr *sip6
    cdef int hlen = m.m_pkthdr.l3hlen, thl = m.m_pkthdr.l4hlen
    cdef int hdr = hlen + thl, mss = m.m_pkthdr.tso_segsz
    cdef int payload = m.m_pkthdr.len - hdr
    cdef int off = 0, len, i = 0
    cdef bint tcp = (m.m_pkthdr.csum_flags & (CSUM_IP_TSO | CSUM_IP6_TSO)) != 0
    cdef uint64_t ph
    cdef uint16_t id = ntohs(ip.ip_id)
    cdef uint32_t seq = 0
    cdef uint8_t flags = 0
    cdef uint16_t c
    cdef mbuf *s
    cdef ip_hdr *sip
    cdef tcp_hdr *th
    cdef udp_hdr *uh
    if tcp:
        th = <tcp_hdr *>(mdata(m) + hlen)
        seq = ntohl(th.th_seq)
        flags = th.th_flags
    mbufq_init(segs, IP_MAXPACKET)
    while off < payload:
        len = payload - off if payload - off < mss else mss
        s = dp_new_packet(hdr)
        if s == NULL:
            mbufq_drain(segs)
            return -1
        memcpy(mdata(s), mdata(m), hdr)
        s.m_next = m_copym(m, hdr + off, len, M_NOWAIT)
        if s.m_next == NULL:
            m_freem(s)
            mbufq_drain(segs)
            return -1
        s.m_pkthdr.len = hdr + len
        s.m_pkthdr.rcvif = m.m_pkthdr.rcvif
        trace_copy(s, m)
        if v6:
            sip6 = <ip6_hdr *>mdata(s)
            sip6.ip6_plen = htons(<uint16_t>(hdr + len - IP6_HDR_LEN))
            ph = in6_pseudo(sip6.ip6_src, sip6.ip6_dst, <uint32_t>(thl + len),
                            IPPROTO_TCP if tcp else IPPROTO_UDP)
        else:
            sip = <ip_hdr *>mdata(s)
            sip.ip_len = htons(<uint16_t>(hdr + len))
            sip.ip_id = htons(<uint16_t>(id + i))
            ip_set_cksum(sip, hlen)
            ph = in_pseudo(sip.ip_src, sip.ip_dst, IPPROTO_TCP if tcp else IPPROTO_UDP, thl + len)
        if tcp:
            th = <tcp_hdr *>(mdata(s) + hlen)
            th.th_seq = htonl(seq + <uint32_t>off)
            th.th_flags = flags
            if off + len < payload:
                th.th_flags &= ~(TH_FIN | TH_PUSH)
            if i > 0:
                th.th_flags &= ~TH_CWR
            th.th_sum = 0
            th.th_sum = in_cksum_skip(s, thl + len, hlen, ph)
        else:
            uh = <udp_hdr *>(mdata(s) + hlen)
            uh.uh_ulen = htons(<uint16_t>(thl + len))
            uh.uh_sum = 0
            c = in_cksum_skip(s, thl + len, hlen, ph)
            uh.uh_sum = c if c != 0 else 0xffff
        mbufq_enqueue(segs, s)
        off += len
        i += 1
    return i


cdef void ip_gso_output(dp_state *dp, dp_ifnet *oifp, mbuf *m, uint32_t nexthop) noexcept nogil:
    """Segment in software (the interface cannot, or the segments do not
    fit its MTU and DF is clear: then each is fragmented), and send each."""
    cdef mbufq segs
    cdef mbuf *s
    cdef int n = ip_gso_segment(m, &segs)
    if n < 0:
        dp_drop_m(dp, m, DROP_NO_BUFFER)
        return
    trace(dp, m, TR_GSO_SEGMENT, 0, <uint32_t>m.m_pkthdr.len, <uint32_t>n, 0, <uint32_t>oifp.index)
    m_freem(m)                          # the clusters live on in the segments
    oifp.gso_sw += 1
    s = mbufq_dequeue(&segs)
    while s != NULL:
        if s.m_pkthdr.len > oifp.mtu:
            ip_fragment(dp, oifp, s, nexthop)
        else:
            ether_resolve(dp, oifp, s, nexthop)
        s = mbufq_dequeue(&segs)


cdef void ip_output_if(dp_state *dp, dp_ifnet *oifp, mbuf *m, uint32_t nexthop,
                       bint too_big) noexcept nogil:
    """The last IPv4 step before the link (the MTU and DF checks are done):
    what oifp cannot do with m is done here, then ARP and the wire."""
    cdef uint32_t sw = m.m_pkthdr.csum_flags & ~oifp.hwassist
    if unlikely(m.m_pkthdr.csum_flags & CSUM_SEG):
        if too_big or (sw & CSUM_SEG):
            ip_gso_output(dp, oifp, m, nexthop)
            return
    if too_big:
        ip_fragment(dp, oifp, m, nexthop)
        return
    if unlikely(sw & CSUM_DELAY_DATA):
        in_delayed_cksum(oifp, m)
    ether_resolve(dp, oifp, m, nexthop)
