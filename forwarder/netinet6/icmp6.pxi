# icmp6.pxi -- ICMPv6 (RFC 4443; FreeBSD's netinet6/icmp6.c): messages for
# the router -- echo requests answered, Neighbor Discovery handed to
# nd6.pxi --, the errors it sends, rate-limited by a token bucket of
# net.inet6.icmp6.errppslimit per second, and the router's own packets out
# (ip6_output).


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


cdef void ip6_output(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """Send a packet of ours (an echo reply, an error): to a link-local
    destination by ifp, the interface the packet it answers came in on;
    otherwise by the route table."""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    cdef const rt6_nexthop *nh
    if in6_is_linklocal(ip6.ip6_dst):
        trace_data(dp, m, TR_IP6_OUTPUT, 0, 0, 0, 0, <uint32_t>ifp.index, ip6.ip6_dst, 16)
        nd6_resolve(dp, ifp, m, ip6.ip6_dst)
        return
    nh = rt6_lookup_nh(dp.rt6, ip6.ip6_dst) if dp.rt6 != NULL else NULL
    trace_data(dp, m, TR_IP6_OUTPUT, 0, 0, 0, 0, <uint32_t>(nh.ifindex if nh != NULL else -1),
               ip6.ip6_dst, 16)
    if nh == NULL or nh.type != NH_FORWARD:
        dp_drop_m(dp, m, DROP_OUTPUT_NO_ROUTE)
        return
    if m.m_pkthdr.len > dp.ifs[nh.ifindex].mtu:
        dp_drop_m(dp, m, DROP_IP6_TOO_BIG)
        return
    nd6_resolve(dp, &dp.ifs[nh.ifindex], m, in6_nexthop(nh, ip6))


cdef bint icmp6_ratecheck(dp_state *dp) noexcept nogil:
    """Token bucket of errppslimit tokens per second (1 s of burst)."""
    if dp.icmp6_errppslimit <= 0:
        return True
    if dp.icmp6_tokens >= 1.0:
        dp.icmp6_tokens -= 1.0
        return True
    dp.icmp6_ratelimited += 1
    return False


cdef void icmp6_error(dp_state *dp, dp_ifnet *ifp, mbuf *m, int type, int code,
                      uint32_t data) noexcept nogil:
    """Answer the sender of m (consumed) with an ICMPv6 error quoting as
    much of m as fits in 1280 bytes (RFC 4443 2.4), from the address it
    was sent to when that is ours (RFC 4443 2.2), else from our address on
    the interface it came in on; data: packet too big's MTU, parameter
    problem's pointer.  Never about an ICMPv6 error, from an unspecified
    or multicast source, or to a multicast destination (RFC 4443 2.4 (e)),
    nor to ourselves."""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    cdef int quote
    cdef mbuf *n
    cdef icmp6_hdr *ic
    cdef const uint8_t *src
    if in6_is_unspecified(ip6.ip6_src) or in6_is_multicast(ip6.ip6_src) \
            or in6_is_multicast(ip6.ip6_dst) or dp_has_addr6(dp, ifp, ip6.ip6_src):
        trace(dp, m, TR_ICMP6_SUPPRESSED, <uint32_t>type, TR_NOSEND_GROUP, 0, 0, 0)
        m_freem(m)                      # (the last: a packet of our own that could not leave)
        return
    if ip6.ip6_nxt == IPPROTO_ICMPV6 and m.m_len > IP6_HDR_LEN \
            and mdata(m)[IP6_HDR_LEN] < ICMP6_ECHO_REQUEST:
        trace(dp, m, TR_ICMP6_SUPPRESSED, <uint32_t>type, TR_NOSEND_ERROR, 0, 0, 0)
        m_freem(m)
        return
    if not icmp6_ratecheck(dp):
        trace(dp, m, TR_ICMP6_SUPPRESSED, <uint32_t>type, TR_NOSEND_RATELIMIT, 0, 0, 0)
        m_freem(m)
        return
    if unlikely(m.m_pkthdr.csum_flags & CSUM_DELAY_DATA_IPV6):
        in_delayed_cksum(ifp, m)        # quote a well-formed packet, not a half-done checksum
    quote = m.m_pkthdr.len
    if quote > ICMP6_ERR_MAXLEN - IP6_HDR_LEN - ICMP6_HDR_LEN:
        quote = ICMP6_ERR_MAXLEN - IP6_HDR_LEN - ICMP6_HDR_LEN
    n = dp_new_packet(IP6_HDR_LEN + ICMP6_HDR_LEN + quote)
    if n == NULL:
        dp_drop_m(dp, m, DROP_NO_BUFFER)
        return
    src = &ip6.ip6_dst[0]
    if not dp_has_addr6(dp, ifp, src):
        src = ifp6_src_for(ifp, ip6.ip6_src)
    ip6_fill(<ip6_hdr *>mdata(n), src, ip6.ip6_src, ICMP6_HDR_LEN + quote, IPPROTO_ICMPV6,
             dp.hlim)
    ic = <icmp6_hdr *>(mdata(n) + IP6_HDR_LEN)
    ic.icmp6_type = <uint8_t>type
    ic.icmp6_code = <uint8_t>code
    ic.icmp6_data32 = htonl(data)
    m_copydata(m, 0, quote, <char *>ic + ICMP6_HDR_LEN)
    icmp6_set_cksum(n, ICMP6_HDR_LEN + quote)
    trace_copy(n, m)
    trace_data(dp, n, TR_ICMP6_ERROR, <uint32_t>type, 0, 0, <uint32_t>code, 0, ip6.ip6_src, 16)
    trace_end(dp, n, TR_END_ICMP_ERROR, (type << 8) | code)
    m_freem(m)
    dp.icmp6_errors[type] += 1
    ip6_output(dp, ifp, n)


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
    if ic.icmp6_type == ND_NEIGHBOR_SOLICIT or ic.icmp6_type == ND_NEIGHBOR_ADVERT \
            or ic.icmp6_type == ND_ROUTER_SOLICIT:
        if icmplen >= ND_NS_LEN:
            trace_data(dp, m, TR_ND6_INPUT, ic.icmp6_type, 0, 0, 0, 0, <uint8_t *>ic + 8, 16)
        trace_end(dp, m, TR_END_DELIVERED, 0)       # (a drop in nd6 replaces it)
        if ip6.ip6_hlim != IP6_HLIM_ND or ic.icmp6_code != 0:
            dp_drop_m(dp, m, DROP_ND_MALFORMED)
        elif ic.icmp6_type == ND_NEIGHBOR_SOLICIT:
            nd6_ns_input(dp, ifp, m, icmplen)
        elif ic.icmp6_type == ND_NEIGHBOR_ADVERT:
            nd6_na_input(dp, ifp, m, icmplen)
        else:
            nd6_rs_input(dp, ifp, m, icmplen)
        return
    if ic.icmp6_type != ICMP6_ECHO_REQUEST or ic.icmp6_code != 0:
        if ifp.mirror >= 0:
            dp_punt(dp, ifp, m, True)       # errors, RAs of other routers, MLD: the kernel's
            return
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
    trace(dp, m, TR_ICMP6_INPUT, 0, ntohs((<uint16_t *>ic)[2]), ntohs((<uint16_t *>ic)[3]), 0, 0)
    trace_end(dp, m, TR_END_DELIVERED, 0)
    dp.delivered_local += 1
    dp.icmp6_echo_replies += 1
    ip6_output(dp, ifp, m)
