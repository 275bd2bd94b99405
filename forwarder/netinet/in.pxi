# in.pxi -- IPv4 addresses of the interfaces (FreeBSD's netinet/in.c):
# which address is ours, which source to use towards a peer, what is on
# link and what is a subnet broadcast.  Addresses and masks in HOST order.


cdef inline int ifp_has_addr(dp_ifnet *ifp, uint32_t a) noexcept nogil:
    cdef int i
    for i in range(ifp.naddrs):
        if ifp.addr[i] == a:
            return 1
    return 0


cdef inline int ifp_prefix_of(dp_ifnet *ifp, uint32_t a) noexcept nogil:
    """The index of ifp's address whose connected prefix holds a, or -1."""
    cdef int i
    for i in range(ifp.naddrs):
        if (ifp.addr[i] & ifp.mask[i]) == (a & ifp.mask[i]):
            return i
    return -1


cdef inline int ifp_on_link(dp_ifnet *ifp, uint32_t a) noexcept nogil:
    """a lies inside a prefix connected on ifp."""
    return ifp_prefix_of(ifp, a) >= 0


cdef inline uint32_t ifp_src_for(dp_ifnet *ifp, uint32_t peer) noexcept nogil:
    """Our address on ifp in peer's subnet, else the first one (0: none)."""
    cdef int i = ifp_prefix_of(ifp, peer)
    if i >= 0:
        return ifp.addr[i]
    return ifp.addr[0] if ifp.naddrs else 0


cdef inline int ifp_is_subnet_bcast(dp_ifnet *ifp, uint32_t a) noexcept nogil:
    cdef int i
    for i in range(ifp.naddrs):
        if ifp.mask[i] != 0xffffffffU and (a | ifp.mask[i]) == 0xffffffffU \
                and (a & ifp.mask[i]) == (ifp.addr[i] & ifp.mask[i]):
            return 1
    return 0


cdef inline int dp_is_subnet_bcast(dp_state *dp, uint32_t a) noexcept nogil:
    """a is the broadcast address of a prefix connected on any interface."""
    cdef int i
    for i in range(dp.nifs):
        if ifp_is_subnet_bcast(&dp.ifs[i], a):
            return 1
    return 0


cdef inline uint32_t ip_flow_hash(dp_state *dp, const mbuf *m, const ip_hdr *ip) noexcept nogil:
    """The flow of a packet, for a multipath route's choice (rt_nh_select):
    source, destination and protocol, and the ports of TCP, UDP and SCTP
    (their first 4 bytes in all three; Linux's fib_multipath_hash_policy 1).
    A fragment is hashed without ports, the first one too, so that all the
    pieces of a datagram take one path."""
    cdef int hlen = ip_hl(ip)
    cdef uint32_t ports = 0
    if (ip.ip_p == IPPROTO_TCP or ip.ip_p == IPPROTO_UDP or ip.ip_p == IPPROTO_SCTP) and \
            not (ntohs(ip.ip_off) & (IP_MF | IP_OFFMASK)) and m.m_len >= hlen + 4:
        memcpy(&ports, <const uint8_t *>ip + hlen, 4)
    return rt_hash_mix(rt_hash_mix(rt_hash_mix(dp.flow_seed ^ ip.ip_src) ^ ip.ip_dst) ^
                       ports ^ ip.ip_p)
