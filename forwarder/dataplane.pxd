# cython: language_level=3
#
# dataplane.pxd -- the forwarding engine's C state.
#
# One dp_state per router.  The forwarding thread owns it and runs without
# the GIL; the control plane (Python) changes interfaces, ARP entries and
# tunables under dp_lock, which the forwarding thread takes once per epoll
# wake-up (a burst), never per packet.  Routes are in forwarder.route's
# table, which is read lock-free (see route.pxd).

from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from allocator_pyx.mbuf cimport mbuf, mbufq
from allocator_pyx.includes cimport pthread_mutex_t
from forwarder.inet cimport ICMP_MAXTYPE
from forwarder.inet6 cimport in6_addr
from forwarder.route cimport rtable
from forwarder.route6 cimport rt6table

cdef enum:
    DP_MAX_IFS = 128            # ports (net.link.max_interfaces: half) and their mirrors
    DP_MAX_ADDRS = 8
    DP_MTU_MIN = 68             # RFC 791: every link carries 68 bytes unfragmented
    DP_MTU_MAX = 16000          # the largest frame read fits a 16k jumbo cluster
    DP_MAX_STALL = 3600         # seconds: forwarder debug stall
    DP_BURST = 32               # frames read from one TAP per wake-up
    DP_TXQ = 64                 # frames a packet socket's output queue holds (net/if_packet.pxi)
    DP_TXQ_IOV = 256            # iovecs one sendmmsg() of that queue may carry
    DP_TXQ_BYTES = 16384        # ... and the bytes it holds before it is sent, burst or not
    DP_ARP_SIZE = 4096          # ARP hash slots (power of two)
    DP_ARP_MAX = 3072           # entries at most (load factor 3/4)
    DP_ND6_SIZE = 4096          # neighbour cache slots (power of two)
    DP_ND6_MAX = 3072
    DP_EPOLL_MAX = 64
    DP_TIMER_NS = 100000000     # ARP and ICMP timers: every 100 ms
    DP_LINKHDR = 32             # leading space reserved in mbufs we build: virtio-net + Ethernet
    DP_RX_SPARES = 4            # 16k clusters a super-frame is read into: 2k + 4 x 16k > 64 KB + headers
    DP_WAKE = 0xffffffff        # epoll token of the wake-up eventfd

# <linux/if_tun.h> TUNSETOFFLOAD bits (USO4/USO6 are Linux 6.2's, newer than
# Debian 12's headers; forwarder/netns.py has the same values for the ioctl).
cdef enum:
    TUN_F_CSUM = 0x01
    TUN_F_TSO4 = 0x02
    TUN_F_TSO6 = 0x04
    TUN_F_TSO_ECN = 0x08
    TUN_F_USO4 = 0x20
    TUN_F_USO6 = 0x40

# Why a packet was dropped: the reasons, their names and descriptions are
# defined once, in dp_drop.h; these are the symbols as Cython sees them.
cdef extern from "dp_drop.h":
    enum:   # dp_drop_t
        DROP_RUNT
        DROP_NOT_OUR_MAC
        DROP_ETHERTYPE
        DROP_ARP_MALFORMED
        DROP_ARP_NOT_ON_LINK
        DROP_VNET_HDR_INVALID
        DROP_IP_TOO_SHORT
        DROP_IP_BAD_VERSION
        DROP_IP_BAD_HEADER_LENGTH
        DROP_IP_BAD_CHECKSUM
        DROP_IP_BAD_TOTAL_LENGTH
        DROP_MARTIAN_SOURCE
        DROP_MARTIAN_DESTINATION
        DROP_LINK_BROADCAST
        DROP_IP_BROADCAST_DESTINATION
        DROP_FORWARDING_DISABLED
        DROP_NO_ROUTE
        DROP_BLACKHOLE
        DROP_UNREACHABLE_ROUTE
        DROP_PROHIBITED_ROUTE
        DROP_TTL_EXCEEDED
        DROP_NEEDFRAG_DF_SET
        DROP_NO_BUFFER
        DROP_INTERFACE_DOWN
        DROP_ARP_TIMEOUT
        DROP_ARP_HOLD_OVERFLOW
        DROP_ARP_HOLD_RECLAIMED
        DROP_ARP_TABLE_FULL
        DROP_ARP_INTERFACE_FULL
        DROP_ARP_INCOMPLETE_FULL
        DROP_IP6_TOO_SHORT
        DROP_IP6_BAD_VERSION
        DROP_IP6_BAD_LENGTH
        DROP_IP6_MARTIAN_SOURCE
        DROP_IP6_MARTIAN_DESTINATION
        DROP_IP6_BEYOND_SCOPE
        DROP_IP6_TOO_BIG
        DROP_ND_MALFORMED
        DROP_ND_NOT_ON_LINK
        DROP_ND6_HOLD_OVERFLOW
        DROP_ND6_TIMEOUT
        DROP_LOCAL_NOT_ECHO
        DROP_ICMP_MALFORMED
        DROP_TX_ERROR
        DROP_OUTPUT_NO_ROUTE
        DROP_MAX
    const char *const dp_drop_symbol[]
    const char *const dp_drop_description[]

