# nd6.pxi -- Neighbor Discovery (RFC 4861; FreeBSD's netinet6/nd6.c and
# nd6_nbr.c): the neighbour cache, Neighbor Solicitations answered and
# sent, Neighbor Advertisements taken in, resolution with a hold queue.
#
# The cache is the ARP table's twin (open addressing, linear probing,
# backward-shift deletion; DP_ND6_MAX entries, at most arp_max_per_if per
# interface; the same hold, retry and lifetime tunables), keyed by the
# 16-byte address.  States: INCOMPLETE (asked, packets held) and REACHABLE
# (answered; used until its lifetime ends, then asked again).  RFC 4861's
# STALE/DELAY/PROBE states, which reconfirm a neighbour by unicast before
# the lifetime ends, are not kept: an entry is asked for again by multicast
# once it expires, as ARP entries are.
#
# Only on-link neighbours are learned (link-local, or inside a connected
# prefix of the interface); ND messages are accepted only with hop limit
# 255 (proof that they were not forwarded, RFC 4861 7.1.1), ICMPv6 code 0,
# and options of non-zero length that fit; the others count as nd_malformed.


cdef inline uint32_t nd6_hash(int ifindex, const uint8_t *a) noexcept nogil:
    cdef uint32_t w0, w1
    memcpy(&w0, a + 8, 4)
    memcpy(&w1, a + 12, 4)
    return (((w0 ^ w1) * 2654435761U) ^ (<uint32_t>ifindex * 40503U)) & (DP_ND6_SIZE - 1)


cdef dp_nd6 *nd6_lookup(dp_state *dp, int ifindex, const uint8_t *a) noexcept nogil:
    cdef uint32_t i = nd6_hash(ifindex, a)
    while dp.nd6[i].state != ND6_FREE:
        if dp.nd6[i].ifindex == ifindex and memcmp(dp.nd6[i].ip.s6, a, 16) == 0:
            return &dp.nd6[i]
        i = (i + 1) & (DP_ND6_SIZE - 1)
    return NULL


cdef dp_nd6 *nd6_insert(dp_state *dp, int ifindex, const uint8_t *a, int *why) noexcept nogil:
    """A new INCOMPLETE entry; NULL with *why set when there is no room."""
    cdef uint32_t i
    cdef dp_nd6 *e
    if dp.nnd6 >= DP_ND6_MAX:
        why[0] = DROP_ARP_TABLE_FULL
        return NULL
    if dp.ifs[ifindex].nnd6 >= dp.arp_max_per_if:
        why[0] = DROP_ARP_INTERFACE_FULL
        return NULL
    i = nd6_hash(ifindex, a)
    while dp.nd6[i].state != ND6_FREE:
        i = (i + 1) & (DP_ND6_SIZE - 1)
    e = &dp.nd6[i]
    memset(e, 0, sizeof(dp_nd6))
    memcpy(e.ip.s6, a, 16)
    e.ifindex = ifindex
    e.state = ND6_INCOMPLETE
    mbufq_init(&e.hold, dp.arp_maxhold)
    dp.nnd6 += 1
    dp.ifs[ifindex].nnd6 += 1
    return e


cdef void nd6_remove(dp_state *dp, dp_nd6 *e) noexcept nogil:
    """Free the slot (its hold queue must be empty); shift the probe run back."""
    cdef uint32_t i = <uint32_t>(e - &dp.nd6[0])
    cdef uint32_t j = i, k
    dp.nd6[i].state = ND6_FREE
    dp.nnd6 -= 1
    dp.ifs[e.ifindex].nnd6 -= 1
    while True:
        j = (j + 1) & (DP_ND6_SIZE - 1)
        if dp.nd6[j].state == ND6_FREE:
            return
        k = nd6_hash(dp.nd6[j].ifindex, dp.nd6[j].ip.s6)
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            dp.nd6[i] = dp.nd6[j]
            dp.nd6[j].state = ND6_FREE
            i = j


