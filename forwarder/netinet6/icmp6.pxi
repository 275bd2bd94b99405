# icmp6.pxi -- ICMPv6 (RFC 4443; FreeBSD's netinet6/icmp6.c): messages for
# the router -- echo requests answered, Neighbor Discovery handed to
# nd6.pxi -- and the router's own packets out (ip6_output_link).


cdef inline uint16_t icmp6_cksum(mbuf *m, int icmplen) noexcept nogil:
    """The ICMPv6 checksum over a contiguous packet (IPv6 header at m_data):
    0 when the message is intact, the value to store when its field is 0."""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    return in_cksum_finish(in_cksum_add(in6_pseudo(ip6.ip6_src, ip6.ip6_dst, <uint32_t>icmplen,
                                                   IPPROTO_ICMPV6),
                                        mdata(m) + IP6_HDR_LEN, icmplen))


cdef inline void icmp6_set_cksum(mbuf *m, int icmplen) noexcept nogil:
    cdef icmp6_hdr *ic = <icmp6_hdr *>(mdata(m) + IP6_HDR_LEN)
    ic.icmp6_cksum = 0
    ic.icmp6_cksum = icmp6_cksum(m, icmplen)


cdef void ip6_output_link(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """Send a packet of ours to an on-link destination of ifp (echo replies
    go back the way the request came)."""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    if not ifp6_on_link(ifp, ip6.ip6_dst):
        dp_drop_m(dp, m, DROP_OUTPUT_NO_ROUTE)
        return
    nd6_resolve(dp, ifp, m, ip6.ip6_dst)


cdef void icmp6_input(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """An ICMPv6 message for us: checksum (with the pseudo-header), then
    echo requests answered in place, ND to nd6, the rest counted and
    dropped.  ND messages must come with hop limit 255 and code 0."""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    cdef int icmplen = m.m_pkthdr.len - IP6_HDR_LEN
    cdef icmp6_hdr *ic
    cdef uint8_t src[16]
    if icmplen < ICMP6_HDR_LEN or m.m_len < m.m_pkthdr.len:
        dp_drop_m(dp, m, DROP_ICMP_MALFORMED)
        return
    if icmp6_cksum(m, icmplen) != 0:
        dp_drop_m(dp, m, DROP_ICMP_MALFORMED)
        return
    ic = <icmp6_hdr *>(mdata(m) + IP6_HDR_LEN)
    if ic.icmp6_type == ND_NEIGHBOR_SOLICIT or ic.icmp6_type == ND_NEIGHBOR_ADVERT:
        if ip6.ip6_hlim != IP6_HLIM_ND or ic.icmp6_code != 0:
            dp_drop_m(dp, m, DROP_ND_MALFORMED)
        elif ic.icmp6_type == ND_NEIGHBOR_SOLICIT:
            nd6_ns_input(dp, ifp, m, icmplen)
        else:
            nd6_na_input(dp, ifp, m, icmplen)
        return
    if ic.icmp6_type != ICMP6_ECHO_REQUEST or ic.icmp6_code != 0:
        dp_drop_m(dp, m, DROP_LOCAL_NOT_ECHO)
        return
    if in6_is_unspecified(ip6.ip6_src):
        dp_drop_m(dp, m, DROP_IP6_MARTIAN_SOURCE)
        return
    # Reflect: from the address asked (from the interface's own address
    # for a multicast request), back to the sender.
    if in6_is_multicast(ip6.ip6_dst):
        memcpy(src, ifp6_src_for(ifp, ip6.ip6_src), 16)
    else:
        memcpy(src, ip6.ip6_dst, 16)
    memcpy(ip6.ip6_dst, ip6.ip6_src, 16)
    memcpy(ip6.ip6_src, src, 16)
    ip6.ip6_hlim = <uint8_t>dp.hlim
    ic.icmp6_type = ICMP6_ECHO_REPLY
    icmp6_set_cksum(m, icmplen)
    dp.delivered_local += 1
    dp.icmp6_echo_replies += 1
    ip6_output_link(dp, ifp, m)