# The packet trace's points and ends, defined once in dp_trace.h (as the
# drop reasons are in dp_drop.h); net/dp_trace.pxi records them.
cdef extern from "dp_trace.h":
    enum:   # dp_trace_point_t
        TR_TAP_INPUT
        TR_ETHER_INPUT
        TR_ARP_INPUT
        TR_IP_INPUT
        TR_IP_LOCAL
        TR_ICMP_INPUT
        TR_IP_LOOKUP
        TR_IP_MULTIPATH
        TR_IP_TTL
        TR_IP_OUTPUT
        TR_IP_FRAGMENT
        TR_GSO_SEGMENT
        TR_ARP_HIT
        TR_ARP_MISS
        TR_ARP_RESOLVED
        TR_ARP_LEARN
        TR_ARP_UPDATE
        TR_ARP_RATELIMITED
        TR_IP6_INPUT
        TR_IP6_LOCAL
        TR_ICMP6_INPUT
        TR_ND6_INPUT
        TR_IP6_LOOKUP
        TR_IP6_MULTIPATH
        TR_IP6_HLIM
        TR_IP6_OUTPUT
        TR_ND6_HIT
        TR_ND6_MISS
        TR_ND6_RESOLVED
        TR_ND6_RATELIMITED
        TR_ICMP_ERROR
        TR_ICMP6_ERROR
        TR_ICMP_SUPPRESSED
        TR_ICMP6_SUPPRESSED
        TR_PUNT
        TR_ETHER_OUTPUT
        TR_TX
        TR_DROP
        TR_MAX
    enum:   # dp_trace_end_t
        TR_END_NONE
        TR_END_TRANSMITTED
        TR_END_DELIVERED
        TR_END_PUNTED
        TR_END_ICMP_ERROR
        TR_END_DROPPED
        TR_END_MAX
    enum:
        TR_NOSEND_FRAGMENT
        TR_NOSEND_ERROR
        TR_NOSEND_GROUP
        TR_NOSEND_RATELIMIT
        TR_NOSEND_NOBUFS
    const char *const dp_trace_stage[]
    const char *const dp_trace_format[]
    const char *const dp_trace_end_name[]

cdef enum:
    DP_TRACE_MAX = 512          # packets one trace holds: a ring, the oldest overwritten
    DP_TRACE_STEPS = 24         # steps kept per packet (more are counted: lost_steps)
    DP_TRACE_HEAD = 128         # bytes of the frame kept, as received

cdef struct dp_trace_step:
    uint16_t point              # TR_*
    uint16_t x
    uint32_t dt_us              # since the frame was read
    uint32_t a
    uint32_t b
    uint32_t c
    uint32_t d
    uint8_t data[32]

cdef struct dp_trace_rec:
    uint32_t id                 # the packet's m_pkthdr.trace; 0: slot unused
    int32_t ifindex             # the receiving port
    int64_t time_ns             # when it was read (CLOCK_MONOTONIC)
    int32_t len                 # the frame's length
    int32_t caplen              # bytes of it in head
    uint16_t nsteps
    uint16_t lost_steps
    uint16_t end                # TR_END_*
    uint16_t end_arg            # its detail: drop reason, ICMP type << 8 | code, egress index
    uint8_t head[DP_TRACE_HEAD]
    dp_trace_step steps[DP_TRACE_STEPS]