cdef const uint8_t *nd6_lladdr_opt(const uint8_t *opts, int len, int want,
                                   bint *bad) noexcept nogil:
    """The MAC in the first option of type want (source or target link-layer
    address), or NULL; *bad when an option has length 0 or runs past the
    end, or a link-layer option is not 8 bytes."""
    cdef int off = 0, olen
    while off + 2 <= len:
        olen = opts[off + 1] * 8
        if olen == 0 or off + olen > len:
            bad[0] = True
            return NULL
        if opts[off] == want:
            if olen != ND_OPT_LLADDR_LEN:
                bad[0] = True
                return NULL
            return opts + off + 2
        off += olen
    if off != len:
        bad[0] = True
    return NULL


cdef void nd6_flush_hold(dp_state *dp, dp_nd6 *e) noexcept nogil:
    cdef dp_ifnet *ifp = &dp.ifs[e.ifindex]
    cdef mbuf *m = mbufq_dequeue(&e.hold)
    while m != NULL:
        ether_output(dp, ifp, m, e.mac, ETHERTYPE_IPV6)
        m = mbufq_dequeue(&e.hold)


cdef void nd6_learn(dp_state *dp, dp_ifnet *ifp, const uint8_t *a, const uint8_t *mac,
                    bint create) noexcept nogil:
    """a is at mac: update its entry (creating it if create), flush what waited."""
    cdef dp_nd6 *e = nd6_lookup(dp, ifp.index, a)
    cdef int why
    if e == NULL:
        if not create:
            return
        e = nd6_insert(dp, ifp.index, a, &why)
        if e == NULL:
            dp.drops[why] += 1
            return
    memcpy(e.mac, mac, ETHER_ADDR_LEN)
    e.state = ND6_REACHABLE
    e.tries = 0
    e.expire_ns = dp.now_ns + <int64_t>dp.arp_max_age * 1000000000
    nd6_flush_hold(dp, e)


cdef mbuf *nd6_new(dp_ifnet *ifp, int type, const uint8_t *src, const uint8_t *dst,
                   const uint8_t *target, uint32_t flags, int opt) noexcept nogil:
    """An NS or NA (IPv6 header on): target, flags, and a source/target
    link-layer option with our MAC (opt: its type, 0 for none)."""
    cdef int len = ND_NS_LEN + (ND_OPT_LLADDR_LEN if opt else 0)
    cdef mbuf *m = dp_new_packet(IP6_HDR_LEN + len)
    cdef ip6_hdr *ip6
    cdef nd_neighbor_solicit *ns
    cdef uint8_t *o
    if m == NULL:
        return NULL
    ip6 = <ip6_hdr *>mdata(m)
    ip6_fill(ip6, src, dst, len, IPPROTO_ICMPV6, IP6_HLIM_ND)
    ns = <nd_neighbor_solicit *>(mdata(m) + IP6_HDR_LEN)
    ns.nd_ns_hdr.icmp6_type = <uint8_t>type
    ns.nd_ns_hdr.icmp6_code = 0
    ns.nd_ns_hdr.icmp6_data32 = htonl(flags)
    memcpy(ns.nd_ns_target, target, 16)
    if opt:
        o = mdata(m) + IP6_HDR_LEN + ND_NS_LEN
        o[0] = <uint8_t>opt
        o[1] = 1
        memcpy(o + 2, ifp.mac, ETHER_ADDR_LEN)
    icmp6_set_cksum(m, len)
    return m


cdef void nd6_ns_output(dp_state *dp, dp_ifnet *ifp, const uint8_t *target) noexcept nogil:
    """Ask the solicited-node group of target who has it (RFC 4861 7.2.2)."""
    cdef uint8_t group[16]
    cdef uint8_t mac[6]
    cdef mbuf *m
    in6_solicited_node(group, target)
    m = nd6_new(ifp, ND_NEIGHBOR_SOLICIT, ifp6_src_for(ifp, target), group, target, 0,
                ND_OPT_SOURCE_LINKADDR)
    if m == NULL:
        dp.drops[DROP_NO_BUFFER] += 1
        return
    ether_mcast6(mac, group)
    dp.nd6_solicits += 1
    ether_output(dp, ifp, m, mac, ETHERTYPE_IPV6)


