# ip_input.pxi -- IPv4 in (FreeBSD's netinet/ip_input.c and ip_fastfwd.c):
# the header checks of RFC 1812 5.2.2, local delivery, and forwarding.
#
# Where is TTL handled?  ip_forward, twice and only there: the expiry check
# comes before anything in the packet changes (an ICMP error quotes the
# header as received, and so does frag-needed, which is decided after it),
# and the decrement is the one line before the packet leaves for
# ip_output_if.


cdef void ip_input(dp_state *dp, dp_ifnet *ifp, mbuf *m, bint l2group) noexcept nogil:
    """Header checks (no switch turns them off), trim, martians, then local
    delivery or forwarding."""
    cdef ip_hdr *ip = <ip_hdr *>mdata(m)
    cdef int hlen, iplen
    cdef uint32_t src, dst
    cdef const rt_nexthop *nh
    if m.m_pkthdr.len < IP_HDR_LEN or m.m_len < IP_HDR_LEN:
        dp_drop_m(dp, m, DROP_IP_TOO_SHORT)
        return
    if ip_v(ip) != IPVERSION:
        dp_drop_m(dp, m, DROP_IP_BAD_VERSION)
        return
    hlen = ip_hl(ip)
    if hlen < IP_HDR_LEN or hlen > m.m_len:
        dp_drop_m(dp, m, DROP_IP_BAD_HEADER_LENGTH)
        return
    if in_cksum(<unsigned char *>ip, hlen) != 0:
        dp_drop_m(dp, m, DROP_IP_BAD_CHECKSUM)
        return
    iplen = ntohs(ip.ip_len)
    if iplen < hlen or iplen > m.m_pkthdr.len:
        dp_drop_m(dp, m, DROP_IP_BAD_TOTAL_LENGTH)
        return
    if iplen < m.m_pkthdr.len:
        m_adj(m, iplen - m.m_pkthdr.len)        # Ethernet padding
    if unlikely(m.m_pkthdr.csum_flags & (CSUM_DEV_PARTIAL | CSUM_DEV_GSO)):
        if not ip_offload_input(dp, ifp, m, hlen, ip.ip_p,
                                (ntohs(ip.ip_off) & (IP_MF | IP_OFFMASK)) != 0, False):
            return
    src = ntohl(ip.ip_src)
    dst = ntohl(ip.ip_dst)
    trace(dp, m, TR_IP_INPUT, <uint32_t>hlen, src, dst, <uint32_t>iplen, ip.ip_p)
    if in_martian_src(src):
        dp_drop_m(dp, m, DROP_MARTIAN_SOURCE)
        return
    nh = rt_lookup_route(dp.rt, dst)
    trace_ip_lookup(dp, m, dst, nh)
    if nh != NULL and nh.type == NH_LOCAL:
        ip_local(dp, ifp, m, dst)
        return
    if l2group:
        if ifp.mirror >= 0 and (dst >> 8) == 0xE00000:
            dp_punt(dp, ifp, m, True)           # 224.0.0.0/24: OSPF, VRRP... to the daemons
            return
        dp_drop_m(dp, m, DROP_LINK_BROADCAST)   # RFC 1812 5.3.4
        return
    if in_martian_dst(dst):
        dp_drop_m(dp, m, DROP_MARTIAN_DESTINATION)
        return
    if in_multicast(dst):
        dp_drop_m(dp, m, DROP_IP_BROADCAST_DESTINATION)
        return
    if not dp.forwarding:
        dp_drop_m(dp, m, DROP_FORWARDING_DISABLED)
        return
    ip_forward(dp, ifp, m, nh, dst)


