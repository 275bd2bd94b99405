# ip_icmp.pxi -- ICMP (RFC 792, RFC 1812 4.3; FreeBSD's netinet/ip_icmp.c):
# echo requests to the router, and the errors it sends, rate-limited by a
# token bucket of net.inet.icmp.icmplim per second.


cdef void icmp_input(dp_state *dp, dp_ifnet *ifp, mbuf *m, uint32_t dst) noexcept nogil:
    """An ICMP datagram for us (whole, not a fragment): answer an echo
    request in place, from the address asked; count and drop the rest."""
    cdef ip_hdr *ip = <ip_hdr *>mdata(m)
    cdef int hlen = ip_hl(ip)
    cdef int icmplen = m.m_pkthdr.len - hlen
    cdef icmp_hdr *ic
    if icmplen < ICMP_HDR_LEN:
        dp_drop_m(dp, m, DROP_LOCAL_NOT_ECHO)
        return
    if m.m_len < m.m_pkthdr.len:        # echo data must be contiguous to answer it
        dp_drop_m(dp, m, DROP_LOCAL_NOT_ECHO)
        return
    ic = <icmp_hdr *>(mdata(m) + hlen)
    if ic.icmp_type != ICMP_ECHO:
        dp_drop_m(dp, m, DROP_LOCAL_NOT_ECHO)
        return
    if in_cksum(<unsigned char *>ic, icmplen) != 0:
        dp_drop_m(dp, m, DROP_ICMP_MALFORMED)
        return
    dp.delivered_local += 1
    trace(dp, m, TR_ICMP_INPUT, ntohs((<uint16_t *>ic)[2]), ntohs((<uint16_t *>ic)[3]), 0, 0, 0)
    trace_end(dp, m, TR_END_DELIVERED, 0)
    ic.icmp_type = ICMP_ECHOREPLY
    ic.icmp_cksum = 0
    ic.icmp_cksum = in_cksum(<unsigned char *>ic, icmplen)
    # Reflect (FreeBSD's icmp_reflect): back to the sender, from the address asked.
    ip.ip_dst = ip.ip_src
    ip.ip_src = htonl(dst)
    ip.ip_ttl = <uint8_t>dp.ttl
    ip.ip_off = 0
    ip_set_cksum(ip, hlen)
    dp.icmp_out[ICMP_ECHOREPLY] += 1
    ip_output(dp, m)


cdef bint icmp_ratecheck(dp_state *dp) noexcept nogil:
    """Token bucket of icmplim tokens per second (1 s of burst)."""
    if dp.icmplim <= 0:
        return True
    if dp.icmp_tokens >= 1.0:
        dp.icmp_tokens -= 1.0
        return True
    dp.icmp_ratelimited += 1
    return False


cdef void icmp_refill(dp_state *dp) noexcept nogil:
    """Both token buckets: ICMP's (icmplim) and ICMPv6's (errppslimit)."""
    cdef double dt = (dp.now_ns - dp.icmp_refill_ns) * 1e-9
    dp.icmp_refill_ns = dp.now_ns
    if dp.icmplim > 0:
        dp.icmp_tokens += dt * dp.icmplim
        if dp.icmp_tokens > dp.icmplim:
            dp.icmp_tokens = dp.icmplim
    if dp.icmp6_errppslimit > 0:
        dp.icmp6_tokens += dt * dp.icmp6_errppslimit
        if dp.icmp6_tokens > dp.icmp6_errppslimit:
            dp.icmp6_tokens = dp.icmp6_errppslimit