cdef void nd6_ns_input(dp_state *dp, dp_ifnet *ifp, mbuf *m, int icmplen) noexcept nogil:
    """A solicitation: learn the sender (with its link-layer option), and
    answer for our addresses with an advertisement carrying the Router
    flag and our MAC.  A duplicate address detection probe (unspecified
    source) is answered to all-nodes, unsolicited."""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    cdef nd_neighbor_solicit *ns = <nd_neighbor_solicit *>(mdata(m) + IP6_HDR_LEN)
    cdef bint bad = False, dad
    cdef const uint8_t *sll
    cdef uint8_t dst[16]
    cdef uint8_t mac[6]
    cdef uint32_t flags = ND_NA_FLAG_ROUTER | ND_NA_FLAG_OVERRIDE
    cdef mbuf *n
    if icmplen < ND_NS_LEN or in6_is_multicast(ns.nd_ns_target):
        dp_drop_m(dp, m, DROP_ND_MALFORMED)
        return
    sll = nd6_lladdr_opt(mdata(m) + IP6_HDR_LEN + ND_NS_LEN, icmplen - ND_NS_LEN,
                         ND_OPT_SOURCE_LINKADDR, &bad)
    dad = in6_is_unspecified(ip6.ip6_src)
    if bad or (dad and (sll != NULL or not in6_is_solicited_node(ip6.ip6_dst))):
        dp_drop_m(dp, m, DROP_ND_MALFORMED)
        return
    if not dad and not ifp6_on_link(ifp, ip6.ip6_src):
        dp_drop_m(dp, m, DROP_ND_NOT_ON_LINK)
        return
    dp.nd6_in += 1
    if not ifp6_has_addr(ifp, ns.nd_ns_target):
        m_freem(m)                      # for another node of the link
        return
    if sll != NULL and not (sll[0] & 1):
        nd6_learn(dp, ifp, ip6.ip6_src, sll, True)
    if dad:
        memset(dst, 0, 16)
        dst[0] = 0xff
        dst[1] = 0x02
        dst[15] = 1
        ether_mcast6(mac, dst)
    else:
        memcpy(dst, ip6.ip6_src, 16)
        flags |= ND_NA_FLAG_SOLICITED
        memcpy(mac, sll if sll != NULL else (<ether_header *>(mdata(m) - ETHER_HDR_LEN)).ether_shost,
               ETHER_ADDR_LEN)
    n = nd6_new(ifp, ND_NEIGHBOR_ADVERT, ns.nd_ns_target, dst, ns.nd_ns_target, flags,
                ND_OPT_TARGET_LINKADDR)
    m_freem(m)
    if n == NULL:
        dp.drops[DROP_NO_BUFFER] += 1
        return
    dp.nd6_adverts += 1
    ether_output(dp, ifp, n, mac, ETHERTYPE_IPV6)


cdef void nd6_na_input(dp_state *dp, dp_ifnet *ifp, mbuf *m, int icmplen) noexcept nogil:
    """An advertisement: complete (or refresh) the entry of its target.
    Unsolicited ones for neighbours we never asked about create nothing."""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    cdef nd_neighbor_solicit *na = <nd_neighbor_solicit *>(mdata(m) + IP6_HDR_LEN)
    cdef bint bad = False
    cdef const uint8_t *tll
    if icmplen < ND_NA_LEN or in6_is_multicast(na.nd_ns_target) or (
            in6_is_multicast(ip6.ip6_dst) and ntohl(na.nd_ns_hdr.icmp6_data32) & ND_NA_FLAG_SOLICITED):
        dp_drop_m(dp, m, DROP_ND_MALFORMED)
        return
    tll = nd6_lladdr_opt(mdata(m) + IP6_HDR_LEN + ND_NA_LEN, icmplen - ND_NA_LEN,
                         ND_OPT_TARGET_LINKADDR, &bad)
    if bad:
        dp_drop_m(dp, m, DROP_ND_MALFORMED)
        return
    if not ifp6_on_link(ifp, na.nd_ns_target):
        dp_drop_m(dp, m, DROP_ND_NOT_ON_LINK)
        return
    dp.nd6_in += 1
    if tll != NULL and not (tll[0] & 1):
        nd6_learn(dp, ifp, na.nd_ns_target, tll, False)
    m_freem(m)


