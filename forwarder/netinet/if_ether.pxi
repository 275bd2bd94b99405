# if_ether.pxi -- ARP (RFC 826; FreeBSD's netinet/if_ether.c): the
# neighbour table, arp_input, resolution with a hold queue, neighbour
# unreachability detection, the timer.
#
# The table is open addressing with linear probing and backward-shift
# deletion, DP_ARP_SIZE slots for at most DP_ARP_MAX entries, and at most
# arp_max_per_if of them on one interface, so one link (a flood of requests
# from many sources) cannot take the room the neighbours of the others need.
# Only on-link senders are learned or answered: inside a prefix connected on
# the receiving interface, or under a route that leaves by that interface
# without a gateway (`route add PREFIX dev IF`); the others count as
# arp_not_on_link.
#
# An entry is in one of the states Linux's neighbour code keeps for ARP,
# RFC 4861 7.3.2's (the values and names of nd6.pxi's):
#
#   INCOMPLETE  asked for by broadcast, packets held (maxhold); asked again
#               once a second, maxtries requests in all, then what was held
#               gets host unreachable and the entry is freed.
#   REACHABLE   confirmed: an answer to our request.  For ReachableTime, drawn
#               from 0.5..1.5 x arp_basereachable; then STALE.
#   STALE       a MAC not confirmed lately: learned from the neighbour's own
#               ARP, or REACHABLE timed out.  Still used; the first packet
#               sent through it makes it DELAY.  Unused for max_age seconds,
#               it is freed.
#   DELAY       used while STALE: waits arp_delay seconds, then PROBE.
#   PROBE       asked for by unicast (a request to its cached MAC) on entering
#               the state and once a second after, arp_umaxtries requests in
#               all; a second after the last one unanswered it is freed, and
#               the next packet for it asks by broadcast again.
#
# Packets go to the cached MAC in STALE, DELAY and PROBE alike, as Linux
# sends them.  Linux's defaults are the tunables' (base_reachable_time 30 s,
# delay_first_probe_time 5 s, ucast_probes 3, mcast_probes 3, retrans_time
# 1 s); max_age keeps FreeBSD's 1200 s.
#
# What an ARP packet from a known neighbour does (arp_update):
#  - an answer -- a reply to our MAC for our address, while INCOMPLETE (we
#    asked everyone) or in PROBE from the cached MAC (we asked that MAC) --
#    makes the entry REACHABLE with its MAC;
#  - anything else (a request, a broadcast or unasked-for reply, a
#    gratuitous ARP) only carries a MAC: it completes an INCOMPLETE entry as
#    STALE; a MAC other than the cached one replaces it and makes the entry
#    STALE; the cached MAC again changes nothing (no state, no deadline).
#
# Why a new MAC is taken at once, as STALE, rather than ignored until it is
# confirmed: a neighbour that really moved -- a failover that announces
# itself with a gratuitous ARP, a replaced NIC, a migrated VM -- is reached
# at once, as RFC 826's merge rule and Linux do, and a forged or mutated
# frame costs at most one round of the state machine: once the entry is
# used it is probed, by unicast, at the MAC it was given; nobody answers for
# a MAC that is not there, the entry is freed after arp_umaxtries seconds
# and the next packet asks by broadcast, which the real neighbour answers --
# about delay + umaxtries + 1 s, 9 s with the defaults, against max_age
# (20 minutes) when a new MAC was simply trusted until the entry expired.
# The price: a forged MAC does black-hole the neighbour for those seconds.
# Ignoring unconfirmed changes would keep a forged frame from doing even
# that, but would leave a neighbour that really moved unreachable for as
# long, and the forger, being on the link, can answer probes anyway: ARP
# has no authentication to offer either way (RFC 826; SEND is ND's).
# Unlike Linux, a unicast reply we did not ask for -- or that comes from
# another MAC than the one a PROBE asked -- does not make an entry
# REACHABLE: that would keep a forged MAC for a whole ReachableTime (15-45
# s) before the first probe.  A neighbour that really moved pays one probe
# at its new MAC, which it answers.
#
# Flooding (RFC 6583, the exhaustion of a connected prefix by packets to its
# unused addresses): every such packet makes an INCOMPLETE entry.  At most
# arp_max_incomplete of an interface's entries are INCOMPLETE (the others
# count as arp_incomplete_full), so the neighbours in use keep the rest of
# its share and are never pushed out (nothing is evicted to make room), the
# packets held stay within arp_max_incomplete x maxhold, and an entry under
# a flood still gives up after maxtries seconds.  Broadcast requests are
# rate-limited per interface (arp_request_ppslimit a second, ppsratecheck
# style); a request the limit refuses counts as a try all the same and as
# arp requests_ratelimited.  Unicast probes are not limited: they go only to
# neighbours that answered before (something off the link cannot make
# them), one a second each while in PROBE, and starving them under a flood
# would cut off exactly the neighbours in use -- RFC 6583 7.1's "prioritize
# NDP activities" for existing entries.
#
# Every timer is a deadline read by arp_timer (each DP_TIMER_NS); the packet
# path only compares deadlines and never blocks, logs or allocates.