cdef void icmp_error(dp_state *dp, dp_ifnet *ifp, mbuf *m, int type, int code,
                     int nextmtu) noexcept nogil:
    """Answer the sender of m (consumed) with an ICMP error quoting its
    header and data, up to ICMP_ERR_MAXLEN bytes in all (RFC 1812 4.3.2.3),
    from our address on the interface it came in on."""
    cdef ip_hdr *ip = <ip_hdr *>mdata(m)
    cdef int hlen = ip_hl(ip)
    cdef uint32_t src = ntohl(ip.ip_src), dst = ntohl(ip.ip_dst)
    cdef int quote
    cdef mbuf *n
    cdef ip_hdr *oip
    cdef icmp_err_hdr *ic
    # Never about (RFC 1812 4.3.2.7): non-initial fragments, ICMP errors,
    # broadcasts and multicasts, martian sources.
    if ntohs(ip.ip_off) & IP_OFFMASK:
        trace(dp, m, TR_ICMP_SUPPRESSED, <uint32_t>type, TR_NOSEND_FRAGMENT, 0, 0, 0)
        m_freem(m)
        return
    if ip.ip_p == IPPROTO_ICMP and m.m_len > hlen and icmp_is_error(mdata(m)[hlen]):
        trace(dp, m, TR_ICMP_SUPPRESSED, <uint32_t>type, TR_NOSEND_ERROR, 0, 0, 0)
        m_freem(m)
        return
    if in_martian_src(src) or in_multicast(dst) or in_lbcast(dst) or dp_is_subnet_bcast(dp, dst):
        trace(dp, m, TR_ICMP_SUPPRESSED, <uint32_t>type, TR_NOSEND_GROUP, 0, 0, 0)
        m_freem(m)
        return
    if not icmp_ratecheck(dp):
        trace(dp, m, TR_ICMP_SUPPRESSED, <uint32_t>type, TR_NOSEND_RATELIMIT, 0, 0, 0)
        m_freem(m)
        return
    if unlikely(m.m_pkthdr.csum_flags & CSUM_DELAY_DATA):
        in_delayed_cksum(ifp, m)        # quote a well-formed packet, not a half-done checksum
    quote = m.m_pkthdr.len
    if quote > ICMP_ERR_MAXLEN - IP_HDR_LEN - ICMP_HDR_LEN:
        quote = ICMP_ERR_MAXLEN - IP_HDR_LEN - ICMP_HDR_LEN
    n = dp_new_packet(IP_HDR_LEN + ICMP_HDR_LEN + quote)
    if n == NULL:
        dp_drop_m(dp, m, DROP_NO_BUFFER)
        return
    oip = <ip_hdr *>mdata(n)
    oip.ip_vhl = (IPVERSION << 4) | (IP_HDR_LEN >> 2)
    oip.ip_tos = IPTOS_PREC_INTERNETCONTROL
    oip.ip_len = htons(<uint16_t>(IP_HDR_LEN + ICMP_HDR_LEN + quote))
    dp.ip_id += 1
    oip.ip_id = htons(dp.ip_id)
    oip.ip_off = 0
    oip.ip_ttl = <uint8_t>dp.ttl
    oip.ip_p = IPPROTO_ICMP
    oip.ip_src = htonl(ifp_src_for(ifp, src))
    oip.ip_dst = htonl(src)
    ip_set_cksum(oip, IP_HDR_LEN)
    ic = <icmp_err_hdr *>(mdata(n) + IP_HDR_LEN)
    ic.icmp_type = <uint8_t>type
    ic.icmp_code = <uint8_t>code
    ic.icmp_cksum = 0
    ic.icmp_pmvoid = 0
    ic.icmp_nextmtu = 0
    if type == ICMP_UNREACH and code == ICMP_UNREACH_NEEDFRAG:
        ic.icmp_nextmtu = htons(<uint16_t>(nextmtu if nextmtu >= DP_MTU_MIN else DP_MTU_MIN))
    m_copydata(m, 0, quote, <char *>ic + ICMP_HDR_LEN)
    ic.icmp_cksum = in_cksum(<unsigned char *>ic, ICMP_HDR_LEN + quote)
    trace_copy(n, m)
    trace(dp, n, TR_ICMP_ERROR, <uint32_t>type, src, 0, <uint32_t>code, 0)
    trace_end(dp, n, TR_END_ICMP_ERROR, (type << 8) | code)
    m_freem(m)
    dp.icmp_out[type] += 1
    ip_output(dp, n)