cdef void nd6_resolve(dp_state *dp, dp_ifnet *ifp, mbuf *m, const uint8_t *nexthop) noexcept nogil:
    """Send m (an IPv6 packet) to nexthop's MAC, or hold it and solicit, at
    most once a second (FreeBSD's nd6_resolve)."""
    cdef dp_nd6 *e = nd6_lookup(dp, ifp.index, nexthop)
    cdef int why
    if e != NULL and e.state == ND6_REACHABLE:
        if dp.now_ns < e.expire_ns:
            ether_output(dp, ifp, m, e.mac, ETHERTYPE_IPV6)
            return
        e.state = ND6_INCOMPLETE        # expired: ask again before using it
        e.tries = 0
        e.last_req_ns = 0
    if e == NULL:
        e = nd6_insert(dp, ifp.index, nexthop, &why)
        if e == NULL:
            dp_drop_m(dp, m, why)
            return
    e.hold.mq_maxlen = dp.arp_maxhold
    while mbufq_full(&e.hold):
        dp_drop_m(dp, mbufq_dequeue(&e.hold), DROP_ND6_HOLD_OVERFLOW)
    mbufq_enqueue(&e.hold, m)
    if e.tries == 0 or dp.now_ns - e.last_req_ns >= 1000000000:
        e.tries += 1
        e.last_req_ns = dp.now_ns
        nd6_ns_output(dp, ifp, nexthop)


cdef void nd6_timer(dp_state *dp) noexcept nogil:
    """Solicit again once a second; after arp_max_tries give up on what was
    held, with ICMPv6 address unreachable (RFC 4861 7.2.2); forget entries
    a minute after they expired."""
    cdef uint32_t i = 0
    cdef dp_nd6 *e
    cdef mbuf *m
    if dp.nnd6 == 0:
        return                          # an IPv4-only router never walks the 320 KB table
    while i < DP_ND6_SIZE:
        e = &dp.nd6[i]
        if e.state == ND6_INCOMPLETE and dp.now_ns - e.last_req_ns >= 1000000000:
            if e.tries < dp.arp_max_tries:
                e.tries += 1
                e.last_req_ns = dp.now_ns
                nd6_ns_output(dp, &dp.ifs[e.ifindex], e.ip.s6)
            else:
                # As in arp_timer: an error held here itself is not answered
                # again, so the loop ends.
                m = mbufq_dequeue(&e.hold)
                while m != NULL:
                    dp.drops[DROP_ND6_TIMEOUT] += 1
                    icmp6_error(dp, &dp.ifs[m.m_pkthdr.rcvif], m, ICMP6_DST_UNREACH,
                                ICMP6_DST_UNREACH_ADDR, 0)
                    m = mbufq_dequeue(&e.hold)
                nd6_remove(dp, e)
                continue
        elif e.state == ND6_REACHABLE and dp.now_ns >= e.expire_ns + 60 * <int64_t>1000000000:
            if mbufq_len(&e.hold) == 0:
                nd6_remove(dp, e)
                continue
        i += 1


cdef int nd6_reclaim(dp_state *dp) noexcept nogil:
    """Free every packet held for an unresolved neighbour (arp_reclaim's twin)."""
    cdef int i, k, n = 0
    for i in range(DP_ND6_SIZE):
        if dp.nd6[i].state == ND6_INCOMPLETE:
            k = mbufq_drain(&dp.nd6[i].hold)
            dp.drops[DROP_ARP_HOLD_RECLAIMED] += k
            n += k
    return n


cdef void nd6_clear(dp_state *dp) noexcept nogil:
    cdef int i
    for i in range(DP_ND6_SIZE):
        if dp.nd6[i].state != ND6_FREE:
            mbufq_drain(&dp.nd6[i].hold)
        dp.nd6[i].state = ND6_FREE
    for i in range(dp.nifs):
        dp.ifs[i].nnd6 = 0
    dp.nnd6 = 0
