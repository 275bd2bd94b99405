# nd6.pxi -- Neighbor Discovery (RFC 4861; FreeBSD's netinet6/nd6.c and
# nd6_nbr.c): the neighbour cache, Neighbor Solicitations answered and
# sent, Neighbor Advertisements taken in, resolution with a hold queue,
# and neighbour unreachability detection.
#
# The cache is the ARP table's twin (open addressing, linear probing,
# backward-shift deletion; DP_ND6_MAX entries, at most arp_max_per_if per
# interface, ARP's maxhold packets held per entry), keyed by the 16-byte
# address.  An entry is in one of RFC 4861's states (7.3.2):
#
#   INCOMPLETE  asked for by multicast (its solicited-node group), packets
#               held; asked again once a second, nd6_mmaxtries times in all,
#               then what was held gets address unreachable and the entry
#               is freed.
#   REACHABLE   confirmed by a solicited advertisement, for ReachableTime;
#               then STALE.
#   STALE       a MAC not confirmed lately: learned from a solicitation, a
#               router solicitation or an advertisement that did not answer
#               us, or REACHABLE timed out.  Still used; the first packet
#               sent through it makes it DELAY.  Unused for nd6_gctimer
#               seconds, it is freed.
#   DELAY       used while STALE; waits nd6_delay seconds for a confirmation,
#               then PROBE.
#   PROBE       asked for by unicast (its own address, its cached MAC) when
#               entering the state and then once per RetransTimer (1 s),
#               nd6_umaxtries solicitations in all; RetransTimer after the
#               last one unanswered, the entry is freed.
#
# Packets are sent to the cached MAC in STALE, DELAY and PROBE alike (7.3.3).
# A solicited advertisement makes any entry REACHABLE.  An advertisement with
# the Override flag and a new MAC replaces the cached one (REACHABLE if
# solicited, else STALE); without Override a new MAC only makes a REACHABLE
# entry STALE and is otherwise ignored (7.2.5).  One departure from 7.2.5: a
# new MAC is never confirmed at once, Solicited flag or not -- only an
# INCOMPLETE entry's multicast question could have reached it; PROBE asks
# the cached MAC, the other states ask nothing.  An advertisement with the
# Solicited flag and a MAC nobody asked for -- forged, or mangled -- would
# otherwise keep a wrong MAC REACHABLE for a whole ReachableTime (up to 45 s)
# before the first probe; taken as STALE, the entry is probed at that MAC
# once used and re-resolved by multicast within nd6_delay + nd6_umaxtries +
# 1 s (9 s), as after an unsolicited one.  A neighbour that really moved is
# reached at once all the same (the new MAC is used) and confirmed by the
# probe.  The cached MAC with the Solicited flag makes the entry REACHABLE,
# as the RFC says: that changes no MAC.  A solicitation or router
# solicitation with a source link-layer option makes a new entry STALE, and
# an existing one STALE if the MAC differs (7.2.3, 6.2.6).
#
# Deliberate choices:
#  - A solicited advertisement is the only confirmation: the router has no
#    upper-layer hints (7.3.1) for the traffic it forwards, so a neighbour in
#    use is probed by unicast about every ReachableTime + nd6_delay seconds.
#  - ReachableTime is one value for the router, drawn uniformly from
#    0.5..1.5 x nd6_basereachable (the xorshift jitter of nd6_ra.pxi) when
#    the tunable changes and every two hours after, as FreeBSD redraws its
#    per-interface one (6.3.2 asks for a new value at least every few hours).
#  - STALE is timed from entering it, as FreeBSD's gctimer is: an entry that
#    is used leaves STALE anyway.
#  - A PROBE entry that is never answered is freed, not made INCOMPLETE: the
#    next packet for the address makes a new entry and asks by multicast.
#  - STALE entries are not evicted to make room: a full table (or interface
#    share) refuses new neighbours, counted as ARP's are; nd6_gctimer bounds
#    how long an unused entry stays.
#  - Floods (RFC 6583: packets to the unused addresses of a connected /64)
#    are met as ARP's are (if_ether.pxi): at most arp_max_incomplete of an
#    interface's entries are INCOMPLETE (arp_incomplete_full), so the
#    neighbours in use keep their room and their entries, and multicast
#    solicitations are limited per interface to nd6_ns_ppslimit a second (a
#    refused one counts as a try, and as nd6 solicitations_ratelimited).
#    Unicast probes of neighbours in PROBE are not limited: only neighbours
#    that answered before get them, and starving them under a flood would
#    cut off the neighbours in use (RFC 6583 7.1).
#  - Every timer is a deadline read by nd6_timer (each DP_TIMER_NS), which
#    walks the table only when it holds an entry; the packet path only
#    compares deadlines and never blocks, logs or allocates.
#
# Only on-link neighbours are learned (link-local, or inside a connected
# prefix of the interface); ND messages are accepted only with hop limit
# 255 (proof that they were not forwarded, RFC 4861 7.1.1), ICMPv6 code 0,
# and options of non-zero length that fit; the others count as nd_malformed.

