# nd6_ra.pxi -- Router Advertisements (RFC 4861 6.2; the router's side,
# which FreeBSD leaves to rtadvd(8)): on interfaces with `ra = true`, sent
# to all-nodes from the link-local address, hop limit 255, with the source
# link-layer option, the link's MTU and a prefix information option for
# each /64 of the interface (on-link, autonomous: SLAAC).  Periodic, at
# random intervals between MinRtrAdvInterval and MaxRtrAdvInterval (the
# first three at most 16 s apart), and in answer to Router Solicitations
# after a random delay of up to 0.5 s, never closer than 3 s to the last;
# a final one with router lifetime 0 when the router stops (ra_final).

cdef enum:
    RA_MAX_INTERVAL_S = 600                 # MaxRtrAdvInterval
    RA_MIN_INTERVAL_S = 198                 # MinRtrAdvInterval: 0.33 * Max
    RA_LIFETIME_S = 1800                    # AdvDefaultLifetime: 3 * Max
    RA_MAX_INITIAL = 3                      # MAX_INITIAL_RTR_ADVERTISEMENTS
    RA_MAX_INITIAL_INTERVAL_S = 16          # MAX_INITIAL_RTR_ADVERT_INTERVAL
    RA_MIN_DELAY_BETWEEN_NS = 3000000000    # MIN_DELAY_BETWEEN_RAS
    RA_MAX_DELAY_NS = 500000000             # MAX_RA_DELAY_TIME
    RA_VALID_LIFETIME = 2592000             # AdvValidLifetime: 30 days
    RA_PREFERRED_LIFETIME = 604800          # AdvPreferredLifetime: 7 days
    RA_HDR_LEN = 16                         # ICMPv6 header + reachable time + retrans timer
    ND_OPT_PREFIX_INFORMATION = 3
    ND_OPT_MTU = 5
    ND_OPT_PI_LEN = 32
    ND_OPT_MTU_LEN = 8


cdef void ifp_set_ra(dp_ifnet *ifp, bint on) noexcept nogil:
    """Advertise on ifp from the next timer tick on (the first few at the
    short interval), or stop."""
    ifp.ra = on
    ifp.ra_initial = RA_MAX_INITIAL if on else 0
    ifp.ra_next_ns = 0
    ifp.ra_answer_ns = 0


cdef inline int64_t ra_random_ns(dp_state *dp, int64_t lo, int64_t hi) noexcept nogil:
    """Uniform in [lo, hi] (xorshift64: RFC 4861 asks for jitter, not secrecy)."""
    cdef uint64_t x = dp.ra_rand if dp.ra_rand else <uint64_t>dp.now_ns | 1
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    dp.ra_rand = x
    return lo + <int64_t>(x % <uint64_t>(hi - lo + 1))


