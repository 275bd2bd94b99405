# ip6_forward.pxi -- IPv6 forwarding (RFC 8200; FreeBSD's
# netinet6/ip6_forward.c) and the last step before the link.
#
# Where is the hop limit handled?  ip6_forward, twice and only there: the
# expiry check before anything in the packet changes (time exceeded quotes
# the packet as received, and so does packet-too-big, decided after it),
# and the decrement as the one line before the packet leaves.  There is no
# header checksum to fix.  The router never fragments IPv6 (RFC 8200 5):
# too big is answered with packet too big carrying the egress MTU; a
# super-frame fits when each of its segments would (ip_too_big).


cdef void ip6_forward(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """multipath choice -> route type -> hop limit -> scope -> MTU -> hop
    limit decrement -> ip6_output_if."""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    cdef const rt6_nexthop *nh = rt6_lookup_route(dp.rt6, ip6.ip6_dst) if dp.rt6 != NULL else NULL
    cdef dp_ifnet *oifp
    cdef uint32_t hash
    trace_ip6_lookup(dp, m, ip6.ip6_dst, nh)
    if nh != NULL and nh.type == NH_MULTIPATH:
        hash = ip6_flow_hash(dp, m, ip6)
        nh = rt6_nh_select(dp.rt6, nh, hash)    # one member per flow
        trace_data(dp, m, TR_IP6_MULTIPATH, 0, hash, 0, 0, <uint32_t>nh.ifindex, nh.gateway, 16)
    if nh == NULL:
        dp_drop_count(dp, m, DROP_NO_ROUTE)
        icmp6_error(dp, ifp, m, ICMP6_DST_UNREACH, ICMP6_DST_UNREACH_NOROUTE, 0)
        return
    if nh.type != NH_FORWARD:
        if nh.type == NH_UNREACHABLE:
            dp_drop_count(dp, m, DROP_UNREACHABLE_ROUTE)
            icmp6_error(dp, ifp, m, ICMP6_DST_UNREACH, ICMP6_DST_UNREACH_NOROUTE, 0)
        elif nh.type == NH_PROHIBIT:
            dp_drop_count(dp, m, DROP_PROHIBITED_ROUTE)
            icmp6_error(dp, ifp, m, ICMP6_DST_UNREACH, ICMP6_DST_UNREACH_ADMIN, 0)
        else:
            dp_drop_m(dp, m, DROP_BLACKHOLE)
        return
    # Hop limit expiry: answered before anything in the packet changes.
    if ip6.ip6_hlim <= 1:
        dp_drop_count(dp, m, DROP_TTL_EXCEEDED)
        icmp6_error(dp, ifp, m, ICMP6_TIME_EXCEEDED, ICMP6_TIME_EXCEED_TRANSIT, 0)
        return
    oifp = &dp.ifs[nh.ifindex]
    if in6_is_linklocal(ip6.ip6_src) and oifp != ifp:
        dp_drop_count(dp, m, DROP_IP6_BEYOND_SCOPE)   # RFC 4007 9: a link-local source stays on its link
        icmp6_error(dp, ifp, m, ICMP6_DST_UNREACH, ICMP6_DST_UNREACH_BEYONDSCOPE, 0)
        return
    if ip_too_big(m, oifp.mtu):
        dp_drop_count(dp, m, DROP_IP6_TOO_BIG)
        icmp6_error(dp, ifp, m, ICMP6_PACKET_TOO_BIG, 0, oifp.mtu)
        return
    # Hop limit decrement: the one place a forwarded packet's hop limit changes.
    trace(dp, m, TR_IP6_HLIM, 0, ip6.ip6_hlim, <uint32_t>(ip6.ip6_hlim - 1), 0, 0)
    ip6.ip6_hlim -= 1
    dp.forwarded += 1
    ip6_output_if(dp, oifp, m, in6_nexthop(nh, ip6))


cdef void ip6_output_if(dp_state *dp, dp_ifnet *oifp, mbuf *m, const uint8_t *nexthop) noexcept nogil:
    """What oifp cannot do with m is done here (segment a super-frame,
    complete a checksum), then Neighbor Discovery and the wire."""
    cdef uint32_t sw = m.m_pkthdr.csum_flags & ~oifp.hwassist
    cdef uint8_t nh[16]
    cdef mbufq segs
    cdef mbuf *s
    cdef int n
    if unlikely(sw & CSUM_SEG):
        memcpy(nh, nexthop, 16)         # nexthop may point into m, freed below
        n = ip_gso_segment(m, &segs)
        if n < 0:
            dp_drop_m(dp, m, DROP_NO_BUFFER)
            return
        trace(dp, m, TR_GSO_SEGMENT, 0, <uint32_t>m.m_pkthdr.len, <uint32_t>n, 0,
              <uint32_t>oifp.index)
        m_freem(m)
        oifp.gso_sw += 1
        s = mbufq_dequeue(&segs)
        while s != NULL:
            nd6_resolve(dp, oifp, s, nh)
            s = mbufq_dequeue(&segs)
        return
    if unlikely(sw & CSUM_DELAY_DATA_IPV6):
        in_delayed_cksum(oifp, m)
    nd6_resolve(dp, oifp, m, nexthop)