cdef enum:
    ARP_RETRANS_NS = 1000000000             # a second between requests for one neighbour
    ARP_RECALC_REACHABLE_S = 7200           # ReachableTime drawn again this often


cdef inline uint32_t arp_hash(int ifindex, uint32_t ip) noexcept nogil:
    return ((ip * 2654435761U) ^ (<uint32_t>ifindex * 40503U)) & (DP_ARP_SIZE - 1)


cdef dp_arp *arp_lookup(dp_state *dp, int ifindex, uint32_t ip) noexcept nogil:
    cdef uint32_t i = arp_hash(ifindex, ip)
    while dp.arp[i].state != ARP_FREE:
        if dp.arp[i].ip == ip and dp.arp[i].ifindex == ifindex:
            return &dp.arp[i]
        i = (i + 1) & (DP_ARP_SIZE - 1)
    return NULL


cdef inline void arp_set_state(dp_state *dp, dp_arp *e, int state) noexcept nogil:
    """e's new state, its interface's count of INCOMPLETE entries kept."""
    if e.state == ARP_INCOMPLETE and state != ARP_INCOMPLETE:
        dp.ifs[e.ifindex].nincomplete -= 1
    elif state == ARP_INCOMPLETE and e.state != ARP_INCOMPLETE:
        dp.ifs[e.ifindex].nincomplete += 1
    e.state = state


cdef dp_arp *arp_insert(dp_state *dp, int ifindex, uint32_t ip, int state,
                        int *why) noexcept nogil:
    """A new entry; NULL with *why set to the drop reason when there is no
    room (the table, the interface's share of it, or for an INCOMPLETE one
    the interface's share of unresolved entries)."""
    cdef uint32_t i
    cdef dp_arp *e
    if dp.narp >= DP_ARP_MAX:
        why[0] = DROP_ARP_TABLE_FULL
        return NULL
    if dp.ifs[ifindex].narp >= dp.arp_max_per_if:
        why[0] = DROP_ARP_INTERFACE_FULL
        return NULL
    if state == ARP_INCOMPLETE and dp.ifs[ifindex].nincomplete >= dp.arp_max_incomplete:
        why[0] = DROP_ARP_INCOMPLETE_FULL
        return NULL
    i = arp_hash(ifindex, ip)
    while dp.arp[i].state != ARP_FREE:
        i = (i + 1) & (DP_ARP_SIZE - 1)
    e = &dp.arp[i]
    memset(e, 0, sizeof(dp_arp))
    e.ip = ip
    e.ifindex = ifindex
    arp_set_state(dp, e, state)
    mbufq_init(&e.hold, dp.arp_maxhold)
    dp.narp += 1
    dp.ifs[ifindex].narp += 1
    return e


cdef void arp_remove(dp_state *dp, dp_arp *e) noexcept nogil:
    """Free the slot (its hold queue must be empty) and shift later members
    of the probe run back so lookups never stop at a hole."""
    cdef uint32_t i = <uint32_t>(e - &dp.arp[0])
    cdef uint32_t j = i, k
    arp_set_state(dp, e, ARP_FREE)
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