cdef enum:
    ND6_RETRANS_NS = 1000000000             # RetransTimer: RETRANS_TIMER, 1 s
    ND6_RECALC_REACHABLE_S = 7200           # ReachableTime drawn again this often


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


cdef inline void nd6_set_state(dp_state *dp, dp_nd6 *e, int state) noexcept nogil:
    """e's new state, its interface's count of INCOMPLETE entries kept."""
    if e.state == ND6_INCOMPLETE and state != ND6_INCOMPLETE:
        dp.ifs[e.ifindex].nincomplete6 -= 1
    elif state == ND6_INCOMPLETE and e.state != ND6_INCOMPLETE:
        dp.ifs[e.ifindex].nincomplete6 += 1
    e.state = state


cdef dp_nd6 *nd6_insert(dp_state *dp, int ifindex, const uint8_t *a, bint resolving,
                        int *why) noexcept nogil:
    """A new INCOMPLETE entry; NULL with *why set when there is no room.
    resolving: it is to be resolved (a packet waits), not completed at once
    with a MAC that came with it -- only then does the interface's share of
    unresolved entries apply."""
    cdef uint32_t i
    cdef dp_nd6 *e
    if dp.nnd6 >= DP_ND6_MAX:
        why[0] = DROP_ARP_TABLE_FULL
        return NULL
    if dp.ifs[ifindex].nnd6 >= dp.arp_max_per_if:
        why[0] = DROP_ARP_INTERFACE_FULL
        return NULL
    if resolving and dp.ifs[ifindex].nincomplete6 >= dp.arp_max_incomplete:
        why[0] = DROP_ARP_INCOMPLETE_FULL
        return NULL
    i = nd6_hash(ifindex, a)
    while dp.nd6[i].state != ND6_FREE:
        i = (i + 1) & (DP_ND6_SIZE - 1)
    e = &dp.nd6[i]
    memset(e, 0, sizeof(dp_nd6))
    memcpy(e.ip.s6, a, 16)
    e.ifindex = ifindex
    nd6_set_state(dp, e, ND6_INCOMPLETE)
    mbufq_init(&e.hold, dp.arp_maxhold)
    dp.nnd6 += 1
    dp.ifs[ifindex].nnd6 += 1
    return e


cdef void nd6_remove(dp_state *dp, dp_nd6 *e) noexcept nogil:
    """Free the slot (its hold queue must be empty); shift the probe run back."""
    cdef uint32_t i = <uint32_t>(e - &dp.nd6[0])
    cdef uint32_t j = i, k
    nd6_set_state(dp, e, ND6_FREE)
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


