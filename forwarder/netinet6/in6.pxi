# in6.pxi -- an interface's IPv6 addresses (FreeBSD's netinet6/in6.c): which
# are ours, which neighbours are on link, which source to answer from.
# Every interface has its link-local address (modified EUI-64 of its MAC)
# besides the configured ones.


cdef inline bint ifp6_has_addr(dp_ifnet *ifp, const uint8_t *a) noexcept nogil:
    cdef int i
    if memcmp(a, ifp.lladdr6.s6, 16) == 0:
        return True
    for i in range(ifp.naddrs6):
        if memcmp(a, ifp.addr6[i].s6, 16) == 0:
            return True
    return False


cdef inline bint ifp6_is_allrouters(const uint8_t *a) noexcept nogil:
    cdef int i
    for i in range(2, 15):
        if a[i]:
            return False
    return a[0] == 0xff and a[1] == 0x02 and a[15] == 2


cdef inline bint ifp6_in_group(dp_ifnet *ifp, const uint8_t *a) noexcept nogil:
    """a is a multicast group the interface listens to: all-nodes ff02::1,
    all-routers ff02::2, or the solicited-node group of one of its addresses."""
    cdef uint8_t g[16]
    cdef int i
    if a[0] != 0xff or a[1] != 0x02:
        return False
    if ifp6_is_allrouters(a):
        return True                     # ff02::2: routers listen to it (solicitations)
    if in6_is_solicited_node(a):
        in6_solicited_node(g, ifp.lladdr6.s6)
        if memcmp(a, g, 16) == 0:
            return True
        for i in range(ifp.naddrs6):
            in6_solicited_node(g, ifp.addr6[i].s6)
            if memcmp(a, g, 16) == 0:
                return True
        return False
    for i in range(15):
        if a[i] != (0xff if i == 0 else 0x02 if i == 1 else 0):
            return False
    return a[15] == 1


cdef inline bint ifp6_on_link(dp_ifnet *ifp, const uint8_t *a) noexcept nogil:
    """a is a neighbour on ifp's link: link-local, or in a connected prefix."""
    cdef int i
    if in6_is_linklocal(a):
        return True
    for i in range(ifp.naddrs6):
        if in6_prefix_match(a, ifp.addr6[i].s6, ifp.plen6[i]):
            return True
    return False


cdef inline const uint8_t *ifp6_src_for(dp_ifnet *ifp, const uint8_t *peer) noexcept nogil:
    """The address to speak to peer from: link-local to a link-local peer,
    else the address whose prefix holds it, else the first configured one
    (RFC 6724's rules 2 and 8, the ones that matter on a router's link)."""
    cdef int i
    if in6_is_linklocal(peer) or ifp.naddrs6 == 0:
        return ifp.lladdr6.s6
    for i in range(ifp.naddrs6):
        if in6_prefix_match(peer, ifp.addr6[i].s6, ifp.plen6[i]):
            return ifp.addr6[i].s6
    return ifp.addr6[0].s6


cdef inline const uint8_t *in6_nexthop(const rt6_nexthop *nh, const ip6_hdr *ip6) noexcept nogil:
    """The neighbour a packet goes to: the route's gateway, or the
    destination itself on a connected prefix."""
    if in6_is_unspecified(nh.gateway):
        return &ip6.ip6_dst[0]
    return &nh.gateway[0]


cdef inline void in6_eui64_linklocal(uint8_t *out, const uint8_t *mac) noexcept nogil:
    """fe80::/64 with the modified EUI-64 interface identifier of mac
    (RFC 4291 2.5.1 and appendix A: ff:fe in the middle, U/L bit flipped)."""
    memset(out, 0, 16)
    out[0] = 0xfe
    out[1] = 0x80
    out[8] = mac[0] ^ 0x02
    out[9] = mac[1]
    out[10] = mac[2]
    out[11] = 0xff
    out[12] = 0xfe
    out[13] = mac[3]
    out[14] = mac[4]
    out[15] = mac[5]


cdef inline uint32_t ip6_flow_hash(dp_state *dp, const mbuf *m, const ip6_hdr *ip6) noexcept nogil:
    """The flow of a packet, for a multipath route's choice: source,
    destination, flow label (RFC 6438) and next header, and the ports of
    TCP, UDP and SCTP directly after the fixed header (extension headers are
    not walked: such packets hash on the rest)."""
    cdef uint32_t w[8]
    cdef uint32_t ports = 0, h
    cdef int k
    memcpy(w, ip6.ip6_src, 32)          # ip6_src and ip6_dst are adjacent
    if (ip6.ip6_nxt == IPPROTO_TCP or ip6.ip6_nxt == IPPROTO_UDP or
            ip6.ip6_nxt == IPPROTO_SCTP) and m.m_len >= IP6_HDR_LEN + 4:
        memcpy(&ports, <const uint8_t *>ip6 + IP6_HDR_LEN, 4)
    h = dp.flow_seed
    for k in range(8):
        h = rt_hash_mix(h ^ w[k])
    return rt_hash_mix(h ^ ports ^ (ip6.ip6_flow & htonl(0x000fffff)) ^ ip6.ip6_nxt)