cdef void arp_new_reachable_time(dp_state *dp) noexcept nogil:
    """Draw ReachableTime from arp_basereachable, as nd6_new_reachable_time
    does for IPv6 (Linux's neigh_rand_reach_time)."""
    cdef int64_t base = <int64_t>dp.arp_basereachable * 1000000
    dp.arp_reachable_ns = ra_random_ns(dp, base // 2, base + base // 2)
    dp.arp_recalc_ns = dp.now_ns + <int64_t>ARP_RECALC_REACHABLE_S * 1000000000


cdef inline void arp_to_reachable(dp_state *dp, dp_arp *e) noexcept nogil:
    arp_set_state(dp, e, ARP_REACHABLE)
    e.tries = 0
    e.expire_ns = dp.now_ns + dp.arp_reachable_ns


cdef inline void arp_to_stale(dp_state *dp, dp_arp *e) noexcept nogil:
    arp_set_state(dp, e, ARP_STALE)
    e.tries = 0
    e.expire_ns = dp.now_ns + <int64_t>dp.arp_max_age * 1000000000


cdef inline void arp_to_delay(dp_state *dp, dp_arp *e) noexcept nogil:
    arp_set_state(dp, e, ARP_DELAY)
    e.expire_ns = dp.now_ns + <int64_t>dp.arp_delay * 1000000000


cdef void arp_request(dp_state *dp, dp_ifnet *ifp, uint32_t tip, const uint8_t *mac) noexcept nogil:
    """Ask who-has tip on ifp: broadcast, or with mac by unicast to it (the
    probe of a neighbour in PROBE; the target hardware address stays zero,
    as Linux sends it)."""
    cdef mbuf *m = dp_new_packet(ETHER_HDR_LEN + ARP_HDR_LEN)
    cdef ether_arp *ah
    if m == NULL:
        dp.drops[DROP_NO_BUFFER] += 1
        return
    ether_fill(<ether_header *>mdata(m), mac if mac != NULL else ETHER_BCAST, ifp.mac,
               ETHERTYPE_ARP)
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
    if mac != NULL:
        dp.arp_probes += 1
    dp_transmit(dp, ifp, m)


cdef void arp_solicit(dp_state *dp, dp_ifnet *ifp, dp_arp *e, const mbuf *m) noexcept nogil:
    """One more broadcast request for INCOMPLETE e (m: the packet that
    asked, NULL from the timer), unless ifp sent arp_request_ppslimit of
    them this second: then the try counts all the same, so that an entry
    under a flood still gives up after maxtries seconds."""
    e.tries += 1
    e.last_req_ns = dp.now_ns
    if not dp_ppsratecheck(dp, &ifp.arp_pps_ns, &ifp.arp_pps, dp.arp_request_ppslimit):
        dp.arp_ratelimited += 1
        if m != NULL:
            trace(dp, m, TR_ARP_RATELIMITED, 0, e.ip, 0, 0, <uint32_t>ifp.index)
        return
    arp_request(dp, ifp, e.ip, NULL)


cdef void arp_probe(dp_state *dp, dp_arp *e) noexcept nogil:
    """One unicast request to a neighbour in PROBE, at its cached MAC; the
    next is due a second later."""
    e.tries += 1
    e.last_req_ns = dp.now_ns
    e.expire_ns = dp.now_ns + ARP_RETRANS_NS
    arp_request(dp, &dp.ifs[e.ifindex], e.ip, e.mac)


cdef void arp_flush_hold(dp_state *dp, dp_arp *e) noexcept nogil:
    """Send what waited for e's MAC; sending through a STALE entry makes it
    DELAY, as for any packet."""
    cdef dp_ifnet *ifp = &dp.ifs[e.ifindex]
    cdef mbuf *m
    if mbufq_len(&e.hold) == 0:
        return
    if e.state == ARP_STALE:
        arp_to_delay(dp, e)
    m = mbufq_dequeue(&e.hold)
    while m != NULL:
        trace_data(dp, m, TR_ARP_RESOLVED, 0, e.ip, 0, 0, <uint32_t>ifp.index, e.mac, 6)
        ether_output(dp, ifp, m, e.mac, ETHERTYPE_IP)
        m = mbufq_dequeue(&e.hold)


cdef void arp_update(dp_state *dp, dp_arp *e, const mbuf *m, const uint8_t *sha,
                     bint answer) noexcept nogil:
    """What an ARP packet m from e's neighbour says, its sender MAC sha
    (the rules at the top of this file).  answer: a reply to our MAC for our
    address -- the answer to our request if we asked whoever sent it."""
    cdef bint moved = memcmp(e.mac, sha, ETHER_ADDR_LEN) != 0
    cdef int was = e.state
    answer = answer and (was == ARP_INCOMPLETE or (was == ARP_PROBE and not moved))
    if was != ARP_INCOMPLETE and not moved and not answer:
        return                          # the cached MAC, unasked: nothing to change
    trace_arp_update(dp, m, e, sha, ARP_REACHABLE if answer else ARP_STALE)
    memcpy(e.mac, sha, ETHER_ADDR_LEN)
    if answer:
        arp_to_reachable(dp, e)
    else:
        arp_to_stale(dp, e)
    if was == ARP_INCOMPLETE:
        arp_flush_hold(dp, e)


cdef void arp_input(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """RFC 826 with the merge rule: update a known sender (arp_update);
    learn a new one, STALE, only when the packet is for us and the sender is
    on link; answer requests for our addresses from on-link senders."""
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
        if e != NULL:
            arp_update(dp, e, m, ah.arp_sha, ours and ntohs(ah.ar_op) == ARPOP_REPLY
                       and memcmp(eh.ether_dhost, ifp.mac, ETHER_ADDR_LEN) == 0)
        elif ours:
            e = arp_insert(dp, ifp.index, spa, ARP_STALE, &why)
            if e == NULL:
                dp.drops[why] += 1
            else:
                memcpy(e.mac, ah.arp_sha, ETHER_ADDR_LEN)
                arp_to_stale(dp, e)
                trace_data(dp, m, TR_ARP_LEARN, 0, ARP_STALE, spa, 0, 0, e.mac, 6)
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
    """Send m to nexthop's MAC -- a STALE entry used becomes DELAY, to be
    confirmed soon -- or hold it (newest kept) and ask, at most one request
    per second per neighbour (FreeBSD's arpresolve)."""
    cdef dp_arp *e = arp_lookup(dp, ifp.index, nexthop)
    cdef int why
    if e != NULL and e.state != ARP_INCOMPLETE:
        if e.state == ARP_STALE or (e.state == ARP_REACHABLE and dp.now_ns >= e.expire_ns):
            arp_to_delay(dp, e)
        trace_data(dp, m, TR_ARP_HIT, 0, nexthop, <uint32_t>e.state, 0, <uint32_t>ifp.index,
                   e.mac, 6)
        ether_output(dp, ifp, m, e.mac, ETHERTYPE_IP)
        return
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
    if e.tries == 0 or dp.now_ns - e.last_req_ns >= ARP_RETRANS_NS:
        arp_solicit(dp, ifp, e, m)


cdef void arp_timer(dp_state *dp) noexcept nogil:
    """The deadlines of the states: INCOMPLETE asked again once a second and,
    after maxtries, given up with ICMP host unreachable for what was held;
    REACHABLE to STALE; STALE freed after max_age unused; DELAY to PROBE;
    PROBE asked again, or freed after arp_umaxtries."""
    cdef uint32_t i = 0
    cdef dp_arp *e
    cdef mbuf *m
    if dp.now_ns >= dp.arp_recalc_ns:
        arp_new_reachable_time(dp)
    if dp.narp == 0:
        return
    while i < DP_ARP_SIZE:
        e = &dp.arp[i]
        if e.state == ARP_INCOMPLETE:
            if dp.now_ns - e.last_req_ns >= ARP_RETRANS_NS:
                if e.tries < dp.arp_max_tries:
                    arp_solicit(dp, &dp.ifs[e.ifindex], e, NULL)
                else:
                    # icmp_error may hold its error on this very entry (the
                    # sender is the neighbour that never answered): that
                    # error is dequeued here next and, being an ICMP error,
                    # not answered again, so the loop ends.
                    m = mbufq_dequeue(&e.hold)
                    while m != NULL:
                        dp_drop_count(dp, m, DROP_ARP_TIMEOUT)
                        icmp_error(dp, &dp.ifs[m.m_pkthdr.rcvif], m, ICMP_UNREACH,
                                   ICMP_UNREACH_HOST, 0)
                        m = mbufq_dequeue(&e.hold)
                    arp_remove(dp, e)
                    continue            # the slot may hold a shifted entry now
        elif e.state >= ARP_REACHABLE and dp.now_ns >= e.expire_ns:
            # Entries with a MAC hold no packets: removing one frees nothing.
            if e.state == ARP_REACHABLE:
                arp_to_stale(dp, e)
            elif e.state == ARP_DELAY:
                arp_set_state(dp, e, ARP_PROBE)
                e.tries = 0
                arp_probe(dp, e)
            elif e.state == ARP_PROBE and e.tries < dp.arp_umaxtries:
                arp_probe(dp, e)
            else:                       # STALE and unused, or PROBE unanswered
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
        dp.ifs[i].nincomplete = 0
    dp.narp = 0