cdef void nd6_ra_output(dp_state *dp, dp_ifnet *ifp, int lifetime) noexcept nogil:
    """One advertisement to all-nodes on ifp."""
    cdef uint8_t allnodes[16]
    cdef uint8_t mac[6]
    cdef int i, n64 = 0, len
    cdef mbuf *m
    cdef uint8_t *p
    for i in range(ifp.naddrs6):
        if ifp.plen6[i] == 64:
            n64 += 1
    len = RA_HDR_LEN + ND_OPT_LLADDR_LEN + ND_OPT_MTU_LEN + n64 * ND_OPT_PI_LEN
    m = dp_new_packet(IP6_HDR_LEN + len)
    if m == NULL:
        dp.drops[DROP_NO_BUFFER] += 1
        return
    memset(allnodes, 0, 16)
    allnodes[0] = 0xff
    allnodes[1] = 0x02
    allnodes[15] = 1
    ip6_fill(<ip6_hdr *>mdata(m), ifp.lladdr6.s6, allnodes, len, IPPROTO_ICMPV6, IP6_HLIM_ND)
    p = mdata(m) + IP6_HDR_LEN
    memset(p, 0, len)
    p[0] = ND_ROUTER_ADVERT
    p[4] = <uint8_t>dp.hlim                 # Cur Hop Limit for the hosts
    st16(p + 6, <uint16_t>lifetime)         # router lifetime; reachable time, retrans timer 0
    p += RA_HDR_LEN
    p[0] = ND_OPT_SOURCE_LINKADDR
    p[1] = 1
    memcpy(p + 2, ifp.mac, ETHER_ADDR_LEN)
    p += ND_OPT_LLADDR_LEN
    p[0] = ND_OPT_MTU
    p[1] = 1
    st32(p + 4, <uint32_t>ifp.mtu)
    p += ND_OPT_MTU_LEN
    for i in range(ifp.naddrs6):
        if ifp.plen6[i] != 64:
            continue
        p[0] = ND_OPT_PREFIX_INFORMATION
        p[1] = 4
        p[2] = 64
        p[3] = 0xc0                         # L (on-link) and A (autonomous)
        st32(p + 4, RA_VALID_LIFETIME)
        st32(p + 8, RA_PREFERRED_LIFETIME)
        memcpy(p + 16, ifp.addr6[i].s6, 8)  # the /64, host bits zero
        p += ND_OPT_PI_LEN
    icmp6_set_cksum(m, len)
    ether_mcast6(mac, allnodes)
    ifp.ra_sent += 1
    ifp.ra_last_ns = dp.now_ns
    ether_output(dp, ifp, m, mac, ETHERTYPE_IPV6)


cdef void nd6_rs_input(dp_state *dp, dp_ifnet *ifp, mbuf *m, int icmplen) noexcept nogil:
    """A Router Solicitation: learn its sender (with its link-layer option)
    and, where we advertise, schedule an answer."""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    cdef bint bad = False
    cdef const uint8_t *sll = nd6_lladdr_opt(mdata(m) + IP6_HDR_LEN + ICMP6_HDR_LEN,
                                             icmplen - ICMP6_HDR_LEN, ND_OPT_SOURCE_LINKADDR, &bad)
    cdef int64_t at
    if bad or (sll != NULL and in6_is_unspecified(ip6.ip6_src)):
        dp_drop_m(dp, m, DROP_ND_MALFORMED)
        return
    dp.nd6_in += 1
    ifp.rs_received += 1
    if sll != NULL and not (sll[0] & 1) and ifp6_on_link(ifp, ip6.ip6_src):
        nd6_cache_lladdr(dp, ifp, ip6.ip6_src, sll)
    m_freem(m)
    if not ifp.ra or ifp.ra_answer_ns:
        return
    at = dp.now_ns + ra_random_ns(dp, 0, RA_MAX_DELAY_NS)
    if at < ifp.ra_last_ns + RA_MIN_DELAY_BETWEEN_NS:
        at = ifp.ra_last_ns + RA_MIN_DELAY_BETWEEN_NS
    ifp.ra_answer_ns = at


cdef void nd6_ra_timer(dp_state *dp) noexcept nogil:
    """Unsolicited advertisements when due, and scheduled answers."""
    cdef int i
    cdef dp_ifnet *ifp
    for i in range(dp.nifs):
        ifp = &dp.ifs[i]
        if not ifp.ra or ifp.fd < 0 or ifp.lost_errno:
            continue
        if ifp.ra_answer_ns and dp.now_ns >= ifp.ra_answer_ns:
            ifp.ra_answer_ns = 0
            nd6_ra_output(dp, ifp, RA_LIFETIME_S)
        if dp.now_ns >= ifp.ra_next_ns:
            nd6_ra_output(dp, ifp, RA_LIFETIME_S)
            if ifp.ra_initial > 0:
                ifp.ra_initial -= 1
                ifp.ra_next_ns = dp.now_ns + RA_MAX_INITIAL_INTERVAL_S * <int64_t>1000000000
            else:
                ifp.ra_next_ns = dp.now_ns + ra_random_ns(
                    dp, RA_MIN_INTERVAL_S * <int64_t>1000000000,
                    RA_MAX_INTERVAL_S * <int64_t>1000000000)
