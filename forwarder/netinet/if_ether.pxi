# if_ether.pxi -- ARP (RFC 826; FreeBSD's netinet/if_ether.c): the
# neighbour table, arp_input, resolution with a hold queue, the timer.
#
# The table is open addressing with linear probing and backward-shift
# deletion, DP_ARP_SIZE slots for at most DP_ARP_MAX entries, and at most
# arp_max_per_if of them on one interface, so one link (a flood of requests
# from many sources) cannot take the room the neighbours of the others need.
# Only on-link senders are learned or answered: inside a prefix connected on
# the receiving interface, or under a route that leaves by that interface
# without a gateway (`route add PREFIX dev IF`); the others count as
# arp_not_on_link.


cdef inline uint32_t arp_hash(int ifindex, uint32_t ip) noexcept nogil:
    return ((ip * 2654435761U) ^ (<uint32_t>ifindex * 40503U)) & (DP_ARP_SIZE - 1)


cdef dp_arp *arp_lookup(dp_state *dp, int ifindex, uint32_t ip) noexcept nogil:
    cdef uint32_t i = arp_hash(ifindex, ip)
    while dp.arp[i].state != ARP_FREE:
        if dp.arp[i].ip == ip and dp.arp[i].ifindex == ifindex:
            return &dp.arp[i]
        i = (i + 1) & (DP_ARP_SIZE - 1)
    return NULL


cdef dp_arp *arp_insert(dp_state *dp, int ifindex, uint32_t ip, int state,
                        int *why) noexcept nogil:
    """A new entry; NULL with *why set to the drop reason when there is no
    room (the table, or the interface's share of it)."""
    cdef uint32_t i
    cdef dp_arp *e
    if dp.narp >= DP_ARP_MAX:
        why[0] = DROP_ARP_TABLE_FULL
        return NULL
    if dp.ifs[ifindex].narp >= dp.arp_max_per_if:
        why[0] = DROP_ARP_INTERFACE_FULL
        return NULL
    i = arp_hash(ifindex, ip)
    while dp.arp[i].state != ARP_FREE:
        i = (i + 1) & (DP_ARP_SIZE - 1)
    e = &dp.arp[i]
    memset(e, 0, sizeof(dp_arp))
    e.ip = ip
    e.ifindex = ifindex
    e.state = state
    mbufq_init(&e.hold, dp.arp_maxhold)
    dp.narp += 1
    dp.ifs[ifindex].narp += 1
    return e


cdef void arp_remove(dp_state *dp, dp_arp *e) noexcept nogil:
    """Free the slot (its hold queue must be empty) and shift later members
    of the probe run back so lookups never stop at a hole."""
    cdef uint32_t i = <uint32_t>(e - &dp.arp[0])
    cdef uint32_t j = i, k
    dp.arp[i].state = ARP_FREE
    dp.narp -= 1
    dp.ifs[e.ifindex].narp -= 1
    while True:
        j = (j + 1) & (DP_ARP_SIZE - 1)
        if dp.arp[j].state == ARP_FREE:
            return
        k = arp_hash(dp.arp[j].ifindex, dp.arp[j].ip)
        # Move j into the hole at i unless its home k lies cyclically in (i, j].
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            dp.arp[i] = dp.arp[j]
            dp.arp[j].state = ARP_FREE
            i = j


cdef inline bint arp_on_link(dp_state *dp, dp_ifnet *ifp, uint32_t a) noexcept nogil:
    """a is a neighbour on ifp's link: a connected prefix of ifp, or a
    direct route out of ifp."""
    cdef const rt_nexthop *nh
    if ifp_on_link(ifp, a):
        return True
    nh = rt_lookup_nh(dp.rt, a)
    return nh != NULL and nh.type == NH_FORWARD and nh.gateway == 0 and nh.ifindex == ifp.index


cdef void arp_request(dp_state *dp, dp_ifnet *ifp, uint32_t tip) noexcept nogil:
    """Broadcast who-has tip on ifp."""
    cdef mbuf *m = dp_new_packet(ETHER_HDR_LEN + ARP_HDR_LEN)
    cdef ether_arp *ah
    if m == NULL:
        dp.drops[DROP_NO_BUFFER] += 1
        return
    ether_fill(<ether_header *>mdata(m), ETHER_BCAST, ifp.mac, ETHERTYPE_ARP)
    ah = <ether_arp *>(mdata(m) + ETHER_HDR_LEN)
    ah.ar_hrd = htons(ARPHRD_ETHER)
    ah.ar_pro = htons(ETHERTYPE_IP)
    ah.ar_hln = ETHER_ADDR_LEN
    ah.ar_pln = IP_ADDR_LEN
    ah.ar_op = htons(ARPOP_REQUEST)
    memcpy(ah.arp_sha, ifp.mac, ETHER_ADDR_LEN)
    ah.arp_spa = htonl(ifp_src_for(ifp, tip))
    memset(ah.arp_tha, 0, ETHER_ADDR_LEN)
    ah.arp_tpa = htonl(tip)
    dp.arp_requests += 1
    dp_transmit(dp, ifp, m)


