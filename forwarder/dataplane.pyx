# cython: language_level=3
"""The forwarding path: an RFC 1812 IPv4 router on mbuf chains.

Every frame is read from a TAP straight into cluster memory and runs to
completion through a chain of small stages; each failure leg ends in a
counted drop (dp_drop) or an ICMP error:

  dp_rx_burst        read() up to DP_BURST frames into Packet-zone mbufs
   -> ether_input    classify: ARP / IPv4 / other; our MAC or broadcast
      -> arp_input   answer requests for our addresses, learn, flush holds
      -> ip_input    header checks (RFC 1812 5.2.2), trim, martians
         -> ip_local           echo requests to our addresses
         -> ip_forward         route lookup -> TTL -> MTU/DF -> decrement TTL
            -> ip_fragment     payload shared with the original clusters
            -> ether_resolve   ARP: neighbour's MAC, or hold and ask
               -> ether_output prepend the Ethernet header, writev() the chain
  icmp_error         quote <= 576 bytes, rate-limited, never for errors,
                     broadcasts, martians or non-initial fragments
  dp_timers          ARP retries (1/s), give-up after max_tries with
                     ICMP host unreachable, aging; ICMP token refill

Where is TTL handled?  ip_forward: expiry check before anything is changed,
decrement (RFC 1624 incremental checksum) after the MTU check.
"""

from libc.errno cimport EAGAIN, EBADF, EBADFD, EINTR, EIO, ENOBUFS, ENODEV, ENXIO, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset, strncpy
from posix.time cimport clock_gettime, timespec
from posix.unistd cimport close, read

from allocator_pyx.mbuf cimport (MHLEN, MT_DATA, M_PKTHDR, m_adj, m_copydata, m_copym,
                                 m_discard_fd, m_freem, m_getcl, m_gethdr, M_PREPEND,
                                 m_read_fd, m_writev_fd, mbuf)
from allocator_pyx.uma cimport M_NOWAIT, pthread_mutex_t, uma_thread_flush
from forwarder.inet cimport (ETHER_HDR_LEN, ETHERTYPE_ARP, ETHERTYPE_IP, ICMP_ECHO,
                             ICMP_ECHOREPLY, ICMP_TIMXCEED, ICMP_TIMXCEED_INTRANS,
                             ICMP_UNREACH, ICMP_UNREACH_FILTER_PROHIB,
                             ICMP_UNREACH_HOST, ICMP_UNREACH_NEEDFRAG,
                             ICMP_UNREACH_NET, ICMP_ERR_MAXLEN, IP_DF, IP_MF,
                             IP_OFFMASK, IPPROTO_ICMP, htonl, htons, in_cksum,
                             in_martian_dst, in_martian_src, in_multicast,
                             ip_dec_ttl, ip_hl, ip_set_cksum, ip_v, ntohl, ntohs)
from forwarder.route cimport (NH_BLACKHOLE, NH_FORWARD, NH_LOCAL, NH_PROHIBIT,
                              NH_UNREACHABLE, RouteTable, rt_lookup_nh, rt_nexthop)

cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_init(pthread_mutex_t *m, const void *a)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *ev)
    int epoll_wait(int epfd, epoll_event *evs, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC

cdef extern from "<time.h>" nogil:
    enum:
        CLOCK_MONOTONIC

cdef extern from "<unistd.h>" nogil:
    ssize_t write(int fd, const void *buf, size_t n)

cdef extern from "<sched.h>" nogil:
    int unshare(int flags)
    enum:
        CLONE_FILES

DROP_NAMES = (
    "runt", "not_our_mac", "ethertype", "arp_malformed", "ip_too_short", "ip_bad_version",
    "ip_bad_header_length", "ip_bad_checksum", "ip_bad_total_length", "martian_source",
    "martian_destination", "link_broadcast", "ip_broadcast_destination", "forwarding_disabled",
    "no_route", "blackhole", "unreachable_route", "prohibited_route", "ttl_exceeded",
    "needfrag_df_set", "no_buffer", "arp_timeout", "arp_hold_overflow", "arp_hold_reclaimed",
    "arp_table_full",
    "local_not_echo", "icmp_malformed", "tx_error", "output_no_route",
)
assert len(DROP_NAMES) == DROP_MAX

cdef uint8_t ETHER_BCAST[6]
memset(ETHER_BCAST, 0xff, 6)

# =============================================================================
# small helpers
# =============================================================================

cdef inline int64_t dp_clock() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline uint16_t ld16(const unsigned char *p) noexcept nogil:
    """A 16-bit field as stored, converted to host order."""
    cdef uint16_t v
    memcpy(&v, p, 2)
    return ntohs(v)


cdef inline uint32_t ld32(const unsigned char *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return ntohl(v)


cdef inline void st16(unsigned char *p, uint16_t host) noexcept nogil:
    cdef uint16_t v = htons(host)
    memcpy(p, &v, 2)


cdef inline void st32(unsigned char *p, uint32_t host) noexcept nogil:
    cdef uint32_t v = htonl(host)
    memcpy(p, &v, 4)


cdef inline unsigned char *mdata(mbuf *m) noexcept nogil:
    return <unsigned char *>m.m_data


cdef inline void dp_drop_m(dp_state *dp, mbuf *m, int why) noexcept nogil:
    dp.drops[why] += 1
    m_freem(m)


cdef inline int ifp_has_addr(dp_ifnet *ifp, uint32_t a) noexcept nogil:
    cdef int i
    for i in range(ifp.naddrs):
        if ifp.addr[i] == a:
            return 1
    return 0


cdef inline uint32_t ifp_src_for(dp_ifnet *ifp, uint32_t peer) noexcept nogil:
    """Our address on ifp in peer's subnet, else the first one (0: none)."""
    cdef int i
    for i in range(ifp.naddrs):
        if (ifp.addr[i] & ifp.mask[i]) == (peer & ifp.mask[i]):
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


cdef mbuf *dp_new_packet(int len) noexcept nogil:
    """An empty packet with DP_LINKHDR bytes of leading space and room for
    len bytes after it (header mbuf, or a cluster when it does not fit)."""
    cdef mbuf *m
    if len + DP_LINKHDR <= MHLEN:
        m = m_gethdr(M_NOWAIT, MT_DATA)
    else:
        m = m_getcl(M_NOWAIT, MT_DATA, M_PKTHDR)
    if m == NULL:
        return NULL
    m.m_data += DP_LINKHDR
    m.m_len = len
    m.m_pkthdr.len = len
    return m


# =============================================================================
# ARP table: open addressing, linear probing, backward-shift deletion
# =============================================================================

cdef inline uint32_t arp_hash(int ifindex, uint32_t ip) noexcept nogil:
    return ((ip * 2654435761U) ^ (<uint32_t>ifindex * 40503U)) & (DP_ARP_SIZE - 1)


cdef dp_arp *arp_lookup(dp_state *dp, int ifindex, uint32_t ip) noexcept nogil:
    cdef uint32_t i = arp_hash(ifindex, ip)
    while dp.arp[i].state != ARP_FREE:
        if dp.arp[i].ip == ip and dp.arp[i].ifindex == ifindex:
            return &dp.arp[i]
        i = (i + 1) & (DP_ARP_SIZE - 1)
    return NULL


cdef dp_arp *arp_insert(dp_state *dp, int ifindex, uint32_t ip, int state) noexcept nogil:
    cdef uint32_t i
    cdef dp_arp *e
    if dp.narp >= DP_ARP_MAX:
        return NULL
    i = arp_hash(ifindex, ip)
    while dp.arp[i].state != ARP_FREE:
        i = (i + 1) & (DP_ARP_SIZE - 1)
    e = &dp.arp[i]
    memset(e, 0, sizeof(dp_arp))
    e.ip = ip
    e.ifindex = ifindex
    e.state = state
    dp.narp += 1
    return e


cdef void arp_remove(dp_state *dp, dp_arp *e) noexcept nogil:
    """Free the slot (its hold queue must be empty) and shift later members
    of the probe run back so lookups never stop at a hole."""
    cdef uint32_t i = <uint32_t>(e - &dp.arp[0])
    cdef uint32_t j = i, k
    dp.arp[i].state = ARP_FREE
    dp.narp -= 1
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


cdef void arp_request(dp_state *dp, dp_ifnet *ifp, uint32_t tip) noexcept nogil:
    """Broadcast who-has tip on ifp."""
    cdef mbuf *m = dp_new_packet(ETHER_HDR_LEN + 28)
    cdef unsigned char *p
    if m == NULL:
        dp.drops[DROP_NOBUF] += 1
        return
    p = mdata(m)
    ether_header(p, ETHER_BCAST, ifp.mac, ETHERTYPE_ARP)
    p += ETHER_HDR_LEN
    st16(p, 1)                      # Ethernet
    st16(p + 2, ETHERTYPE_IP)
    p[4] = 6
    p[5] = 4
    st16(p + 6, 1)                  # request
    memcpy(p + 8, ifp.mac, 6)
    st32(p + 14, ifp_src_for(ifp, tip))
    memset(p + 18, 0, 6)
    st32(p + 24, tip)
    dp.arp_requests += 1
    dp_transmit(dp, ifp, m)


cdef void arp_flush_hold(dp_state *dp, dp_arp *e) noexcept nogil:
    """Send what waited for e's MAC."""
    cdef mbuf *m
    cdef dp_ifnet *ifp = &dp.ifs[e.ifindex]
    while e.hold_head != NULL:
        m = e.hold_head
        e.hold_head = m.m_nextpkt
        m.m_nextpkt = NULL
        ether_output(dp, ifp, m, e.mac, ETHERTYPE_IP)
    e.hold_tail = NULL
    e.nhold = 0


cdef void arp_input(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """RFC 826 with the merge rule: update a known sender; learn a new one
    only when the packet is for us; answer requests for our addresses."""
    cdef unsigned char *eh = mdata(m)
    cdef unsigned char *a = eh + ETHER_HDR_LEN
    cdef uint32_t spa, tpa
    cdef int op, ours
    cdef dp_arp *e
    if m.m_len < ETHER_HDR_LEN + 28 or ld16(a) != 1 or ld16(a + 2) != ETHERTYPE_IP \
            or a[4] != 6 or a[5] != 4:
        dp_drop_m(dp, m, DROP_ARP_BAD)
        return
    dp.arp_in += 1
    op = ld16(a + 6)
    spa = ld32(a + 14)
    tpa = ld32(a + 24)
    ours = ifp_has_addr(ifp, tpa)
    if spa != 0 and not (a[8] & 1):
        e = arp_lookup(dp, ifp.index, spa)
        if e == NULL and ours:
            e = arp_insert(dp, ifp.index, spa, ARP_REACHABLE)
            if e == NULL:
                dp.drops[DROP_ARP_FULL] += 1
        if e != NULL:
            memcpy(e.mac, a + 8, 6)
            e.state = ARP_REACHABLE
            e.tries = 0
            e.expire_ns = dp.now_ns + <int64_t>dp.arp_max_age * 1000000000
            arp_flush_hold(dp, e)
    if op == 1 and ours:
        # The reply is the request turned around, in place.
        memcpy(eh, a + 8, 6)
        memcpy(eh + 6, ifp.mac, 6)
        st16(a + 6, 2)
        memcpy(a + 18, a + 8, 6)
        st32(a + 24, spa)
        memcpy(a + 8, ifp.mac, 6)
        st32(a + 14, tpa)
        dp.arp_replies += 1
        dp_transmit(dp, ifp, m)
        return
    m_freem(m)


cdef void ether_resolve(dp_state *dp, dp_ifnet *ifp, mbuf *m, uint32_t nexthop) noexcept nogil:
    """Send m to nexthop's MAC, or hold it (newest kept) and ask, at most
    one request per second per neighbour."""
    cdef dp_arp *e = arp_lookup(dp, ifp.index, nexthop)
    cdef mbuf *old
    if e != NULL and e.state == ARP_REACHABLE:
        if dp.now_ns < e.expire_ns:
            ether_output(dp, ifp, m, e.mac, ETHERTYPE_IP)
            return
        e.state = ARP_INCOMPLETE     # aged: ask again before using it
        e.tries = 0
        e.last_req_ns = 0
    if e == NULL:
        e = arp_insert(dp, ifp.index, nexthop, ARP_INCOMPLETE)
        if e == NULL:
            dp_drop_m(dp, m, DROP_ARP_FULL)
            return
    m.m_nextpkt = NULL
    if e.hold_tail != NULL:
        e.hold_tail.m_nextpkt = m
    else:
        e.hold_head = m
    e.hold_tail = m
    e.nhold += 1
    while e.nhold > dp.arp_maxhold:
        old = e.hold_head
        e.hold_head = old.m_nextpkt
        old.m_nextpkt = NULL
        e.nhold -= 1
        dp_drop_m(dp, old, DROP_ARP_HOLD)
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
                while e.hold_head != NULL:
                    m = e.hold_head
                    e.hold_head = m.m_nextpkt
                    m.m_nextpkt = NULL
                    dp.drops[DROP_ARP_TIMEOUT] += 1
                    icmp_error(dp, &dp.ifs[m.m_pkthdr.rcvif], m, ICMP_UNREACH, ICMP_UNREACH_HOST, 0)
                e.hold_tail = NULL
                e.nhold = 0
                arp_remove(dp, e)
                continue                # the slot may hold a shifted entry now
        elif e.state == ARP_REACHABLE and dp.now_ns >= e.expire_ns + 60 * <int64_t>1000000000:
            # Expired a minute ago and not used since: forget it.
            if e.hold_head == NULL:
                arp_remove(dp, e)
                continue
        i += 1


cdef int arp_reclaim(dp_state *dp) noexcept nogil:
    """Buffers ran out: free every packet held for an unresolved neighbour
    (FreeBSD drains protocol queues the same way under memory pressure).
    At most every 100 ms, so a flood does not turn it into a table walk per
    frame.  Returns the packets freed."""
    cdef int i, n = 0
    cdef mbuf *m
    if dp.now_ns - dp.last_reclaim_ns < 100000000:
        return 0
    dp.last_reclaim_ns = dp.now_ns
    for i in range(DP_ARP_SIZE):
        if dp.arp[i].state != ARP_INCOMPLETE:
            continue
        while dp.arp[i].hold_head != NULL:
            m = dp.arp[i].hold_head
            dp.arp[i].hold_head = m.m_nextpkt
            m.m_nextpkt = NULL
            dp_drop_m(dp, m, DROP_ARP_RECLAIM)
            n += 1
        dp.arp[i].hold_tail = NULL
        dp.arp[i].nhold = 0
    return n


cdef void arp_clear(dp_state *dp) noexcept nogil:
    """Forget every entry, freeing held packets."""
    cdef int i
    cdef mbuf *m
    for i in range(DP_ARP_SIZE):
        while dp.arp[i].hold_head != NULL:
            m = dp.arp[i].hold_head
            dp.arp[i].hold_head = m.m_nextpkt
            m.m_nextpkt = NULL
            m_freem(m)
        dp.arp[i].state = ARP_FREE
    dp.narp = 0


# =============================================================================
# Ethernet
# =============================================================================

cdef void dp_transmit(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """writev() the chain (a complete frame) to the TAP; m is consumed."""
    cdef int len = m.m_pkthdr.len
    if ifp.lost_errno or m_writev_fd(ifp.fd, m) < 0:
        ifp.tx_errors += 1
        dp.drops[DROP_TX_ERROR] += 1
    else:
        ifp.tx_packets += 1
        ifp.tx_bytes += len
    m_freem(m)


cdef inline void ether_header(unsigned char *eh, const uint8_t *dst, const uint8_t *src,
                              uint16_t type) noexcept nogil:
    memcpy(eh, dst, 6)
    memcpy(eh + 6, src, 6)
    st16(eh + 12, type)


cdef void ether_output(dp_state *dp, dp_ifnet *ifp, mbuf *m, const uint8_t *dst,
                       uint16_t type) noexcept nogil:
    m = M_PREPEND(m, ETHER_HDR_LEN, M_NOWAIT)       # in the leading space when there is room
    if m == NULL:
        dp.drops[DROP_NOBUF] += 1
        return
    ether_header(mdata(m), dst, ifp.mac, type)
    dp_transmit(dp, ifp, m)


cdef void ether_input(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """Classify: ARP, IPv4 or other; drop unicast for other stations."""
    cdef unsigned char *eh = mdata(m)
    cdef uint16_t type
    cdef bint group
    if m.m_len < ETHER_HDR_LEN:
        dp_drop_m(dp, m, DROP_RUNT)
        return
    group = eh[0] & 1                # broadcast or multicast
    if not group and memcmp(eh, ifp.mac, 6) != 0:
        dp_drop_m(dp, m, DROP_NOT_OURS)
        return
    type = ld16(eh + 12)
    if type == ETHERTYPE_ARP:
        arp_input(dp, ifp, m)
    elif type == ETHERTYPE_IP:
        m_adj(m, ETHER_HDR_LEN)
        ip_input(dp, ifp, m, group)
    else:
        dp_drop_m(dp, m, DROP_ETHERTYPE)


# =============================================================================
# IPv4
# =============================================================================

cdef void ip_input(dp_state *dp, dp_ifnet *ifp, mbuf *m, bint l2group) noexcept nogil:
    """Header checks of RFC 1812 5.2.2 (no switch turns them off), then
    local delivery or forwarding."""
    cdef unsigned char *ip = mdata(m)
    cdef int hlen, iplen
    cdef uint32_t src, dst
    cdef const rt_nexthop *nh
    if m.m_pkthdr.len < 20 or m.m_len < 20:
        dp_drop_m(dp, m, DROP_IP_SHORT)
        return
    if ip_v(ip) != 4:
        dp_drop_m(dp, m, DROP_IP_VERSION)
        return
    hlen = ip_hl(ip)
    if hlen < 20 or hlen > m.m_len:
        dp_drop_m(dp, m, DROP_IP_HLEN)
        return
    if in_cksum(ip, hlen) != 0:
        dp_drop_m(dp, m, DROP_IP_CKSUM)
        return
    iplen = ld16(ip + 2)
    if iplen < hlen or iplen > m.m_pkthdr.len:
        dp_drop_m(dp, m, DROP_IP_LEN)
        return
    if iplen < m.m_pkthdr.len:
        m_adj(m, iplen - m.m_pkthdr.len)        # Ethernet padding
    src = ld32(ip + 12)
    dst = ld32(ip + 16)
    if in_martian_src(src):
        dp_drop_m(dp, m, DROP_MARTIAN_SRC)
        return
    nh = rt_lookup_nh(dp.rt, dst)
    if nh != NULL and nh.type == NH_LOCAL:
        ip_local(dp, ifp, m, dst)
        return
    if l2group:
        dp_drop_m(dp, m, DROP_L2_BCAST)         # RFC 1812 5.3.4
        return
    if in_martian_dst(dst):
        dp_drop_m(dp, m, DROP_MARTIAN_DST)
        return
    if in_multicast(dst):
        dp_drop_m(dp, m, DROP_BCAST_DST)
        return
    if not dp.forwarding:
        dp_drop_m(dp, m, DROP_FORWARDING_OFF)
        return
    ip_forward(dp, ifp, m, nh, dst)


cdef void ip_forward(dp_state *dp, dp_ifnet *ifp, mbuf *m, const rt_nexthop *nh,
                     uint32_t dst) noexcept nogil:
    """lookup result -> TTL check -> MTU/DF -> decrement TTL -> fragment ->
    resolve -> transmit."""
    cdef unsigned char *ip = mdata(m)
    cdef dp_ifnet *oifp
    cdef uint32_t nexthop
    if nh == NULL:
        dp.drops[DROP_NO_ROUTE] += 1
        icmp_error(dp, ifp, m, ICMP_UNREACH, ICMP_UNREACH_NET, 0)
        return
    if nh.type != NH_FORWARD:
        if nh.type == NH_UNREACHABLE:
            dp.drops[DROP_UNREACHABLE] += 1
            icmp_error(dp, ifp, m, ICMP_UNREACH, ICMP_UNREACH_HOST, 0)
        elif nh.type == NH_PROHIBIT:
            dp.drops[DROP_PROHIBIT] += 1
            icmp_error(dp, ifp, m, ICMP_UNREACH, ICMP_UNREACH_FILTER_PROHIB, 0)
        else:
            dp_drop_m(dp, m, DROP_BLACKHOLE)
        return
    # TTL: expired packets are answered before anything in them changes.
    if ip[8] <= 1:
        dp.drops[DROP_TTL] += 1
        icmp_error(dp, ifp, m, ICMP_TIMXCEED, ICMP_TIMXCEED_INTRANS, 0)
        return
    oifp = &dp.ifs[nh.ifindex]
    nexthop = nh.gateway if nh.gateway != 0 else dst
    if nh.gateway == 0 and ifp_is_subnet_bcast(oifp, dst):
        dp_drop_m(dp, m, DROP_BCAST_DST)        # directed broadcast: not forwarded
        return
    if m.m_pkthdr.len > oifp.mtu:
        if ld16(ip + 6) & IP_DF:
            dp.drops[DROP_NEEDFRAG] += 1
            icmp_error(dp, ifp, m, ICMP_UNREACH, ICMP_UNREACH_NEEDFRAG, oifp.mtu)
            return
        ip_dec_ttl(ip)
        dp.forwarded += 1
        ip_fragment(dp, oifp, m, nexthop)
        return
    ip_dec_ttl(ip)
    dp.forwarded += 1
    ether_resolve(dp, oifp, m, nexthop)


cdef int ip_copied_options(const unsigned char *ip, int hlen, unsigned char *out) noexcept nogil:
    """Header for fragments after the first: the base header plus only the
    options whose copied flag is set (RFC 791), padded to 32 bits."""
    cdef int i = 20, n = 20, olen
    memcpy(out, ip, 20)
    while i < hlen:
        if ip[i] == 0:                  # end of options
            break
        if ip[i] == 1:                  # no-op: not copied
            i += 1
            continue
        if i + 1 >= hlen:
            break
        olen = ip[i + 1]
        if olen < 2 or i + olen > hlen:
            break
        if ip[i] & 0x80:
            memcpy(out + n, ip + i, olen)
            n += olen
        i += olen
    while n & 3:
        out[n] = 0
        n += 1
    out[0] = <unsigned char>(0x40 | (n >> 2))
    return n


cdef void ip_fragment(dp_state *dp, dp_ifnet *oifp, mbuf *m, uint32_t nexthop) noexcept nogil:
    """Cut m into fragments that fit oifp's MTU.  Each fragment is a small
    header mbuf followed by m_copym() of the payload range: the data stays in
    the original clusters, shared by reference count."""
    cdef unsigned char *ip = mdata(m)
    cdef unsigned char hdr2[60]
    cdef int hlen = ip_hl(ip), hlen2, h, off = 0, len, maxlen
    cdef int payload = m.m_pkthdr.len - hlen
    cdef uint16_t ooff = ld16(ip + 6)
    cdef int obase = ooff & IP_OFFMASK
    cdef bint omf = (ooff & IP_MF) != 0, last
    cdef mbuf *head = NULL
    cdef mbuf *tail = NULL
    cdef mbuf *f
    cdef unsigned char *fip
    hlen2 = ip_copied_options(ip, hlen, hdr2)
    while off < payload:
        h = hlen if off == 0 else hlen2
        maxlen = (oifp.mtu - h) & ~7
        len = payload - off
        if len > maxlen:
            len = maxlen
        last = off + len == payload
        f = dp_new_packet(h)
        if f == NULL:
            break
        memcpy(mdata(f), ip if off == 0 else hdr2, h)
        f.m_next = m_copym(m, hlen + off, len, M_NOWAIT)
        if f.m_next == NULL:
            m_freem(f)
            break
        f.m_pkthdr.len = h + len
        fip = mdata(f)
        st16(fip + 2, <uint16_t>(h + len))
        st16(fip + 6, <uint16_t>((obase + off // 8) | (0 if last and not omf else IP_MF)))
        ip_set_cksum(fip, h)
        f.m_pkthdr.rcvif = m.m_pkthdr.rcvif
        if tail != NULL:
            tail.m_nextpkt = f
        else:
            head = f
        tail = f
        off += len
    if off < payload:                   # ran out of buffers: send nothing
        while head != NULL:
            f = head
            head = f.m_nextpkt
            f.m_nextpkt = NULL
            m_freem(f)
        dp_drop_m(dp, m, DROP_NOBUF)
        return
    m_freem(m)                          # the clusters live on in the fragments
    while head != NULL:
        f = head
        head = f.m_nextpkt
        f.m_nextpkt = NULL
        dp.frags_created += 1
        ether_resolve(dp, oifp, f, nexthop)


cdef void ip_output(dp_state *dp, mbuf *m) noexcept nogil:
    """Send a packet of our own (echo reply, ICMP error): route it, fragment
    it when it does not fit, resolve and transmit."""
    cdef unsigned char *ip = mdata(m)
    cdef uint32_t dst = ld32(ip + 16)
    cdef const rt_nexthop *nh = rt_lookup_nh(dp.rt, dst)
    cdef dp_ifnet *oifp
    cdef uint32_t nexthop
    if nh == NULL or nh.type != NH_FORWARD:
        dp_drop_m(dp, m, DROP_OUTPUT_NO_ROUTE)
        return
    oifp = &dp.ifs[nh.ifindex]
    nexthop = nh.gateway if nh.gateway != 0 else dst
    if m.m_pkthdr.len > oifp.mtu:
        if ld16(ip + 6) & IP_DF:
            dp_drop_m(dp, m, DROP_NEEDFRAG)
            return
        ip_fragment(dp, oifp, m, nexthop)
        return
    ether_resolve(dp, oifp, m, nexthop)


cdef void ip_local(dp_state *dp, dp_ifnet *ifp, mbuf *m, uint32_t dst) noexcept nogil:
    """For us: answer echo requests (source = the address asked); count and
    drop everything else."""
    cdef unsigned char *ip = mdata(m)
    cdef unsigned char *icmp
    cdef int hlen = ip_hl(ip)
    cdef int iplen = m.m_pkthdr.len
    cdef uint16_t z = 0, sum
    cdef uint32_t src
    if ip[9] != IPPROTO_ICMP or (ld16(ip + 6) & (IP_MF | IP_OFFMASK)) or iplen - hlen < 8:
        dp_drop_m(dp, m, DROP_LOCAL)
        return
    if m.m_len < iplen:                 # echo data must be contiguous to answer it
        dp_drop_m(dp, m, DROP_LOCAL)
        return
    icmp = ip + hlen
    if icmp[0] != ICMP_ECHO:
        dp_drop_m(dp, m, DROP_LOCAL)
        return
    if in_cksum(icmp, iplen - hlen) != 0:
        dp_drop_m(dp, m, DROP_ICMP_BAD)
        return
    dp.delivered_local += 1
    icmp[0] = ICMP_ECHOREPLY
    memcpy(icmp + 2, &z, 2)
    sum = in_cksum(icmp, iplen - hlen)
    memcpy(icmp + 2, &sum, 2)
    src = ld32(ip + 12)
    st32(ip + 12, dst)
    st32(ip + 16, src)
    ip[8] = <unsigned char>dp.ttl
    st16(ip + 6, 0)
    ip_set_cksum(ip, hlen)
    dp.icmp_out[ICMP_ECHOREPLY] += 1
    ip_output(dp, m)


# =============================================================================
# ICMP errors
# =============================================================================

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
    cdef double add
    if dp.icmplim <= 0:
        return
    add = (dp.now_ns - dp.icmp_refill_ns) * 1e-9 * dp.icmplim
    dp.icmp_refill_ns = dp.now_ns
    dp.icmp_tokens += add
    if dp.icmp_tokens > dp.icmplim:
        dp.icmp_tokens = dp.icmplim


cdef void icmp_error(dp_state *dp, dp_ifnet *ifp, mbuf *m, int type, int code,
                     int nextmtu) noexcept nogil:
    """Answer the sender of m (consumed) with an ICMP error quoting its
    header and data, up to 576 bytes in all (RFC 1812 4.3.2.3), from our
    address on the interface it came in on."""
    cdef unsigned char *ip = mdata(m)
    cdef int hlen = ip_hl(ip)
    cdef uint32_t src = ld32(ip + 12), dst = ld32(ip + 16)
    cdef int quote, t
    cdef mbuf *n
    cdef unsigned char *out
    cdef uint16_t sum, z = 0
    # Never about: non-initial fragments, ICMP errors, broadcasts, martians.
    if ld16(ip + 6) & IP_OFFMASK:
        m_freem(m)
        return
    if ip[9] == IPPROTO_ICMP and m.m_len > hlen:
        t = ip[hlen]
        if t == 3 or t == 4 or t == 5 or t == 11 or t == 12:
            m_freem(m)
            return
    if in_martian_src(src) or in_multicast(dst) or dst == 0xffffffffU or dp_is_subnet_bcast(dp, dst):
        m_freem(m)
        return
    if not icmp_ratecheck(dp):
        m_freem(m)
        return
    quote = m.m_pkthdr.len
    if quote > ICMP_ERR_MAXLEN - 28:
        quote = ICMP_ERR_MAXLEN - 28
    n = dp_new_packet(28 + quote)
    if n == NULL:
        dp_drop_m(dp, m, DROP_NOBUF)
        return
    out = mdata(n)
    out[0] = 0x45
    out[1] = 0xc0                       # internetwork control precedence
    st16(out + 2, <uint16_t>(28 + quote))
    dp.ip_id += 1
    st16(out + 4, dp.ip_id)
    st16(out + 6, 0)
    out[8] = <unsigned char>dp.ttl
    out[9] = IPPROTO_ICMP
    st32(out + 12, ifp_src_for(ifp, src))
    st32(out + 16, src)
    ip_set_cksum(out, 20)
    out[20] = <unsigned char>type
    out[21] = <unsigned char>code
    memset(out + 22, 0, 6)
    if type == ICMP_UNREACH and code == ICMP_UNREACH_NEEDFRAG:
        st16(out + 26, <uint16_t>(nextmtu if nextmtu >= 68 else 68))
    m_copydata(m, 0, quote, <char *>(out + 28))
    sum = in_cksum(out + 20, 8 + quote)
    memcpy(out + 22, &sum, 2)
    m_freem(m)
    dp.icmp_out[type] += 1
    ip_output(dp, n)


# =============================================================================
# the loop
# =============================================================================

cdef void dp_rx_burst(dp_state *dp, dp_ifnet *ifp) noexcept nogil:
    """Read up to DP_BURST frames, each straight into a Packet-zone cluster,
    and run each through ether_input."""
    cdef int k, err
    cdef mbuf *m
    for k in range(DP_BURST):
        m = m_read_fd(ifp.fd, ifp.rx_size, 0, ifp.index, M_NOWAIT)
        if m == NULL:
            err = errno
            if err == EAGAIN:
                return
            if err == ENOBUFS:
                # No buffer (a zone limit).  Free what is held for ARP and
                # retry once; otherwise the frame must still leave the
                # queue, or epoll keeps waking us for it.
                if arp_reclaim(dp) > 0:
                    m = m_read_fd(ifp.fd, ifp.rx_size, 0, ifp.index, M_NOWAIT)
                    if m != NULL:
                        ifp.rx_packets += 1
                        ifp.rx_bytes += m.m_pkthdr.len
                        ether_input(dp, ifp, m)
                        continue
                if m_discard_fd(ifp.fd) < 0:
                    return
                ifp.rx_nobuf += 1
                dp.drops[DROP_NOBUF] += 1
                continue
            if err != EINTR:
                ifp.rx_errors += 1
            if err == EBADFD or err == ENODEV or err == ENXIO or err == EIO or err == EBADF:
                # The TAP is gone for good (say the namespace it was moved to
                # was destroyed with its container): stop polling it, or
                # epoll reports it ready forever and the loop spins.
                epoll_ctl(dp.epfd, EPOLL_CTL_DEL, ifp.fd, NULL)
                ifp.lost_errno = err
            return
        ifp.rx_packets += 1
        ifp.rx_bytes += m.m_pkthdr.len
        m.m_pkthdr.rcvif = ifp.index
        ether_input(dp, ifp, m)


cdef void dp_timers(dp_state *dp) noexcept nogil:
    arp_timer(dp)


cdef void dp_run(dp_state *dp) noexcept nogil:
    """The forwarding loop: wait for frames, run each burst to completion
    under dp.lock, fire timers; until dp.stop."""
    cdef epoll_event evs[DP_EPOLL_MAX]
    cdef int n, i
    cdef uint32_t tok
    cdef uint64_t junk
    # A private file-descriptor table for this thread.  In a process with
    # several threads the kernel takes and drops a reference on the file at
    # every read()/write() (fget/fput, atomics on a shared line); with a table
    # of its own the thread gets fdget's single-owner fast path, as a
    # single-threaded process does -- two atomics saved per system call, four
    # per packet.  The TAPs, the epoll and the eventfd are all open by now;
    # fds other threads open or close later are not seen here, and the
    # descriptors copied here are released when this thread exits.
    unshare(CLONE_FILES)
    dp.now_ns = dp_clock()
    dp.icmp_refill_ns = dp.now_ns
    dp.next_timer_ns = dp.now_ns
    while not dp.stop:
        n = epoll_wait(dp.epfd, evs, DP_EPOLL_MAX, 50)
        pthread_mutex_lock(&dp.lock)
        dp.now_ns = dp_clock()
        icmp_refill(dp)
        for i in range(n):
            tok = evs[i].data.u32
            if tok == DP_WAKE:
                read(dp.wakefd, &junk, 8)
            elif <int>tok < dp.nifs and dp.ifs[tok].fd >= 0:
                dp_rx_burst(dp, &dp.ifs[tok])
        if dp.now_ns >= dp.next_timer_ns:
            dp_timers(dp)
            dp.next_timer_ns = dp.now_ns + DP_TIMER_NS
        dp.loops += 1
        dp.last_progress_ns = dp.now_ns
        pthread_mutex_unlock(&dp.lock)
    # Leaving: hand this thread's cached buckets back to the zones.
    uma_thread_flush()


# =============================================================================
# Python side: the control plane's handle
# =============================================================================

import os


def _ip2int(s) -> int:
    import ipaddress
    return int(ipaddress.IPv4Address(s))


def _int2ip(v) -> str:
    import ipaddress
    return str(ipaddress.IPv4Address(v))


cdef extern from "<unistd.h>" nogil:
    int usleep(unsigned int usec)


TUNABLES = ("forwarding", "ttl", "icmplim", "arp_max_age", "arp_maxhold", "arp_max_tries")


cdef class Dataplane:
    """The forwarding engine of one router.  run() blocks (call it from a
    thread of its own); every other method may be called meanwhile."""
    cdef dp_state *dp
    cdef RouteTable routes
    cdef bint running
    cdef volatile int stalling       # debug: stall() holds dp.lock while set

    def __cinit__(self, RouteTable routes not None):
        cdef epoll_event ev
        self.dp = <dp_state *>calloc(1, sizeof(dp_state))
        if self.dp == NULL:
            raise MemoryError()
        self.routes = routes
        self.dp.rt = routes.t
        pthread_mutex_init(&self.dp.lock, NULL)
        self.dp.forwarding = 1
        self.dp.ttl = 64
        self.dp.icmplim = 200
        self.dp.icmp_tokens = 200
        self.dp.arp_max_age = 1200
        self.dp.arp_maxhold = 16
        self.dp.arp_max_tries = 3
        self.dp.epfd = epoll_create1(EPOLL_CLOEXEC)
        self.dp.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.dp.epfd < 0 or self.dp.wakefd < 0:
            raise OSError(errno, "epoll/eventfd")
        ev.events = EPOLLIN
        ev.data.u32 = DP_WAKE
        epoll_ctl(self.dp.epfd, EPOLL_CTL_ADD, self.dp.wakefd, &ev)

    def __dealloc__(self):
        if self.dp != NULL:
            if not self.running:
                arp_clear(self.dp)
                close(self.dp.epfd)
                close(self.dp.wakefd)
                pthread_mutex_destroy(&self.dp.lock)
                free(self.dp)
            self.dp = NULL

    def add_interface(self, int fd, str name, bytes mac, int mtu, addrs) -> int:
        """Attach an open, non-blocking TAP fd.  addrs: [(address, prefixlen)]
        as strings/ints.  Returns the interface index used by routes."""
        cdef dp_ifnet *ifp
        cdef epoll_event ev
        cdef int idx
        if len(mac) != 6:
            raise ValueError("mac must be 6 bytes")
        if not 68 <= mtu <= 16000:
            raise ValueError(f"mtu {mtu} out of range (68..16000)")
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            idx = self.dp.nifs
            if idx >= DP_MAX_IFS:
                raise ValueError(f"at most {DP_MAX_IFS} interfaces")
            ifp = &self.dp.ifs[idx]
            memset(ifp, 0, sizeof(dp_ifnet))
            ifp.fd = fd
            ifp.index = idx
            strncpy(ifp.name, name.encode()[:15], 15)
            memcpy(ifp.mac, <const char *>mac, 6)
            ifp.mtu = mtu
            ifp.rx_size = mtu + ETHER_HDR_LEN + 4
            self._set_addrs(ifp, addrs)
            ev.events = EPOLLIN
            ev.data.u32 = <uint32_t>idx
            if epoll_ctl(self.dp.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
                raise OSError(errno, f"epoll_ctl({name})")
            self.dp.nifs += 1
        finally:
            pthread_mutex_unlock(&self.dp.lock)
        return idx

    cdef _set_addrs(self, dp_ifnet *ifp, addrs):
        cdef int i = 0
        if len(addrs) > DP_MAX_ADDRS:
            raise ValueError(f"at most {DP_MAX_ADDRS} addresses per interface")
        for a, plen in addrs:
            ifp.addr[i] = _ip2int(a)
            ifp.mask[i] = (0xffffffff << (32 - plen)) & 0xffffffff if plen else 0
            i += 1
        ifp.naddrs = i

    def set_addresses(self, int index, addrs):
        if not 0 <= index < self.dp.nifs:
            raise IndexError(index)
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            self._set_addrs(&self.dp.ifs[index], addrs)
        finally:
            pthread_mutex_unlock(&self.dp.lock)

    def set_mtu(self, int index, int mtu):
        if not 0 <= index < self.dp.nifs:
            raise IndexError(index)
        if not 68 <= mtu <= 16000:
            raise ValueError(f"mtu {mtu} out of range (68..16000)")
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        self.dp.ifs[index].mtu = mtu
        self.dp.ifs[index].rx_size = mtu + ETHER_HDR_LEN + 4
        pthread_mutex_unlock(&self.dp.lock)

    def set(self, str name, int value):
        """Change a tunable: forwarding, ttl, icmplim, arp_max_age,
        arp_maxhold, arp_max_tries."""
        if name not in TUNABLES:
            raise KeyError(name)
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        if name == "forwarding":
            self.dp.forwarding = value
        elif name == "ttl":
            self.dp.ttl = value
        elif name == "icmplim":
            self.dp.icmplim = value
            self.dp.icmp_tokens = value
        elif name == "arp_max_age":
            self.dp.arp_max_age = value
        elif name == "arp_maxhold":
            self.dp.arp_maxhold = value
        elif name == "arp_max_tries":
            self.dp.arp_max_tries = value
        pthread_mutex_unlock(&self.dp.lock)

    def run(self):
        """Forward until stop(); blocks without the GIL."""
        if self.running:
            raise RuntimeError("already running")
        self.running = True
        self.dp.stop = 0
        try:
            with nogil:
                dp_run(self.dp)
        finally:
            self.running = False

    def stop(self):
        cdef uint64_t one = 1
        self.dp.stop = 1
        write(self.dp.wakefd, &one, 8)

    def flush(self):
        """Drop every ARP entry and held packet (used at shutdown)."""
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
            arp_clear(self.dp)
            pthread_mutex_unlock(&self.dp.lock)

    def progress_age(self) -> float:
        """Seconds since the loop last went round (inf before it started)."""
        if self.dp.last_progress_ns == 0:
            return float("inf")
        return (dp_clock() - self.dp.last_progress_ns) / 1e9

    def stall(self, double seconds):
        """Debug facility (forwarder debug stall): hold the dataplane lock for
        ``seconds`` so the forwarding loop makes no progress -- frames queue
        in the TAPs, progress_age() grows, health checks fail -- until the
        time is up or resume() is called.  Blocks the caller (run it in a
        thread of its own); every other method taking the lock waits too."""
        cdef int64_t end
        if not 0 < seconds <= 3600:
            raise ValueError(f"stall of {seconds} s: expected 0 < seconds <= 3600")
        if self.stalling:
            raise RuntimeError("the dataplane is already stalled")
        self.stalling = 1
        end = dp_clock() + <int64_t>(seconds * 1e9)
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
            while self.stalling and dp_clock() < end:
                usleep(10000)
            pthread_mutex_unlock(&self.dp.lock)
        self.stalling = 0

    def resume(self) -> bool:
        """End a stall() early; True if one was in progress."""
        was = self.stalling != 0
        self.stalling = 0
        return was

    @property
    def stalled(self) -> bool:
        return self.stalling != 0

    @property
    def running(self) -> bool:
        return self.running

    def stats(self) -> dict:
        cdef int i
        cdef dp_ifnet *ifp
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            ifs = []
            for i in range(self.dp.nifs):
                ifp = &self.dp.ifs[i]
                ifs.append({
                    "name": ifp.name.decode(), "index": i, "mtu": ifp.mtu,
                    "rx_packets": ifp.rx_packets, "rx_bytes": ifp.rx_bytes,
                    "rx_errors": ifp.rx_errors, "rx_nobuf": ifp.rx_nobuf,
                    "tx_packets": ifp.tx_packets, "tx_bytes": ifp.tx_bytes,
                    "tx_errors": ifp.tx_errors,
                    "link": "up" if not ifp.lost_errno else f"lost ({os.strerror(ifp.lost_errno)})",
                })
            drops = {DROP_NAMES[i]: self.dp.drops[i] for i in range(DROP_MAX)}
            icmp = {"echo_replies": self.dp.icmp_out[ICMP_ECHOREPLY],
                    "unreachable": self.dp.icmp_out[ICMP_UNREACH],
                    "time_exceeded": self.dp.icmp_out[ICMP_TIMXCEED],
                    "errors_sent": self.dp.icmp_out[ICMP_UNREACH] + self.dp.icmp_out[ICMP_TIMXCEED],
                    "ratelimited": self.dp.icmp_ratelimited}
            return {
                "interfaces": ifs, "drops": drops, "icmp": icmp,
                "forwarded": self.dp.forwarded, "delivered_local": self.dp.delivered_local,
                "fragments_created": self.dp.frags_created,
                "arp": {"received": self.dp.arp_in,
                        "requests_sent": self.dp.arp_requests, "replies_sent": self.dp.arp_replies,
                        "entries": self.dp.narp},
                "loops": self.dp.loops,
            }
        finally:
            pthread_mutex_unlock(&self.dp.lock)

    def arp_entries(self) -> list:
        cdef int i
        cdef dp_arp *e
        out = []
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            now = self.dp.now_ns if self.dp.now_ns else dp_clock()
            for i in range(DP_ARP_SIZE):
                e = &self.dp.arp[i]
                if e.state == ARP_FREE:
                    continue
                out.append({
                    "ip": _int2ip(e.ip),
                    "interface": self.dp.ifs[e.ifindex].name.decode(),
                    "mac": ":".join(f"{b:02x}" for b in e.mac[:6]) if e.state == ARP_REACHABLE else None,
                    "state": "reachable" if e.state == ARP_REACHABLE else "incomplete",
                    "expires_in": max(0.0, (e.expire_ns - now) / 1e9) if e.state == ARP_REACHABLE else None,
                    "held": e.nhold,
                })
        finally:
            pthread_mutex_unlock(&self.dp.lock)
        return sorted(out, key=lambda d: (d["interface"], _ip2int(d["ip"])))

    def arp_delete(self, ip, interface=None) -> int:
        """Forget the entries for ip (on one interface, or all); the number
        removed.  Held packets are dropped."""
        cdef uint32_t a = _ip2int(ip)
        cdef int i, n = 0
        cdef dp_arp *e
        cdef mbuf *m
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            for i in range(self.dp.nifs):
                if interface is not None and self.dp.ifs[i].name.decode() != interface:
                    continue
                e = arp_lookup(self.dp, i, a)
                if e == NULL:
                    continue
                while e.hold_head != NULL:
                    m = e.hold_head
                    e.hold_head = m.m_nextpkt
                    m.m_nextpkt = NULL
                    m_freem(m)
                e.hold_tail = NULL
                e.nhold = 0
                arp_remove(self.dp, e)
                n += 1
        finally:
            pthread_mutex_unlock(&self.dp.lock)
        return n
