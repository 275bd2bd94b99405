# ip6_input.pxi -- IPv6 in (RFC 8200; FreeBSD's netinet6/ip6_input.c): the
# header checks, and delivery of what is addressed to the router.
#
# Packets to forward go to ip6_forward (ip6_forward.pxi).


cdef inline void ip6_fill(ip6_hdr *ip6, const uint8_t *src, const uint8_t *dst, int plen,
                          int nxt, int hlim) noexcept nogil:
    ip6.ip6_flow = htonl(<uint32_t>IP6_VERSION << 28)
    ip6.ip6_plen = htons(<uint16_t>plen)
    ip6.ip6_nxt = <uint8_t>nxt
    ip6.ip6_hlim = <uint8_t>hlim
    memcpy(ip6.ip6_src, src, 16)
    memcpy(ip6.ip6_dst, dst, 16)


cdef bint dp_has_addr6(dp_state *dp, dp_ifnet *ifp, const uint8_t *a) noexcept nogil:
    """a is the router's: any interface's configured address, or the
    receiving interface's link-local one (link-locals are per link)."""
    cdef int i, k
    if memcmp(a, ifp.lladdr6.s6, 16) == 0:
        return True
    for i in range(dp.nifs):
        for k in range(dp.ifs[i].naddrs6):
            if memcmp(a, dp.ifs[i].addr6[k].s6, 16) == 0:
                return True
    return False


cdef void ip6_input(dp_state *dp, dp_ifnet *ifp, mbuf *m, bint l2group) noexcept nogil:
    """Header checks (no switch turns them off), trim, the offload record,
    martians, then local delivery or forwarding."""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    cdef int plen
    if m.m_pkthdr.len < IP6_HDR_LEN or m.m_len < IP6_HDR_LEN:
        dp_drop_m(dp, m, DROP_IP6_TOO_SHORT)
        return
    if ip6_v(ip6) != IP6_VERSION:
        dp_drop_m(dp, m, DROP_IP6_BAD_VERSION)
        return
    plen = ntohs(ip6.ip6_plen)
    if IP6_HDR_LEN + plen > m.m_pkthdr.len or plen == 0:
        # (a zero length announces a jumbogram, RFC 2675: not on these links)
        dp_drop_m(dp, m, DROP_IP6_BAD_LENGTH)
        return
    if IP6_HDR_LEN + plen < m.m_pkthdr.len:
        m_adj(m, IP6_HDR_LEN + plen - m.m_pkthdr.len)      # Ethernet padding
    trace_data(dp, m, TR_IP6_INPUT, 0, <uint32_t>plen, ip6.ip6_nxt, ip6.ip6_hlim, 0, ip6.ip6_dst, 16)
    if unlikely(m.m_pkthdr.csum_flags & (CSUM_DEV_PARTIAL | CSUM_DEV_GSO)):
        if not ip_offload_input(dp, ifp, m, IP6_HDR_LEN, ip6.ip6_nxt, False, True):
            return
    if in6_is_multicast(ip6.ip6_src) or in6_is_loopback(ip6.ip6_src) or in6_is_v4mapped(ip6.ip6_src):
        dp_drop_m(dp, m, DROP_IP6_MARTIAN_SOURCE)
        return
    if in6_is_multicast(ip6.ip6_dst):
        if ifp6_in_group(ifp, ip6.ip6_dst):
            ip6_local(dp, ifp, m)
        elif ifp.mirror >= 0 and (ip6.ip6_dst[1] & 0x0F) == 2:
            dp_punt(dp, ifp, m, True)       # link-scope groups (OSPFv3 ff02::5...): the daemons'
        else:
            dp_drop_m(dp, m, DROP_IP_BROADCAST_DESTINATION)    # not forwarded, and not ours
        return
    if dp_has_addr6(dp, ifp, ip6.ip6_dst):
        ip6_local(dp, ifp, m)
        return
    if l2group:
        dp_drop_m(dp, m, DROP_LINK_BROADCAST)
        return
    if in6_is_unspecified(ip6.ip6_dst) or in6_is_loopback(ip6.ip6_dst) \
            or in6_is_v4mapped(ip6.ip6_dst):
        dp_drop_m(dp, m, DROP_IP6_MARTIAN_DESTINATION)
        return
    if in6_is_linklocal(ip6.ip6_dst):
        dp_drop_m(dp, m, DROP_IP6_BEYOND_SCOPE)     # not ours, and never beyond its link
        return
    if not dp.forwarding6:
        dp_drop_m(dp, m, DROP_FORWARDING_DISABLED)
        return
    ip6_forward(dp, ifp, m)


cdef inline bint ip6_known_nxt(int nxt) noexcept nogil:
    """A next header this router knows of (extension headers, TCP, UDP,
    ICMPv6, no next header), answered or not."""
    return nxt in (IPPROTO_HOPOPTS, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_NONE,
                   43, 44, 50, 51, 60, 135, 139, 140)    # routing, fragment, ESP, AH, dstopts, mobility, HIP, shim6


cdef void ip6_local(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """For us (whatever the hop limit, RFC 8200 3): ICMPv6 goes to
    icmp6_input; UDP is answered with port unreachable (so traceroute -6
    to the router ends), a next header nobody knows with parameter problem
    code 1 pointing at it (RFC 8200 4); the rest is counted and dropped.
    (Headers in front of ICMPv6, as MLD's hop-by-hop, are not parsed.)"""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    cdef int nxt = ip6.ip6_nxt
    trace_data(dp, m, TR_IP6_LOCAL, 0, <uint32_t>nxt, 0, 0, 0, ip6.ip6_dst, 16)
    if nxt == IPPROTO_ICMPV6:
        icmp6_input(dp, ifp, m)
        return
    if ifp.mirror >= 0:
        dp_punt(dp, ifp, m, True)           # TCP, UDP, OSPFv3...: the daemons' (cplane.py)
        return
    dp_drop_count(dp, m, DROP_LOCAL_NOT_ECHO)
    if nxt == IPPROTO_UDP:
        icmp6_error(dp, ifp, m, ICMP6_DST_UNREACH, ICMP6_DST_UNREACH_NOPORT, 0)
    elif not ip6_known_nxt(nxt):
        icmp6_error(dp, ifp, m, ICMP6_PARAM_PROB, ICMP6_PARAMPROB_NEXTHEADER, IP6_OFF_NXT)
    else:
        m_freem(m)
