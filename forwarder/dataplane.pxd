# cython: language_level=3
#
# dataplane.pxd -- the forwarding engine's C state.
#
# One dp_state per router.  The forwarding thread owns it and runs without
# the GIL; the control plane (Python) changes interfaces, ARP entries and
# tunables under dp_lock, which the forwarding thread takes once per epoll
# wake-up (a burst), never per packet.  Routes are in forwarder.route's
# table, which is read lock-free (see route.pxd).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

from allocator_pyx.mbuf cimport mbuf
from allocator_pyx.uma cimport pthread_mutex_t
from forwarder.route cimport rtable

cdef enum:
    DP_MAX_IFS = 64
    DP_MAX_ADDRS = 8
    DP_BURST = 32               # frames read from one TAP per wake-up
    DP_ARP_SIZE = 4096          # ARP hash slots (power of two)
    DP_ARP_MAX = 3072           # entries at most (load factor 3/4)
    DP_EPOLL_MAX = 64
    DP_TIMER_NS = 100000000     # ARP and ICMP timers: every 100 ms
    DP_LINKHDR = 16             # leading space reserved in mbufs we build
    DP_WAKE = 0xffffffff        # epoll token of the wake-up eventfd

# Why a packet was dropped: one counter each (names in dataplane.pyx).
cdef enum:   # dp_drop
    DROP_RUNT = 0               # shorter than an Ethernet header
    DROP_NOT_OURS               # unicast to another station's MAC
    DROP_ETHERTYPE              # neither IPv4 nor ARP
    DROP_ARP_BAD                # malformed ARP
    DROP_IP_SHORT               # shorter than an IPv4 header
    DROP_IP_VERSION             # version != 4
    DROP_IP_HLEN                # IHL < 5 or beyond the frame
    DROP_IP_CKSUM               # header checksum wrong
    DROP_IP_LEN                 # total length < header or > frame
    DROP_MARTIAN_SRC            # 0/8, 127/8, class D/E source
    DROP_MARTIAN_DST            # 0/8, 127/8, class E destination
    DROP_L2_BCAST               # link-layer broadcast/multicast, not forwarded
    DROP_BCAST_DST              # IP broadcast or multicast destination
    DROP_FORWARDING_OFF         # net.inet.ip.forwarding = 0
    DROP_NO_ROUTE               # no route (ICMP net unreachable)
    DROP_BLACKHOLE              # blackhole route
    DROP_UNREACHABLE            # unreachable route (ICMP host unreachable)
    DROP_PROHIBIT               # prohibit route (ICMP admin prohibited)
    DROP_TTL                    # TTL expired (ICMP time exceeded)
    DROP_NEEDFRAG               # DF set, larger than the MTU (ICMP frag needed)
    DROP_NOBUF                  # no mbuf or cluster (zone limit or memory)
    DROP_ARP_TIMEOUT            # next hop never answered ARP (ICMP host unreachable)
    DROP_ARP_HOLD               # ARP hold queue overflow (oldest dropped)
    DROP_ARP_RECLAIM            # held packets freed because buffers ran out
    DROP_ARP_FULL               # ARP table full
    DROP_LOCAL                  # to the router and not an echo request
    DROP_ICMP_BAD               # echo request with a bad ICMP checksum or length
    DROP_TX_ERROR               # writev() to the TAP failed
    DROP_OUTPUT_NO_ROUTE        # a packet of our own with no route back
    DROP_MAX

cdef struct dp_ifnet:
    int fd
    int index
    char name[16]
    uint8_t mac[6]
    int mtu
    int rx_size                 # largest frame read: mtu + Ethernet header
    int naddrs
    uint32_t addr[DP_MAX_ADDRS]     # HOST order
    uint32_t mask[DP_MAX_ADDRS]
    uint64_t rx_packets
    uint64_t rx_bytes
    uint64_t rx_errors          # read() errors
    uint64_t rx_nobuf           # frames dropped: no buffer
    uint64_t tx_packets
    uint64_t tx_bytes
    uint64_t tx_errors
    int lost_errno              # the device went away (its namespace died): 0 while up

cdef enum:
    ARP_FREE = 0
    ARP_INCOMPLETE = 1
    ARP_REACHABLE = 2

cdef struct dp_arp:
    uint32_t ip                 # HOST order
    int ifindex
    int state
    uint8_t mac[6]
    int tries                   # requests sent while incomplete
    int nhold
    int64_t expire_ns           # REACHABLE until then
    int64_t last_req_ns
    mbuf *hold_head             # packets waiting for the answer (m_nextpkt)
    mbuf *hold_tail

cdef struct dp_state:
    pthread_mutex_t lock
    dp_ifnet ifs[DP_MAX_IFS]
    int nifs
    rtable *rt
    dp_arp arp[DP_ARP_SIZE]
    int narp
    uint64_t drops[DROP_MAX]
    # ICMP
    uint64_t icmp_out[19]       # errors and replies sent, by type
    uint64_t icmp_ratelimited
    double icmp_tokens
    int64_t icmp_refill_ns
    uint64_t arp_in             # well-formed ARP frames handled (answered, learned or ignored)
    uint64_t arp_requests
    uint64_t arp_replies
    uint64_t frags_created
    uint64_t forwarded
    uint64_t delivered_local
    uint16_t ip_id
    # tunables
    int forwarding
    int ttl
    int icmplim                 # ICMP errors per second, 0 = unlimited
    int arp_max_age             # seconds
    int arp_maxhold
    int arp_max_tries
    # loop
    int epfd
    int wakefd
    volatile int stop
    int64_t now_ns
    int64_t next_timer_ns
    int64_t last_reclaim_ns
    volatile int64_t last_progress_ns
    uint64_t loops