# Who watches a port (dp_ifnet.observe): the one word the receive and
# transmit legs test for the trace and the capture (net/dp_capture.pxi).
cdef enum:
    OBS_TRACE = 1               # the trace takes frames read here
    OBS_CAP_IN = 2              # the capture takes frames read here ...
    OBS_CAP_OUT = 4             # ... and frames written here

# Capture records (net/dp_capture.pxi): a header, then the frame's bytes.
cdef enum:
    CAP_IN = 1
    CAP_OUT = 2
    CAP_DROP = 3
    DP_CAP_RING = 1 << 22       # bytes of the capture ring (4 MiB: 2800 full-size frames)
    DP_CAP_SNAPLEN = 262144     # the largest snap length (tcpdump's default)

cdef struct dp_cap_hdr:
    int64_t time_ns             # CLOCK_MONOTONIC when captured
    uint32_t reclen             # this record: header and bytes, rounded up to 8
    uint32_t caplen             # bytes of the frame that follow
    uint32_t origlen            # the frame's length
    int16_t ifindex             # the port (a drop: the port it came in on)
    uint8_t dir                 # CAP_IN, CAP_OUT or CAP_DROP
    uint8_t synth               # a drop past ether_input: its Ethernet header was rebuilt
    uint16_t reason             # CAP_DROP: the drop reason (dp_drop.h)
    uint16_t pad0
    uint32_t pad1

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
    int naddrs6
    in6_addr addr6[DP_MAX_ADDRS]    # configured IPv6 addresses ...
    int plen6[DP_MAX_ADDRS]         # ... and their prefix lengths
    in6_addr lladdr6                # the link-local address (modified EUI-64 of mac)
    int nnd6                        # neighbour cache entries on this interface
    int nincomplete6                # of those, INCOMPLETE (capped by arp_max_incomplete)
    int64_t nd6_pps_ns              # the second multicast solicitations are counted in ...
    int nd6_pps                     # ... and how many went out in it (nd6_ns_ppslimit)
    int ra                          # send Router Advertisements here (netinet6/nd6_ra.pxi)
    int ra_initial                  # of the first ones, still to send at the short interval
    int64_t ra_next_ns              # the next unsolicited one
    int64_t ra_last_ns              # the last one sent
    int64_t ra_answer_ns            # an answer to a solicitation is due then (0: none)
    uint64_t ra_sent
    uint64_t rs_received
    uint64_t rx_packets
    uint64_t rx_bytes
    uint64_t rx_errors          # read() errors
    uint64_t rx_nobuf           # frames dropped: no buffer
    uint64_t tx_packets
    uint64_t tx_bytes
    uint64_t tx_errors
    int narp                    # ARP entries on this interface (capped by arp_max_per_if)
    int nincomplete             # of those, INCOMPLETE (capped by arp_max_incomplete)
    int64_t arp_pps_ns          # the second broadcast requests are counted in ...
    int arp_pps                 # ... and how many went out in it (arp_request_ppslimit)
    int lost_errno              # the device went away (its namespace died): 0 while up
    int link_down               # an attached port whose interface is gone (set_link)
    int mirror                  # a port: its mirror's index (forwarder/cplane.py), -1 none
    int mirror_of               # a mirror: its port's index (what it sends goes out there), -1
    int observe                 # OBS_*: trace or capture watches this port (0 nearly always)
    # offloads (net/if_tap.pxi)
    int vnet_hdrlen             # VIRTIO_NET_HDR_LEN when opened with IFF_VNET_HDR, else 0
    uint32_t offloads           # TUN_F_* the kernel accepted: what it may hand us
    uint32_t offloads_refused   # TUN_F_* asked for and refused
    uint32_t hwassist           # CSUM_* it takes from us on output (FreeBSD's if_hwassist)
    int rx_spares               # DP_RX_SPARES when super-frames may come, else 0
    mbuf *rx_spare[DP_RX_SPARES]
    uint64_t rx_gso             # super-frames read ...
    uint64_t rx_gso_segs        # ... and the segments they carried
    uint64_t tx_gso             # super-frames written ...
    uint64_t tx_gso_segs        # ... and the segments they carried
    uint64_t gso_sw             # super-frames cut into segments here (no TSO, or DF clear and too big)
    uint64_t csum_sw            # checksums completed here that the sender had left to offload
    # a packet socket's receive ring (net/if_packet.pxi); NULL: read() the fd
    char *ring
    uint32_t ring_frames        # slots ...
    uint32_t ring_frame_size    # ... of this many bytes
    uint32_t ring_next          # the slot the next frame is in
    # ... and its output, sent in batches from the forwarding loop (pk_flush)
    int txb                     # queue frames while dp.tx_batching, else write each at once
    int txq_len                 # frames in txq, waiting for the end of the burst
    int txq_bytes               # their bytes
    int txq_dirty               # listed in dp.txq_dirty
    mbuf *txq[DP_TXQ]           # complete frames, virtio-net header in front
    uint64_t tx_batches         # sendmmsg() calls that sent at least one frame