cdef void nd6_new_reachable_time(dp_state *dp) noexcept nogil:
    """Draw ReachableTime from BaseReachableTime (RFC 4861 6.3.2)."""
    cdef int64_t base = <int64_t>dp.nd6_basereachable * 1000000
    dp.nd6_reachable_ns = ra_random_ns(dp, base // 2, base + base // 2)
    dp.nd6_recalc_ns = dp.now_ns + <int64_t>ND6_RECALC_REACHABLE_S * 1000000000


cdef inline void nd6_to_reachable(dp_state *dp, dp_nd6 *e) noexcept nogil:
    nd6_set_state(dp, e, ND6_REACHABLE)
    e.tries = 0
    e.expire_ns = dp.now_ns + dp.nd6_reachable_ns


cdef inline void nd6_to_stale(dp_state *dp, dp_nd6 *e) noexcept nogil:
    nd6_set_state(dp, e, ND6_STALE)
    e.tries = 0
    e.expire_ns = dp.now_ns + <int64_t>dp.nd6_gctimer * 1000000000


cdef inline void nd6_to_delay(dp_state *dp, dp_nd6 *e) noexcept nogil:
    nd6_set_state(dp, e, ND6_DELAY)
    e.expire_ns = dp.now_ns + <int64_t>dp.nd6_delay * 1000000000


cdef void nd6_flush_hold(dp_state *dp, dp_nd6 *e) noexcept nogil:
    """Send what waited for e's MAC; sending through a STALE entry makes it
    DELAY, as for any packet (7.3.3)."""
    cdef dp_ifnet *ifp = &dp.ifs[e.ifindex]
    cdef mbuf *m
    if mbufq_len(&e.hold) == 0:
        return
    if e.state == ND6_STALE:
        nd6_to_delay(dp, e)
    m = mbufq_dequeue(&e.hold)
    while m != NULL:
        trace_nd6(dp, m, TR_ND6_RESOLVED, e, 0)
        ether_output(dp, ifp, m, e.mac, ETHERTYPE_IPV6)
        m = mbufq_dequeue(&e.hold)


cdef void nd6_cache_lladdr(dp_state *dp, dp_ifnet *ifp, const uint8_t *a,
                           const uint8_t *mac) noexcept nogil:
    """A solicitation (or router solicitation) from a says it is at mac
    (7.2.3): a new entry, an INCOMPLETE one or one with another MAC becomes
    STALE with mac; one that already has mac keeps its state."""
    cdef dp_nd6 *e = nd6_lookup(dp, ifp.index, a)
    cdef int why
    if e == NULL:
        e = nd6_insert(dp, ifp.index, a, False, &why)
        if e == NULL:
            dp.drops[why] += 1
            return
    elif e.state != ND6_INCOMPLETE and memcmp(e.mac, mac, ETHER_ADDR_LEN) == 0:
        return
    memcpy(e.mac, mac, ETHER_ADDR_LEN)
    nd6_to_stale(dp, e)
    nd6_flush_hold(dp, e)


cdef void nd6_na_update(dp_state *dp, dp_nd6 *e, const uint8_t *tll, uint32_t flags) noexcept nogil:
    """An advertisement for e's address (7.2.5); tll its target link-layer
    option, NULL without one."""
    cdef bint solicited = (flags & ND_NA_FLAG_SOLICITED) != 0
    cdef bint changed
    if e.state == ND6_INCOMPLETE:
        if tll == NULL:
            return                      # no MAC to complete it with
        memcpy(e.mac, tll, ETHER_ADDR_LEN)
        if solicited:
            nd6_to_reachable(dp, e)
        else:
            nd6_to_stale(dp, e)
        nd6_flush_hold(dp, e)
        return
    changed = tll != NULL and memcmp(e.mac, tll, ETHER_ADDR_LEN) != 0
    if changed and not (flags & ND_NA_FLAG_OVERRIDE):
        if e.state == ND6_REACHABLE:
            nd6_to_stale(dp, e)         # the MAC we have is in doubt; keep it
        return
    if changed:
        memcpy(e.mac, tll, ETHER_ADDR_LEN)
        solicited = False               # we asked for the cached MAC, if at all: not confirmed
    if solicited:
        nd6_to_reachable(dp, e)
    elif changed:
        nd6_to_stale(dp, e)


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


cdef void nd6_ns_output(dp_state *dp, dp_ifnet *ifp, const uint8_t *target,
                        const uint8_t *mac) noexcept nogil:
    """Ask who has target (RFC 4861 7.2.2): with mac NULL, its solicited-node
    group; else target itself at mac, the probe of a neighbour in PROBE
    (7.3.3).  Both carry our source link-layer option."""
    cdef uint8_t group[16]
    cdef uint8_t gmac[6]
    cdef const uint8_t *dst = target
    cdef mbuf *m
    if mac == NULL:
        in6_solicited_node(group, target)
        ether_mcast6(gmac, group)
        dst = group
        mac = gmac
    m = nd6_new(ifp, ND_NEIGHBOR_SOLICIT, ifp6_src_for(ifp, target), dst, target, 0,
                ND_OPT_SOURCE_LINKADDR)
    if m == NULL:
        dp.drops[DROP_NO_BUFFER] += 1
        return
    dp.nd6_solicits += 1
    if dst == target:
        dp.nd6_probes += 1
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
        nd6_cache_lladdr(dp, ifp, ip6.ip6_src, sll)
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
    """An advertisement: complete, confirm or update the entry of its
    target (nd6_na_update).  One for a neighbour not in the cache creates
    nothing (7.2.5)."""
    cdef ip6_hdr *ip6 = <ip6_hdr *>mdata(m)
    cdef nd_neighbor_solicit *na = <nd_neighbor_solicit *>(mdata(m) + IP6_HDR_LEN)
    cdef bint bad = False
    cdef const uint8_t *tll
    cdef dp_nd6 *e
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
    e = nd6_lookup(dp, ifp.index, na.nd_ns_target)
    if e != NULL and (tll == NULL or not (tll[0] & 1)):
        nd6_na_update(dp, e, tll, ntohl(na.nd_ns_hdr.icmp6_data32))
    if ifp.mirror >= 0:
        dp_punt(dp, ifp, m, True)           # the mirror's kernel may have asked (cplane.py)
        return
    m_freem(m)


cdef void nd6_resolve(dp_state *dp, dp_ifnet *ifp, mbuf *m, const uint8_t *nexthop) noexcept nogil:
    """Send m (an IPv6 packet) to nexthop's MAC, or hold it and solicit, at
    most once a second (FreeBSD's nd6_resolve)."""
    cdef dp_nd6 *e = nd6_lookup(dp, ifp.index, nexthop)
    cdef int why
    if e != NULL and e.state != ND6_INCOMPLETE:
        if e.state == ND6_STALE or (e.state == ND6_REACHABLE and dp.now_ns >= e.expire_ns):
            nd6_to_delay(dp, e)         # used while stale: confirm it soon (7.3.3)
        trace_nd6(dp, m, TR_ND6_HIT, e, 0)
        ether_output(dp, ifp, m, e.mac, ETHERTYPE_IPV6)
        return
    if e == NULL:
        e = nd6_insert(dp, ifp.index, nexthop, True, &why)
        if e == NULL:
            dp_drop_m(dp, m, why)
            return
    e.hold.mq_maxlen = dp.arp_maxhold
    while mbufq_full(&e.hold):
        dp_drop_m(dp, mbufq_dequeue(&e.hold), DROP_ND6_HOLD_OVERFLOW)
    mbufq_enqueue(&e.hold, m)
    trace_nd6(dp, m, TR_ND6_MISS, e, mbufq_len(&e.hold))
    if e.tries == 0 or dp.now_ns - e.last_req_ns >= ND6_RETRANS_NS:
        nd6_solicit(dp, ifp, e, m)


cdef void nd6_solicit(dp_state *dp, dp_ifnet *ifp, dp_nd6 *e, const mbuf *m) noexcept nogil:
    """One more multicast solicitation for INCOMPLETE e (m: the packet that
    asked, NULL from the timer), unless ifp sent nd6_ns_ppslimit of them
    this second: the try counts all the same (as ARP's arp_solicit)."""
    e.tries += 1
    e.last_req_ns = dp.now_ns
    if not dp_ppsratecheck(dp, &ifp.nd6_pps_ns, &ifp.nd6_pps, dp.nd6_ns_ppslimit):
        dp.nd6_ratelimited += 1
        if m != NULL:
            trace_nd6(dp, m, TR_ND6_RATELIMITED, e, 0)
        return
    nd6_ns_output(dp, ifp, e.ip.s6, NULL)


cdef void nd6_probe(dp_state *dp, dp_nd6 *e) noexcept nogil:
    """One unicast solicitation of a neighbour in PROBE; the next is due
    RetransTimer later."""
    e.tries += 1
    e.last_req_ns = dp.now_ns
    e.expire_ns = dp.now_ns + ND6_RETRANS_NS
    nd6_ns_output(dp, &dp.ifs[e.ifindex], e.ip.s6, e.mac)


cdef void nd6_timer(dp_state *dp) noexcept nogil:
    """The deadlines of the states: INCOMPLETE asked again once a second and,
    after nd6_mmaxtries, given up with ICMPv6 address unreachable for what
    was held (RFC 4861 7.2.2); REACHABLE to STALE; STALE freed after
    nd6_gctimer unused; DELAY to PROBE; PROBE asked again, or freed after
    nd6_umaxtries."""
    cdef uint32_t i = 0
    cdef dp_nd6 *e
    cdef mbuf *m
    if dp.nnd6 == 0:
        return                          # an IPv4-only router never walks the 320 KB table
    if dp.now_ns >= dp.nd6_recalc_ns:
        nd6_new_reachable_time(dp)
    while i < DP_ND6_SIZE:
        e = &dp.nd6[i]
        if e.state == ND6_INCOMPLETE and dp.now_ns - e.last_req_ns >= ND6_RETRANS_NS:
            if e.tries < dp.nd6_mmaxtries:
                nd6_solicit(dp, &dp.ifs[e.ifindex], e, NULL)
            else:
                # As in arp_timer: an error held here itself is not answered
                # again, so the loop ends.
                m = mbufq_dequeue(&e.hold)
                while m != NULL:
                    dp_drop_count(dp, m, DROP_ND6_TIMEOUT)
                    icmp6_error(dp, &dp.ifs[m.m_pkthdr.rcvif], m, ICMP6_DST_UNREACH,
                                ICMP6_DST_UNREACH_ADDR, 0)
                    m = mbufq_dequeue(&e.hold)
                nd6_remove(dp, e)
                continue
        elif e.state >= ND6_REACHABLE and dp.now_ns >= e.expire_ns:
            # Entries with a MAC hold no packets: removing one frees nothing.
            if e.state == ND6_REACHABLE:
                nd6_to_stale(dp, e)
            elif e.state == ND6_DELAY:
                nd6_set_state(dp, e, ND6_PROBE)
                e.tries = 0
                nd6_probe(dp, e)
            elif e.state == ND6_PROBE and e.tries < dp.nd6_umaxtries:
                nd6_probe(dp, e)
            else:                       # STALE and unused, or PROBE unanswered
                nd6_remove(dp, e)
                continue
        i += 1


cdef int nd6_reclaim(dp_state *dp) noexcept nogil:
    """Free every packet held for an unresolved neighbour (arp_reclaim's twin)."""
    cdef int i, n = 0
    for i in range(DP_ND6_SIZE):
        if dp.nd6[i].state == ND6_INCOMPLETE:
            n += dp_drop_queue(dp, &dp.nd6[i].hold, DROP_ARP_HOLD_RECLAIMED)
    return n


cdef void nd6_clear(dp_state *dp) noexcept nogil:
    cdef int i
    for i in range(DP_ND6_SIZE):
        if dp.nd6[i].state != ND6_FREE:
            mbufq_drain(&dp.nd6[i].hold)
        dp.nd6[i].state = ND6_FREE
    for i in range(dp.nifs):
        dp.ifs[i].nnd6 = 0
        dp.ifs[i].nincomplete6 = 0
    dp.nnd6 = 0