cdef void arp_flush_hold(dp_state *dp, dp_arp *e) noexcept nogil:
    """Send what waited for e's MAC."""
    cdef dp_ifnet *ifp = &dp.ifs[e.ifindex]
    cdef mbuf *m = mbufq_dequeue(&e.hold)
    while m != NULL:
        trace_data(dp, m, TR_ARP_RESOLVED, 0, e.ip, 0, 0, <uint32_t>ifp.index, e.mac, 6)
        ether_output(dp, ifp, m, e.mac, ETHERTYPE_IP)
        m = mbufq_dequeue(&e.hold)


cdef void arp_input(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """RFC 826 with the merge rule: update a known sender; learn a new one
    only when the packet is for us and the sender is on link; answer
    requests for our addresses from on-link senders."""
    cdef ether_header *eh = <ether_header *>mdata(m)
    cdef ether_arp *ah = <ether_arp *>(mdata(m) + ETHER_HDR_LEN)
    cdef uint32_t spa, tpa
    cdef int ours, why
    cdef dp_arp *e
    if m.m_len < ETHER_HDR_LEN + ARP_HDR_LEN or ntohs(ah.ar_hrd) != ARPHRD_ETHER \
            or ntohs(ah.ar_pro) != ETHERTYPE_IP or ah.ar_hln != ETHER_ADDR_LEN \
            or ah.ar_pln != IP_ADDR_LEN:
        dp_drop_m(dp, m, DROP_ARP_MALFORMED)
        return
    spa = ntohl(ah.arp_spa)
    tpa = ntohl(ah.arp_tpa)
    trace_data(dp, m, TR_ARP_INPUT, ntohs(ah.ar_op), spa, tpa, 0, 0, ah.arp_sha, 6)
    ours = ifp_has_addr(ifp, tpa)
    # 0.0.0.0 is a probe (RFC 5227): answered, never learned.
    if ours and spa != 0 and not arp_on_link(dp, ifp, spa):
        dp_drop_m(dp, m, DROP_ARP_NOT_ON_LINK)
        return
    dp.arp_in += 1                      # a drop is never also "received"
    if spa != 0 and not (ah.arp_sha[0] & 1):
        e = arp_lookup(dp, ifp.index, spa)
        if e == NULL and ours:
            e = arp_insert(dp, ifp.index, spa, ARP_REACHABLE, &why)
            if e == NULL:
                dp.drops[why] += 1
        if e != NULL:
            memcpy(e.mac, ah.arp_sha, ETHER_ADDR_LEN)
            e.state = ARP_REACHABLE
            e.tries = 0
            e.expire_ns = dp.now_ns + <int64_t>dp.arp_max_age * 1000000000
            arp_flush_hold(dp, e)
    if ntohs(ah.ar_op) == ARPOP_REQUEST and ours:
        # The reply is the request turned around, in place.
        memcpy(eh.ether_dhost, ah.arp_sha, ETHER_ADDR_LEN)
        memcpy(eh.ether_shost, ifp.mac, ETHER_ADDR_LEN)
        ah.ar_op = htons(ARPOP_REPLY)
        memcpy(ah.arp_tha, ah.arp_sha, ETHER_ADDR_LEN)
        ah.arp_tpa = htonl(spa)
        memcpy(ah.arp_sha, ifp.mac, ETHER_ADDR_LEN)
        ah.arp_spa = htonl(tpa)
        dp.arp_replies += 1
        trace_end(dp, m, TR_END_DELIVERED, 0)
        dp_transmit(dp, ifp, m)
        return
    if ifp.mirror >= 0 and ntohs(ah.ar_op) == ARPOP_REPLY:
        dp_punt(dp, ifp, m, False)      # the mirror's kernel asked (cplane.py)
        return
    trace_end(dp, m, TR_END_DELIVERED, 0)
    m_freem(m)


cdef void ether_resolve(dp_state *dp, dp_ifnet *ifp, mbuf *m, uint32_t nexthop) noexcept nogil:
    """Send m to nexthop's MAC, or hold it (newest kept) and ask, at most
    one request per second per neighbour (FreeBSD's arpresolve)."""
    cdef dp_arp *e = arp_lookup(dp, ifp.index, nexthop)
    cdef int why
    if e != NULL and e.state == ARP_REACHABLE:
        if dp.now_ns < e.expire_ns:
            trace_data(dp, m, TR_ARP_HIT, 0, nexthop, 0, 0, <uint32_t>ifp.index, e.mac, 6)
            ether_output(dp, ifp, m, e.mac, ETHERTYPE_IP)
            return
        e.state = ARP_INCOMPLETE     # aged: ask again before using it
        e.tries = 0
        e.last_req_ns = 0
    if e == NULL:
        e = arp_insert(dp, ifp.index, nexthop, ARP_INCOMPLETE, &why)
        if e == NULL:
            dp_drop_m(dp, m, why)
            return
    e.hold.mq_maxlen = dp.arp_maxhold    # maxhold may have changed since the entry was made
    while mbufq_full(&e.hold):
        dp_drop_m(dp, mbufq_dequeue(&e.hold), DROP_ARP_HOLD_OVERFLOW)
    mbufq_enqueue(&e.hold, m)
    trace(dp, m, TR_ARP_MISS, 0, nexthop, <uint32_t>mbufq_len(&e.hold), 0, <uint32_t>ifp.index)
    if e.tries == 0 or dp.now_ns - e.last_req_ns >= 1000000000:
        e.tries += 1
        e.last_req_ns = dp.now_ns
        arp_request(dp, ifp, nexthop)


cdef void arp_timer(dp_state *dp) noexcept nogil:
    """Retry unanswered requests once a second; after arp_max_tries give up
    with ICMP host unreachable for what was held; age out entries."""
    cdef uint32_t i = 0
    cdef dp_arp *e
    cdef mbuf *m
    while i < DP_ARP_SIZE:
        e = &dp.arp[i]
        if e.state == ARP_INCOMPLETE and dp.now_ns - e.last_req_ns >= 1000000000:
            if e.tries < dp.arp_max_tries:
                e.tries += 1
                e.last_req_ns = dp.now_ns
                arp_request(dp, &dp.ifs[e.ifindex], e.ip)
            else:
                # icmp_error may hold its error on this very entry (the
                # sender is the neighbour that never answered): that error
                # is dequeued here next and, being an ICMP error, not
                # answered again, so the loop ends.
                m = mbufq_dequeue(&e.hold)
                while m != NULL:
                    dp_drop_count(dp, m, DROP_ARP_TIMEOUT)
                    icmp_error(dp, &dp.ifs[m.m_pkthdr.rcvif], m, ICMP_UNREACH, ICMP_UNREACH_HOST, 0)
                    m = mbufq_dequeue(&e.hold)
                arp_remove(dp, e)
                continue                # the slot may hold a shifted entry now
        elif e.state == ARP_REACHABLE and dp.now_ns >= e.expire_ns + 60 * <int64_t>1000000000:
            # Expired a minute ago and not used since: forget it.
            if mbufq_len(&e.hold) == 0:
                arp_remove(dp, e)
                continue
        i += 1


cdef int arp_reclaim(dp_state *dp) noexcept nogil:
    """Buffers ran out: free every packet held for an unresolved neighbour
    (FreeBSD drains protocol queues the same way under memory pressure),
    IPv6 neighbours' too.
    At most every 100 ms, so a flood does not turn it into a table walk per
    frame.  Returns the packets freed."""
    cdef int i, n = 0
    if dp.now_ns - dp.last_reclaim_ns < 100000000:
        return 0
    dp.last_reclaim_ns = dp.now_ns
    for i in range(DP_ARP_SIZE):
        if dp.arp[i].state == ARP_INCOMPLETE:
            n += dp_drop_queue(dp, &dp.arp[i].hold, DROP_ARP_HOLD_RECLAIMED)
    return n + nd6_reclaim(dp)


cdef void arp_clear(dp_state *dp) noexcept nogil:
    """Forget every entry, freeing held packets."""
    cdef int i
    for i in range(DP_ARP_SIZE):
        if dp.arp[i].state != ARP_FREE:
            mbufq_drain(&dp.arp[i].hold)
        dp.arp[i].state = ARP_FREE
    for i in range(dp.nifs):
        dp.ifs[i].narp = 0
    dp.narp = 0