# An ARP entry's states: RFC 4861 7.3.2's, as Linux keeps them for ARP
# (netinet/if_ether.pxi says what moves an entry between them).  The values
# are the ND6_* ones below: one list of names for both (and for the trace).
cdef enum:
    ARP_FREE = 0
    ARP_INCOMPLETE = 1
    ARP_REACHABLE = 2
    ARP_STALE = 3
    ARP_DELAY = 4
    ARP_PROBE = 5

cdef struct dp_arp:
    uint32_t ip                 # HOST order
    int ifindex
    int state
    uint8_t mac[6]
    int tries                   # requests sent: broadcast while INCOMPLETE, unicast in PROBE
    int64_t expire_ns           # the state's deadline (REACHABLE, STALE, DELAY, PROBE)
    int64_t last_req_ns
    mbufq hold                  # packets waiting for the answer (only while INCOMPLETE)

# RFC 4861 7.3.2's states (netinet6/nd6.pxi says what moves an entry
# between them).
cdef enum:
    ND6_FREE = 0
    ND6_INCOMPLETE = 1
    ND6_REACHABLE = 2
    ND6_STALE = 3
    ND6_DELAY = 4
    ND6_PROBE = 5

cdef struct dp_nd6:
    in6_addr ip
    int ifindex
    int state
    uint8_t mac[6]
    int tries                   # solicitations sent: multicast while INCOMPLETE, unicast in PROBE
    int64_t expire_ns           # the state's deadline (REACHABLE, STALE, DELAY, PROBE)
    int64_t last_req_ns
    mbufq hold                  # only while INCOMPLETE