cdef void ip_local(dp_state *dp, dp_ifnet *ifp, mbuf *m, uint32_t dst) noexcept nogil:
    """For us: ICMP echo goes to icmp_input (whole datagrams only: fragments
    are not reassembled); with a control plane (cplane.py) everything else
    goes to the port's mirror, where the routing daemons are; without one it
    is counted and dropped."""
    cdef ip_hdr *ip = <ip_hdr *>mdata(m)
    cdef int hlen = ip_hl(ip)
    cdef bint whole = not (ntohs(ip.ip_off) & (IP_MF | IP_OFFMASK))
    trace(dp, m, TR_IP_LOCAL, 0, dst, 0, 0, 0)
    # (ip_offload_input completed any ICMP checksum the sender left open.)
    if ip.ip_p == IPPROTO_ICMP and whole and (ifp.mirror < 0 or (
            m.m_len > hlen and (<uint8_t *>ip)[hlen] == ICMP_ECHO)):
        icmp_input(dp, ifp, m, dst)
        return
    if ifp.mirror >= 0:
        dp_punt(dp, ifp, m, True)
        return
    dp_drop_m(dp, m, DROP_LOCAL_NOT_ECHO)


cdef void ip_forward(dp_state *dp, dp_ifnet *ifp, mbuf *m, const rt_nexthop *nh,
                     uint32_t dst) noexcept nogil:
    """multipath choice -> route type -> TTL expiry -> directed broadcast ->
    MTU/DF -> TTL decrement -> ip_output_if (segment, fragment or checksum;
    resolve).  A super-frame is one packet here; its MTU rule is
    ip_too_big's."""
    cdef ip_hdr *ip = <ip_hdr *>mdata(m)
    cdef dp_ifnet *oifp
    cdef uint32_t nexthop, hash
    cdef bint too_big
    if nh != NULL and nh.type == NH_MULTIPATH:
        hash = ip_flow_hash(dp, m, ip)
        nh = rt_nh_select(dp.rt, nh, hash)     # one member per flow
        trace(dp, m, TR_IP_MULTIPATH, 0, hash, nh.gateway, 0, <uint32_t>nh.ifindex)
    if nh == NULL:
        dp_drop_count(dp, m, DROP_NO_ROUTE)
        icmp_error(dp, ifp, m, ICMP_UNREACH, ICMP_UNREACH_NET, 0)
        return
    if nh.type != NH_FORWARD:
        if nh.type == NH_UNREACHABLE:
            dp_drop_count(dp, m, DROP_UNREACHABLE_ROUTE)
            icmp_error(dp, ifp, m, ICMP_UNREACH, ICMP_UNREACH_HOST, 0)
        elif nh.type == NH_PROHIBIT:
            dp_drop_count(dp, m, DROP_PROHIBITED_ROUTE)
            icmp_error(dp, ifp, m, ICMP_UNREACH, ICMP_UNREACH_FILTER_PROHIB, 0)
        else:
            dp_drop_m(dp, m, DROP_BLACKHOLE)
        return
    # TTL expiry: answered before anything in the packet changes.
    if ip_ttl_expired(ip):
        dp_drop_count(dp, m, DROP_TTL_EXCEEDED)
        icmp_error(dp, ifp, m, ICMP_TIMXCEED, ICMP_TIMXCEED_INTRANS, 0)
        return
    oifp = &dp.ifs[nh.ifindex]
    nexthop = nh.gateway if nh.gateway != 0 else dst
    if nh.gateway == 0 and ifp_is_subnet_bcast(oifp, dst):
        dp_drop_m(dp, m, DROP_IP_BROADCAST_DESTINATION)     # directed broadcast: not forwarded
        return
    too_big = ip_too_big(m, oifp.mtu)
    if too_big and (ntohs(ip.ip_off) & IP_DF):
        dp_drop_count(dp, m, DROP_NEEDFRAG_DF_SET)
        icmp_error(dp, ifp, m, ICMP_UNREACH, ICMP_UNREACH_NEEDFRAG, oifp.mtu)
        return
    # TTL decrement: the one place a forwarded packet's TTL changes.
    trace(dp, m, TR_IP_TTL, 0, ip.ip_ttl, <uint32_t>(ip.ip_ttl - 1), 0, 0)
    ip_dec_ttl(ip)
    dp.forwarded += 1
    ip_output_if(dp, oifp, m, nexthop, too_big)