cdef struct dp_state:
    pthread_mutex_t lock
    dp_ifnet ifs[DP_MAX_IFS]
    int nifs
    rtable *rt
    rt6table *rt6               # forwarder.route6's table; NULL: no IPv6 routes
    dp_arp arp[DP_ARP_SIZE]
    int narp
    dp_nd6 nd6[DP_ND6_SIZE]
    int nnd6
    uint64_t nd6_in             # well-formed NS/NA handled
    uint64_t nd6_solicits       # NS sent (multicast and unicast)
    uint64_t nd6_probes         # of those, unicast ones to a neighbour in PROBE
    uint64_t nd6_ratelimited    # multicast solicitations not sent: nd6_ns_ppslimit
    int64_t nd6_reachable_ns    # ReachableTime: nd6_basereachable randomized (RFC 4861 6.3.2)
    int64_t nd6_recalc_ns       # when ReachableTime is drawn again
    uint64_t nd6_adverts        # NA sent
    uint64_t icmp6_echo_replies
    uint64_t icmp6_errors[5]    # ICMPv6 errors sent, by type (1..4)
    uint64_t icmp6_ratelimited
    uint64_t ra_rand            # the RA timers' jitter
    uint32_t flow_seed          # multipath flow hashes (random per router: no polarization along a chain)
    uint64_t drops[DROP_MAX]
    # ICMP
    uint64_t icmp_out[ICMP_MAXTYPE + 1]     # errors and replies sent, by type
    uint64_t icmp_ratelimited
    double icmp_tokens
    int64_t icmp_refill_ns
    uint64_t arp_in             # well-formed ARP frames handled (answered, learned or ignored)
    uint64_t arp_requests       # requests sent: broadcast and unicast
    uint64_t arp_probes         # of those, unicast ones to a neighbour in PROBE
    uint64_t arp_ratelimited    # broadcast requests not sent: arp_request_ppslimit
    uint64_t arp_replies
    int64_t arp_reachable_ns    # ReachableTime for ARP: arp_basereachable randomized
    int64_t arp_recalc_ns       # when it is drawn again
    uint64_t frags_created
    uint64_t forwarded
    uint64_t delivered_local
    uint16_t ip_id
    # tunables
    int forwarding
    int ttl
    int icmplim                 # ICMP errors per second, 0 = unlimited
    int forwarding6             # net.inet6.ip6.forwarding
    int hlim                    # net.inet6.ip6.hlim
    int icmp6_errppslimit       # ICMPv6 errors per second, 0 = unlimited
    double icmp6_tokens
    int arp_max_age             # seconds
    int arp_maxhold
    int arp_max_tries
    int arp_max_per_if          # entries one interface may hold
    int arp_max_incomplete      # of them INCOMPLETE (ARP, and ND's on its own count)
    int arp_basereachable       # ms: Linux's base_reachable_time_ms for ARP
    int arp_delay               # s: DELAY before a STALE neighbour in use is probed
    int arp_umaxtries           # unicast requests in PROBE (Linux's ucast_probes)
    int arp_request_ppslimit    # broadcast requests per second per interface, 0 = no limit
    int nd6_ns_ppslimit         # multicast solicitations per second per interface, 0 = no limit
    int nd6_basereachable       # ms: BaseReachableTime
    int nd6_delay               # s: DELAY_FIRST_PROBE_TIME
    int nd6_umaxtries           # MAX_UNICAST_SOLICIT
    int nd6_mmaxtries           # MAX_MULTICAST_SOLICIT
    int nd6_gctimer             # s: a STALE entry unused that long is freed
    # loop
    int epfd
    int wakefd
    volatile int stop
    int64_t now_ns
    int64_t next_timer_ns
    int64_t last_reclaim_ns
    volatile int64_t last_progress_ns
    uint64_t loops
    int tx_batching             # in the forwarding loop: packet sockets queue their output
    int ntxq_dirty              # ports with frames queued (dp_tx_flush_all sends them)
    int txq_dirty[DP_MAX_IFS]
    # packet trace (net/dp_trace.pxi): all under lock, as every field here
    int tr_armed                # packets still to select; 0: off (the one test per frame)
    int tr_ifindex              # select frames of this port only; -1: any
    uint32_t tr_next_id         # the last trace id given (ids count up from 1)
    uint32_t tr_first_id        # the first id of the current trace
    dp_trace_rec *tr_ring       # DP_TRACE_MAX records; NULL until the first trace
    const void *tr_filter       # classic BPF (forwarder/bpf.py): frames it rejects are not traced
    uint32_t tr_filter_len      # its instructions; 0: no filter
    uint64_t tr_filtered        # frames of the port(s) the filter rejected
    # capture (net/dp_capture.pxi): the ring is lock-free between this
    # thread and the capture's reader; the rest is set under lock
    uint8_t *cap_ring           # DP_CAP_RING bytes; NULL: no capture
    uint64_t cap_head           # written by the forwarding thread only
    uint64_t cap_tail           # written by the reader only
    uint8_t *cap_buf            # cap_snaplen bytes: the frame made contiguous
    uint32_t cap_snaplen
    int cap_drops               # capture dropped packets (with their reasons)
    const void *cap_filter      # classic BPF; NULL: everything
    uint32_t cap_filter_len
    uint64_t cap_captured       # records written
    uint64_t cap_lost           # records that did not fit: the reader was behind
    uint64_t cap_filtered       # packets the filter rejected
