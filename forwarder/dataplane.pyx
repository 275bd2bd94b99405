# cython: language_level=3
"""The forwarding path: an RFC 1812 IPv4 router on mbuf chains.

Every frame is read from a TAP straight into cluster memory and runs to
completion through a chain of small stages; each failure leg ends in a
counted drop (dp_drop_m, reasons in dp_drop.h) or an ICMP error:

  dp_rx_burst        read() up to DP_BURST frames into Packet-zone mbufs    net/dp_loop.pxi
   -> tap_input      virtio-net header -> packet header (super-frames       net/if_tap.pxi
                     of 64 KB read into 16k jumbo clusters)
   -> ether_input    classify: ARP / IPv4 / other; our MAC or broadcast    net/if_ethersubr.pxi
      -> arp_input   answer on-link requests for our addresses, learn,     netinet/if_ether.pxi
                     flush holds
      -> ip6_input   IPv6 header checks, martians; for us: ND and echo    netinet6/ip6_input.pxi
         -> icmp6_input -> nd6_ns_input / nd6_na_input / echo reply   netinet6/icmp6.pxi, nd6.pxi
         -> ip6_forward  route -> hop limit -> scope -> MTU (packet     netinet6/ip6_forward.pxi
                         too big) -> hop limit decrement -> ip6_output_if -> nd6_resolve
      -> ip_input    header checks (RFC 1812 5.2.2), trim, martians        netinet/ip_input.pxi
         -> ip_offload_input  offload record checked against the packet  netinet/ip_offload.pxi
         -> ip_local -> icmp_input   echo requests to our addresses        netinet/ip_icmp.pxi
         -> ip_forward         route lookup -> TTL expiry -> MTU/DF        netinet/ip_input.pxi
                               (per segment for super-frames) -> TTL decrement
            -> ip_output_if    what the egress cannot do: segment         netinet/ip_offload.pxi
                               (ip_gso_output), fragment, checksum
            -> ip_fragment     payload shared with the original clusters   netinet/ip_output.pxi
            -> ether_resolve   ARP: neighbour's MAC, or hold and ask       netinet/if_ether.pxi
               -> ether_output prepend the Ethernet header, writev()       net/if_ethersubr.pxi
                               (behind a virtio-net header: dp_transmit)
  icmp_error         quote <= 576 bytes, rate-limited, never for errors,   netinet/ip_icmp.pxi
                     broadcasts, martians or non-initial fragments
  ip_output          the router's own packets: route, fragment, resolve    netinet/ip_output.pxi
  dp_timers          ARP retries (1/s), give-up after max_tries with       netinet/if_ether.pxi
                     ICMP host unreachable, the ARP table's states
                     (REACHABLE, STALE, DELAY, PROBE: unicast probes);
                     ICMP token refill; the IPv6 neighbour cache's         netinet6/nd6.pxi
                     states (RFC 4861 NUD)

Where is TTL handled?  ip_forward: expiry check before anything is changed,
decrement (RFC 1624 incremental checksum) after the MTU check, once.

One C translation unit: the stages live in .pxi files by protocol (FreeBSD's
split of if_ethersubr.c, if_ether.c, ip_input.c, ip_output.c, ip_icmp.c),
included here, so a call from one stage to the next is a direct call the
compiler may inline, never a call through a table.  IPv6 goes in netinet6/
beside netinet/.  Header fields are used by name through the packed structs
of inet.pxd (FreeBSD's `struct ip *`); system calls come from
allocator_pyx/includes.pxd.
"""

from libc.errno cimport (EAGAIN, EBADF, EBADFD, EINTR, EIO, EMSGSIZE, ENETDOWN, ENOBUFS, ENODEV,
                         ENXIO, errno)
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset, strncpy
from posix.uio cimport iovec, readv
from posix.unistd cimport close, read, usleep, write

from allocator_pyx.includes cimport (CLONE_FILES, EFD_CLOEXEC, EFD_NONBLOCK, EPOLL_CLOEXEC,
                                     EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLLIN, epoll_create1,
                                     epoll_ctl, epoll_event, epoll_wait, eventfd, now_ns,
                                     pthread_mutex_destroy, pthread_mutex_init,
                                     pthread_mutex_lock, pthread_mutex_unlock, set_errno,
                                     unlikely, unshare)
from allocator_pyx.mbuf cimport (CSUM_DELAY_DATA, CSUM_DELAY_DATA_IPV6, CSUM_DEV_GSO,
                                 CSUM_DEV_PARTIAL, CSUM_IP6_TCP, CSUM_IP6_TSO, CSUM_IP6_UDP,
                                 CSUM_IP6_USO, CSUM_IP_TCP, CSUM_IP_TSO, CSUM_IP_UDP, CSUM_IP_USO,
                                 CSUM_L4_CALC, CSUM_L4_VALID, CSUM_SEG, MHLEN, MJUM16BYTES,
                                 MT_DATA, M_PKTHDR, M_TRAILINGSPACE, m_adj, m_copyback,
                                 m_copydata, m_copym, m_discard_fd, m_freem, m_getcl, m_gethdr,
                                 m_getjcl, M_PREPEND, m_read_fd, m_to_iovec, m_writev_fd, mbuf,
                                 mbufq, mbufq_dequeue, mbufq_drain, mbufq_enqueue, mbufq_full,
                                 mbufq_init, mbufq_len)
from allocator_pyx.uma cimport M_NOWAIT, uma_thread_flush, uma_thread_trim
from forwarder.inet cimport (ARP_HDR_LEN, ARPHRD_ETHER, ARPOP_REPLY, ARPOP_REQUEST,
                             ETHER_ADDR_LEN, ETHER_HDR_LEN, ETHERTYPE_ARP, ETHERTYPE_IP,
                             ETHERTYPE_IPV6,
                             ICMP_ECHO, ICMP_ECHOREPLY, ICMP_ERR_MAXLEN, ICMP_HDR_LEN,
                             ICMP_TIMXCEED, ICMP_TIMXCEED_INTRANS, ICMP_UNREACH,
                             ICMP_UNREACH_FILTER_PROHIB, ICMP_UNREACH_HOST,
                             ICMP_UNREACH_NEEDFRAG, ICMP_UNREACH_NET, IP_ADDR_LEN, IP_DF,
                             IP_HDR_LEN, IP_MAX_HDR_LEN, IP_MAXPACKET, IP_MF, IP_OFFMASK,
                             IPOPT_COPIED, IPOPT_EOL, IPOPT_NOP, IPPROTO_ICMP, IPPROTO_SCTP,
                             IPPROTO_TCP, IPPROTO_UDP, IPTOS_PREC_INTERNETCONTROL, IPVERSION,
                             TCP_HDR_LEN, TCP_OFF_SUM, TH_CWR, TH_FIN, TH_PUSH, UDP_HDR_LEN,
                             UDP_OFF_SUM, VIRTIO_NET_HDR_F_DATA_VALID,
                             VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
                             VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
                             VIRTIO_NET_HDR_GSO_TCPV6,
                             VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_LEN, ether_arp,
                             ether_header, htonl, htons, icmp_err_hdr, icmp_hdr, icmp_is_error,
                             in_cksum, in_cksum_add, in_cksum_finish, in_lbcast, in_martian_dst,
                             in_martian_src, in_multicast, ip_dec_ttl, ip_hdr, ip_hl,
                             ip_set_cksum, ip_ttl_expired, ip_v, ntohl, ntohs, st16, st32, tcp_hdr,
                             th_hlen, udp_hdr, virtio_net_hdr)
from forwarder.inet6 cimport (ND_ROUTER_ADVERT, ND_ROUTER_SOLICIT,
                              ICMP6_DST_UNREACH, ICMP6_DST_UNREACH_ADMIN,
                              ICMP6_DST_UNREACH_BEYONDSCOPE, ICMP6_DST_UNREACH_NOROUTE,
                              ICMP6_DST_UNREACH_ADDR, ICMP6_DST_UNREACH_NOPORT, ICMP6_ERR_MAXLEN,
                              ICMP6_PACKET_TOO_BIG,
                              ICMP6_PARAM_PROB, ICMP6_PARAMPROB_NEXTHEADER, IP6_OFF_NXT,
                              IPPROTO_HOPOPTS, IPPROTO_NONE,
                              ICMP6_TIME_EXCEED_TRANSIT, ICMP6_TIME_EXCEEDED,
                              ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, ICMP6_HDR_LEN,
                              IP6_HDR_LEN, IP6_HLIM_ND, IP6_VERSION, IPPROTO_ICMPV6,
                              ND_NA_FLAG_OVERRIDE, ND_NA_FLAG_ROUTER, ND_NA_FLAG_SOLICITED,
                              ND_NA_LEN, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT, ND_NS_LEN,
                              ND_OPT_LLADDR_LEN, ND_OPT_SOURCE_LINKADDR,
                              ND_OPT_TARGET_LINKADDR, ether_mcast6, icmp6_hdr, in6_addr,
                              in6_is_linklocal, in6_is_loopback, in6_is_multicast,
                              in6_is_solicited_node, in6_is_unspecified, in6_is_v4mapped,
                              in6_prefix_match, in6_pseudo, in6_solicited_node, ip6_hdr, ip6_v,
                              nd_neighbor_solicit)
from forwarder.bpf cimport DP_BPF_MAXINSNS, dp_bpf_insn, dp_bpf_run
from forwarder.route cimport (NH_BLACKHOLE, NH_FORWARD, NH_LOCAL, NH_MULTIPATH, NH_PROHIBIT,
                              NH_UNREACHABLE, RouteTable, rt_entry_plen, rt_hash_mix,
                              rt_lookup_entry, rt_lookup_nh, rt_lookup_route, rt_nexthop,
                              rt_nh_select)
from forwarder.route6 cimport (Route6Table, rt6_entry_plen, rt6_lookup_entry, rt6_lookup_nh,
                               rt6_lookup_route, rt6_nexthop, rt6_nh_select)

cdef uint8_t ETHER_BCAST[6]
memset(ETHER_BCAST, 0xff, 6)

include "net/dp_trace.pxi"
include "net/dp_capture.pxi"
include "net/dp_subr.pxi"
include "net/if_tap.pxi"
include "net/if_packet.pxi"
include "netinet/in.pxi"
include "netinet/in_cksum.pxi"
include "net/if_ethersubr.pxi"
include "netinet/if_ether.pxi"
include "netinet/ip_input.pxi"
include "netinet/ip_offload.pxi"
include "netinet/ip_output.pxi"
include "netinet/ip_icmp.pxi"
include "netinet6/in6.pxi"
include "netinet6/nd6.pxi"
include "netinet6/ip6_input.pxi"
include "netinet6/icmp6.pxi"
include "netinet6/ip6_forward.pxi"
include "netinet6/nd6_ra.pxi"
include "net/dp_loop.pxi"


# =============================================================================
# Python side: the control plane's handle
# =============================================================================

import os


def _ip2int(s) -> int:
    import ipaddress
    return int(ipaddress.IPv4Address(s))


def _ip6bytes(s) -> bytes:
    import ipaddress
    return ipaddress.IPv6Address(s).packed


def _ip6str(b) -> str:
    import ipaddress
    return str(ipaddress.IPv6Address(bytes(b)))


def _int2ip(v) -> str:
    import ipaddress
    return str(ipaddress.IPv4Address(v))


# Limits the C state fixes; the tunable registry and the config take their
# ranges from these.
MAX_INTERFACES = DP_MAX_IFS // 2          # each port may have a mirror (forwarder/cplane.py)
MAX_ADDRESSES = DP_MAX_ADDRS
MTU_MIN = DP_MTU_MIN
MTU_MAX = DP_MTU_MAX
MAX_STALL = DP_MAX_STALL
ARP_MAX_ENTRIES = DP_ARP_MAX
RX_SPARES = DP_RX_SPARES      # 16k clusters each TAP with TSO/USO keeps for super-frames

# The neighbour cache's states by value (dataplane.pxd's ND6_*, and the
# ARP table's ARP_*, which have the same values), as nd6_entries and
# arp_entries name them.
ND6_STATES = ("free", "incomplete", "reachable", "stale", "delay", "probe")
assert (ND6_INCOMPLETE, ND6_REACHABLE, ND6_STALE, ND6_DELAY, ND6_PROBE) == (1, 2, 3, 4, 5)
assert (ARP_INCOMPLETE, ARP_REACHABLE, ARP_STALE, ARP_DELAY, ARP_PROBE) == (1, 2, 3, 4, 5)

# Drop reasons, name -> description, in counter order (from dp_drop.h).
DROP_REASONS = {dp_drop_symbol[i].decode().lower(): dp_drop_description[i].decode()
                for i in range(DROP_MAX)}

# The packet trace's points, (stage, format) by value, and its ends by value
# (from dp_trace.h; forwarder/trace.py renders them).
TRACE_POINTS = tuple((dp_trace_stage[i].decode(), dp_trace_format[i].decode())
                     for i in range(TR_MAX))
TRACE_ENDS = tuple(dp_trace_end_name[i].decode() for i in range(TR_END_MAX))
TRACE_MAX = DP_TRACE_MAX
CAPTURE_SNAPLEN = DP_CAP_SNAPLEN
CAPTURE_IN, CAPTURE_OUT, CAPTURE_DROP = CAP_IN, CAP_OUT, CAP_DROP
CAPTURE_HEADER = sizeof(dp_cap_hdr)     # struct dp_cap_hdr, native order (forwarder/capture.py)


cdef void *bpf_copy(bytes program, uint32_t *n) except? NULL:
    """The dataplane's own copy of a classic BPF program (packed struct
    bpf_insn, checked by forwarder.bpf.validate), malloc'd and so aligned;
    NULL with *n = 0 for no program."""
    cdef void *p
    n[0] = 0
    if not program:
        return NULL
    if len(program) % 8 or not 0 < len(program) // 8 <= DP_BPF_MAXINSNS:
        raise ValueError(f"a BPF program is 1..{DP_BPF_MAXINSNS} instructions of 8 bytes")
    p = malloc(len(program))
    if p == NULL:
        raise MemoryError()
    memcpy(p, <const char *>program, len(program))
    n[0] = len(program) // 8
    return p


def _check_mtu(int mtu):
    if not DP_MTU_MIN <= mtu <= DP_MTU_MAX:
        raise ValueError(f"mtu {mtu} out of range ({DP_MTU_MIN}..{DP_MTU_MAX})")


cdef class Dataplane:
    """The forwarding engine of one router.  run() blocks (call it from a
    thread of its own); every other method may be called meanwhile."""
    cdef dp_state *dp
    cdef RouteTable routes
    cdef Route6Table routes6
    cdef bint running
    cdef volatile int stalling       # debug: stall() holds dp.lock while set

    def __cinit__(self, RouteTable routes not None, Route6Table routes6=None):
        cdef epoll_event ev
        self.dp = <dp_state *>calloc(1, sizeof(dp_state))
        if self.dp == NULL:
            raise MemoryError()
        self.routes = routes
        self.dp.rt = routes.t
        self.routes6 = routes6          # kept alive as long as the dataplane reads it
        self.dp.rt6 = routes6.t if routes6 is not None else NULL
        pthread_mutex_init(&self.dp.lock, NULL)
        self.dp.flow_seed = int.from_bytes(os.urandom(4), "little")
        from forwarder import sysctl      # (sysctl imports this module's limits)
        for name in sysctl.DATAPLANE_TUNABLES:
            self.set(name, sysctl.REGISTRY[name].default_value())
        self.dp.epfd = epoll_create1(EPOLL_CLOEXEC)
        self.dp.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.dp.epfd < 0 or self.dp.wakefd < 0:
            raise OSError(errno, "epoll/eventfd")
        ev.events = EPOLLIN
        ev.data.u32 = DP_WAKE
        epoll_ctl(self.dp.epfd, EPOLL_CTL_ADD, self.dp.wakefd, &ev)

    def __dealloc__(self):
        cdef int i
        if self.dp != NULL:
            if not self.running:
                arp_clear(self.dp)
                nd6_clear(self.dp)
                for i in range(self.dp.nifs):
                    tap_free_spares(&self.dp.ifs[i])
                close(self.dp.epfd)
                close(self.dp.wakefd)
                pthread_mutex_destroy(&self.dp.lock)
                free(self.dp.tr_ring)
                free(<void *>self.dp.tr_filter)
                free(self.dp.cap_ring)
                free(self.dp.cap_buf)
                free(<void *>self.dp.cap_filter)
                free(self.dp)
            self.dp = NULL

    def add_interface(self, int fd, str name, bytes mac, int mtu, addrs, *, addrs6=(), bint ra=False,
                      bint vnet_hdr=False, unsigned int offloads=0,
                      unsigned int refused=0, int mirror_of=-1, long hwassist=-1,
                      size_t ring=0, unsigned int ring_frames=0,
                      unsigned int ring_frame_size=0, bint tx_batch=True) -> int:
        """Attach an open, non-blocking TAP fd (or a packet socket with
        PACKET_VNET_HDR, read and written alike; ring: the address of its
        mapped TPACKET_V2 receive ring, ring_frames slots of ring_frame_size
        bytes, read as net/if_packet.pxi says; tx_batch: its output sent in
        batches, one sendmmsg() a burst, False: a writev() per frame).  addrs: [(address, prefixlen)]
        as strings/ints; addrs6 the same for IPv6 (the link-local address
        is derived from mac).  vnet_hdr: the TAP was opened with IFF_VNET_HDR;
        offloads: the TUN_F_* bits TUNSETOFFLOAD accepted (refused: those it
        did not, for the stats); hwassist: the CSUM_* bits it takes on output,
        -1 for those the offloads imply.  mirror_of: this TAP is the mirror of port
        mirror_of in the control plane's namespace (forwarder/cplane.py):
        what is read from it goes out of that port, and that port's traffic
        for the router's daemons is written to it.  Returns the interface
        index used by routes."""
        cdef dp_ifnet *ifp
        cdef epoll_event ev
        cdef int idx
        if len(mac) != 6:
            raise ValueError("mac must be 6 bytes")
        _check_mtu(mtu)
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            idx = self.dp.nifs
            if idx >= DP_MAX_IFS:
                raise ValueError(f"at most {DP_MAX_IFS} interfaces")
            if mirror_of >= idx or (mirror_of >= 0 and self.dp.ifs[mirror_of].mirror >= 0):
                raise ValueError(f"mirror_of {mirror_of}: not a port without a mirror")
            ifp = &self.dp.ifs[idx]
            memset(ifp, 0, sizeof(dp_ifnet))
            ifp.fd = fd
            ifp.index = idx
            ifp.mirror = -1
            ifp.mirror_of = mirror_of
            strncpy(ifp.name, name.encode()[:15], 15)
            memcpy(ifp.mac, <const char *>mac, 6)
            ifp.vnet_hdrlen = VIRTIO_NET_HDR_LEN if vnet_hdr else 0
            if vnet_hdr:
                ifp.offloads = offloads
                ifp.offloads_refused = refused
                ifp.hwassist = tun_hwassist(offloads) if hwassist < 0 else <uint32_t>hwassist
                if offloads & (TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6):
                    ifp.rx_spares = DP_RX_SPARES
            ifp.ring = <char *>ring
            ifp.ring_frames = ring_frames
            ifp.ring_frame_size = ring_frame_size
            ifp.txb = 1 if ring and tx_batch else 0
            ifp_set_mtu(ifp, mtu)
            self._set_addrs(ifp, addrs)
            self._set_addrs6(ifp, addrs6)
            in6_eui64_linklocal(ifp.lladdr6.s6, ifp.mac)
            ifp_set_ra(ifp, ra)
            ev.events = EPOLLIN
            ev.data.u32 = <uint32_t>idx
            if epoll_ctl(self.dp.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
                raise OSError(errno, f"epoll_ctl({name})")
            tap_fill_spares(ifp)
            if mirror_of >= 0:
                self.dp.ifs[mirror_of].mirror = idx
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

    cdef _set_addrs6(self, dp_ifnet *ifp, addrs6):
        cdef int i = 0
        cdef bytes packed
        if len(addrs6) > DP_MAX_ADDRS:
            raise ValueError(f"at most {DP_MAX_ADDRS} IPv6 addresses per interface")
        for a, plen in addrs6:
            if not 0 <= plen <= 128:
                raise ValueError(f"IPv6 prefix length {plen} out of range (0..128)")
            packed = _ip6bytes(a)
            memcpy(ifp.addr6[i].s6, <const char *>packed, 16)
            ifp.plen6[i] = plen
            i += 1
        ifp.naddrs6 = i

    def set_addresses6(self, int index, addrs6):
        if not 0 <= index < self.dp.nifs:
            raise IndexError(index)
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            self._set_addrs6(&self.dp.ifs[index], addrs6)
        finally:
            pthread_mutex_unlock(&self.dp.lock)

    def set_ra(self, int index, bint on):
        """Start or stop Router Advertisements on an interface (stopping
        sends a last one with router lifetime 0)."""
        if not 0 <= index < self.dp.nifs:
            raise IndexError(index)
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
            if self.dp.ifs[index].ra and not on:
                self.dp.now_ns = now_ns()
                nd6_ra_output(self.dp, &self.dp.ifs[index], 0)
            ifp_set_ra(&self.dp.ifs[index], on)
            pthread_mutex_unlock(&self.dp.lock)

    def ra_final(self) -> int:
        """A last advertisement, router lifetime 0, on every interface that
        advertises (at shutdown: the hosts drop their default route through
        us at once instead of when it times out).  Returns how many."""
        cdef int i, n = 0
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
            self.dp.now_ns = now_ns()
            for i in range(self.dp.nifs):
                if self.dp.ifs[i].ra and not self.dp.ifs[i].lost_errno:
                    nd6_ra_output(self.dp, &self.dp.ifs[i], 0)
                    self.dp.ifs[i].ra = 0
                    n += 1
            pthread_mutex_unlock(&self.dp.lock)
        return n

    def set_addresses(self, int index, addrs):
        if not 0 <= index < self.dp.nifs:
            raise IndexError(index)
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            self._set_addrs(&self.dp.ifs[index], addrs)
        finally:
            pthread_mutex_unlock(&self.dp.lock)

    def set_link(self, int index, bint up, bytes mac=None):
        """An attached port's link (forwarder/attach.py): down while the
        interface it joins is missing (what would go out is dropped as
        interface_down), up again once joined; mac, when given, becomes the
        port's MAC and its link-local address follows."""
        if not 0 <= index < self.dp.nifs:
            raise IndexError(index)
        if mac is not None and len(mac) != 6:
            raise ValueError("mac must be 6 bytes")
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        if mac is not None:
            memcpy(self.dp.ifs[index].mac, <const char *>mac, 6)
            in6_eui64_linklocal(self.dp.ifs[index].lladdr6.s6, self.dp.ifs[index].mac)
        self.dp.ifs[index].link_down = not up
        pthread_mutex_unlock(&self.dp.lock)

    def set_mtu(self, int index, int mtu):
        if not 0 <= index < self.dp.nifs:
            raise IndexError(index)
        _check_mtu(mtu)
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        ifp_set_mtu(&self.dp.ifs[index], mtu)
        pthread_mutex_unlock(&self.dp.lock)

    def set(self, str name, int value):
        """Apply a tunable whose registry entry (forwarder/sysctl.py) says
        applies="dataplane"; the registry has checked the range."""
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            if name == "net.inet.ip.forwarding":
                self.dp.forwarding = value
            elif name == "net.inet.ip.ttl":
                self.dp.ttl = value
            elif name == "net.inet.icmp.icmplim":
                self.dp.icmplim = value
                self.dp.icmp_tokens = value
            elif name == "net.inet6.ip6.forwarding":
                self.dp.forwarding6 = value
            elif name == "net.inet6.ip6.hlim":
                self.dp.hlim = value
            elif name == "net.inet6.icmp6.errppslimit":
                self.dp.icmp6_errppslimit = value
                self.dp.icmp6_tokens = value
            elif name == "net.link.ether.inet.max_age":
                self.dp.arp_max_age = value
            elif name == "net.link.ether.inet.maxhold":
                self.dp.arp_maxhold = value
            elif name == "net.link.ether.inet.maxtries":
                self.dp.arp_max_tries = value
            elif name == "net.link.ether.inet.max_per_if":
                self.dp.arp_max_per_if = value
            elif name == "net.link.ether.inet.max_incomplete":
                self.dp.arp_max_incomplete = value
            elif name == "net.link.ether.inet.basereachable":
                self.dp.arp_basereachable = value
                if self.dp.ra_rand == 0:
                    self.dp.ra_rand = <uint64_t>now_ns() | 1
                arp_new_reachable_time(self.dp)
            elif name == "net.link.ether.inet.delay":
                self.dp.arp_delay = value
            elif name == "net.link.ether.inet.umaxtries":
                self.dp.arp_umaxtries = value
            elif name == "net.link.ether.inet.request_ppslimit":
                self.dp.arp_request_ppslimit = value
            elif name == "net.inet6.icmp6.nd6_ns_ppslimit":
                self.dp.nd6_ns_ppslimit = value
            elif name == "net.inet6.icmp6.nd6_basereachable":
                self.dp.nd6_basereachable = value
                if self.dp.ra_rand == 0:
                    self.dp.ra_rand = <uint64_t>now_ns() | 1
                nd6_new_reachable_time(self.dp)     # RFC 4861 6.3.2: a new one at once
            elif name == "net.inet6.icmp6.nd6_delay":
                self.dp.nd6_delay = value
            elif name == "net.inet6.icmp6.nd6_umaxtries":
                self.dp.nd6_umaxtries = value
            elif name == "net.inet6.icmp6.nd6_mmaxtries":
                self.dp.nd6_mmaxtries = value
            elif name == "net.inet6.icmp6.nd6_gctimer":
                self.dp.nd6_gctimer = value
            else:
                raise KeyError(f"{name}: not a dataplane tunable")
        finally:
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
        """Drop every ARP entry and held packet, and the jumbo clusters kept
        for super-frames (used at shutdown)."""
        cdef int i
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
            arp_clear(self.dp)
            nd6_clear(self.dp)
            for i in range(self.dp.nifs):
                tap_free_spares(&self.dp.ifs[i])
            dp_tx_flush_all(self.dp)        # empty whenever the loop let go of the lock
            pthread_mutex_unlock(&self.dp.lock)

    def progress_age(self) -> float:
        """Seconds since the loop last went round (inf before it started)."""
        if self.dp.last_progress_ns == 0:
            return float("inf")
        return (now_ns() - self.dp.last_progress_ns) / 1e9

    def stall(self, double seconds):
        """Debug facility (forwarder debug stall): hold the dataplane lock for
        ``seconds`` so the forwarding loop makes no progress -- frames queue
        in the TAPs, progress_age() grows, health checks fail -- until the
        time is up or resume() is called.  Blocks the caller (run it in a
        thread of its own); every other method taking the lock waits too."""
        cdef int64_t end
        if not 0 < seconds <= DP_MAX_STALL:
            raise ValueError(f"stall of {seconds} s: expected 0 < seconds <= {DP_MAX_STALL}")
        if self.stalling:
            raise RuntimeError("the dataplane is already stalled")
        self.stalling = 1
        end = now_ns() + <int64_t>(seconds * 1e9)
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
            while self.stalling and now_ns() < end:
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

    # --- packet trace (net/dp_trace.pxi) ---------------------------------------

    def trace_start(self, int count, int ifindex=-1, bytes program=None):
        """Trace the next count frames read (of port ifindex, -1: any) that
        the classic BPF program (packed struct bpf_insn, checked by
        forwarder.bpf.validate) accepts; the previous trace is cleared."""
        cdef void *prog = NULL
        cdef const void *old
        cdef uint32_t n = 0
        cdef int i
        if not 1 <= count <= DP_TRACE_MAX:
            raise ValueError(f"count {count} out of range (1..{DP_TRACE_MAX})")
        if not -1 <= ifindex < self.dp.nifs:
            raise ValueError(f"no interface {ifindex}")
        if self.dp.tr_ring == NULL:
            self.dp.tr_ring = <dp_trace_rec *>calloc(DP_TRACE_MAX, sizeof(dp_trace_rec))
            if self.dp.tr_ring == NULL:
                raise MemoryError()
        prog = bpf_copy(program, &n)
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
            memset(self.dp.tr_ring, 0, DP_TRACE_MAX * sizeof(dp_trace_rec))
            old = self.dp.tr_filter
            self.dp.tr_filter = prog
            self.dp.tr_filter_len = n
            self.dp.tr_ifindex = ifindex
            self.dp.tr_first_id = self.dp.tr_next_id + 1
            self.dp.tr_filtered = 0
            self.dp.tr_armed = count
            for i in range(self.dp.nifs):
                if ifindex < 0 or i == ifindex:
                    self.dp.ifs[i].observe |= OBS_TRACE
                else:
                    self.dp.ifs[i].observe &= ~OBS_TRACE
            pthread_mutex_unlock(&self.dp.lock)
        free(<void *>old)           # the dataplane reads it only under the lock

    # --- capture (net/dp_capture.pxi) --------------------------------------------

    def capture_start(self, int ifindex, bint drops=False, bint rx=True, bint tx=True,
                      int snaplen=DP_CAP_SNAPLEN, bytes program=None):
        """Capture what port ifindex receives (rx) and sends (tx), or with
        drops every dropped packet; one capture at a time.  Read the
        records with capture_read, end with capture_stop."""
        cdef uint8_t *ring
        cdef uint8_t *buf
        cdef void *prog = NULL
        cdef uint32_t n = 0
        cdef int bits = (OBS_CAP_IN if rx else 0) | (OBS_CAP_OUT if tx else 0)
        if self.dp.cap_ring != NULL:
            raise RuntimeError("a capture is running already (one at a time)")
        if not drops and not 0 <= ifindex < self.dp.nifs:
            raise ValueError(f"no interface {ifindex}")
        if not drops and not bits:
            raise ValueError("capture neither received nor sent frames")
        if not 64 <= snaplen <= DP_CAP_SNAPLEN:
            raise ValueError(f"snap length {snaplen} out of range (64..{DP_CAP_SNAPLEN})")
        prog = bpf_copy(program, &n)
        ring = <uint8_t *>malloc(DP_CAP_RING)
        buf = <uint8_t *>malloc(snaplen)
        if ring == NULL or buf == NULL:
            free(ring)
            free(buf)
            free(prog)
            raise MemoryError()
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
            self.dp.cap_ring = ring
            self.dp.cap_buf = buf
            self.dp.cap_head = 0
            self.dp.cap_tail = 0
            self.dp.cap_snaplen = snaplen
            self.dp.cap_filter = prog
            self.dp.cap_filter_len = n
            self.dp.cap_captured = 0
            self.dp.cap_lost = 0
            self.dp.cap_filtered = 0
            self.dp.cap_drops = drops
            if not drops:
                self.dp.ifs[ifindex].observe |= bits
            pthread_mutex_unlock(&self.dp.lock)

    def capture_read(self) -> bytes:
        """The records written since the last read (whole records: the
        producer publishes a record only once it is complete)."""
        cdef uint64_t head, tail
        cdef uint32_t off, first, n
        cdef bytes out
        cdef char *p
        if self.dp.cap_ring == NULL:
            return b""
        head = cap_load_acq(&self.dp.cap_head)
        tail = self.dp.cap_tail
        n = <uint32_t>(head - tail)
        if n == 0:
            return b""
        out = PyBytes_FromStringAndSize(NULL, n)
        p = PyBytes_AS_STRING(out)
        off = <uint32_t>(tail & (DP_CAP_RING - 1))
        first = DP_CAP_RING - off
        with nogil:
            if first >= n:
                memcpy(p, self.dp.cap_ring + off, n)
            else:
                memcpy(p, self.dp.cap_ring + off, first)
                memcpy(p + first, self.dp.cap_ring, n - first)
            cap_store_rel(&self.dp.cap_tail, head)
        return out

    def capture_stop(self) -> dict:
        """End the capture (what was not read is lost with the ring):
        {captured, lost, filtered} as the dataplane counted them."""
        cdef uint8_t *ring
        cdef uint8_t *buf
        cdef const void *prog
        cdef int i
        if self.dp.cap_ring == NULL:
            return {"captured": 0, "lost": 0, "filtered": 0}
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
            for i in range(self.dp.nifs):
                self.dp.ifs[i].observe &= ~(OBS_CAP_IN | OBS_CAP_OUT)
            self.dp.cap_drops = 0
            ring = self.dp.cap_ring
            buf = self.dp.cap_buf
            prog = self.dp.cap_filter
            self.dp.cap_ring = NULL
            self.dp.cap_buf = NULL
            self.dp.cap_filter = NULL
            self.dp.cap_filter_len = 0
            pthread_mutex_unlock(&self.dp.lock)
        free(ring)                  # the forwarding thread writes it only under the lock
        free(buf)
        free(<void *>prog)
        return {"captured": self.dp.cap_captured, "lost": self.dp.cap_lost,
                "filtered": self.dp.cap_filtered}

    def ifnames(self) -> list:
        """Every interface's name (ports and mirrors), by index."""
        return [self.dp.ifs[i].name.decode() for i in range(self.dp.nifs)]

    def trace_stop(self) -> int:
        """Stop selecting frames (the records stay); returns how many of
        the count were still to take."""
        cdef int left
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
            left = self.dp.tr_armed
            self.dp.tr_armed = 0
            tr_unwatch(self.dp)
            pthread_mutex_unlock(&self.dp.lock)
        return left

    def trace_records(self) -> dict:
        """The current trace: {remaining, filtered, packets: [record, ...]}
        oldest first, each record's steps as tuples (point, x, dt_us, a, b,
        c, d, data) -- raw; forwarder/trace.py renders them."""
        cdef dp_trace_rec *copy
        cdef dp_trace_rec *r
        cdef dp_trace_step *s
        cdef int i, k, left
        cdef uint32_t first
        cdef uint64_t filtered
        if self.dp.tr_ring == NULL:
            return {"remaining": 0, "filtered": 0, "packets": []}
        copy = <dp_trace_rec *>malloc(DP_TRACE_MAX * sizeof(dp_trace_rec))
        if copy == NULL:
            raise MemoryError()
        try:
            with nogil:
                pthread_mutex_lock(&self.dp.lock)
                memcpy(copy, self.dp.tr_ring, DP_TRACE_MAX * sizeof(dp_trace_rec))
                left = self.dp.tr_armed
                first = self.dp.tr_first_id
                filtered = self.dp.tr_filtered
                pthread_mutex_unlock(&self.dp.lock)
            packets = []
            for i in range(DP_TRACE_MAX):
                r = &copy[i]
                if r.id == 0 or <uint32_t>(r.id - first) >= 0x80000000:
                    continue                    # unused, or of an earlier trace
                steps = []
                for k in range(r.nsteps):
                    s = &r.steps[k]
                    steps.append((s.point, s.x, s.dt_us, s.a, s.b, s.c, s.d,
                                  bytes(s.data[:32])))
                packets.append({
                    "id": r.id, "ifindex": r.ifindex, "time_ns": r.time_ns, "len": r.len,
                    "head": bytes(r.head[:r.caplen]), "lost_steps": r.lost_steps,
                    "end": TRACE_ENDS[r.end] if r.end < TR_END_MAX else "?",
                    "end_arg": r.end_arg, "steps": steps})
            packets.sort(key=lambda p: (p["id"] - first) & 0xffffffff)
            return {"remaining": left, "filtered": filtered, "packets": packets,
                    "ifnames": self.ifnames(), "now_ns": now_ns()}
        finally:
            free(copy)

    def stats(self) -> dict:
        cdef int i
        cdef dp_ifnet *ifp
        cdef dp_ifnet *m
        from forwarder.netns import tun_flag_names
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            ifs = []
            for i in range(self.dp.nifs):
                ifp = &self.dp.ifs[i]
                if ifp.mirror_of >= 0:
                    continue                    # a mirror: counted in its port's row
                m = &self.dp.ifs[ifp.mirror] if ifp.mirror >= 0 else NULL
                ifs.append({
                    "name": ifp.name.decode(), "index": i, "mtu": ifp.mtu,
                    "rx_packets": ifp.rx_packets, "rx_bytes": ifp.rx_bytes,
                    "rx_errors": ifp.rx_errors, "rx_nobuf": ifp.rx_nobuf,
                    "tx_packets": ifp.tx_packets, "tx_bytes": ifp.tx_bytes,
                    "tx_errors": ifp.tx_errors, "tx_batches": ifp.tx_batches,
                    "link": (f"lost ({os.strerror(ifp.lost_errno)})" if ifp.lost_errno
                             else "down" if ifp.link_down else "up"),
                    "mac": ":".join(f"{b:02x}" for b in ifp.mac[:6]),
                    "vnet_hdr": ifp.vnet_hdrlen != 0,
                    "offloads": tun_flag_names(ifp.offloads),
                    "offloads_refused": tun_flag_names(ifp.offloads_refused),
                    "rx_gso": ifp.rx_gso, "rx_gso_segments": ifp.rx_gso_segs,
                    "tx_gso": ifp.tx_gso, "tx_gso_segments": ifp.tx_gso_segs,
                    "gso_software": ifp.gso_sw, "csum_software": ifp.csum_sw,
                    "link_local": _ip6str(ifp.lladdr6.s6[:16]),
                    "ra": bool(ifp.ra), "ra_sent": ifp.ra_sent, "rs_received": ifp.rs_received,
                    "punted": m.tx_packets if m != NULL else 0,
                    "punt_errors": m.tx_errors if m != NULL else 0,
                    "injected": m.rx_packets if m != NULL else 0,
                })
            drops = {name: self.dp.drops[i] for i, name in enumerate(DROP_REASONS)}
            icmp = {"echo_replies": self.dp.icmp_out[ICMP_ECHOREPLY],
                    "unreachable": self.dp.icmp_out[ICMP_UNREACH],
                    "time_exceeded": self.dp.icmp_out[ICMP_TIMXCEED],
                    "errors_sent": self.dp.icmp_out[ICMP_UNREACH] + self.dp.icmp_out[ICMP_TIMXCEED],
                    "ratelimited": self.dp.icmp_ratelimited}
            return {
                "interfaces": ifs, "drops": drops, "icmp": icmp,
                "forwarded": self.dp.forwarded, "delivered_local": self.dp.delivered_local,
                "fragments_created": self.dp.frags_created,
                "nd6": {"received": self.dp.nd6_in, "solicitations_sent": self.dp.nd6_solicits,
                        "probes_sent": self.dp.nd6_probes,
                        "solicitations_ratelimited": self.dp.nd6_ratelimited,
                        "advertisements_sent": self.dp.nd6_adverts, "entries": self.dp.nnd6},
                "icmp6": {"echo_replies": self.dp.icmp6_echo_replies,
                          "unreachable": self.dp.icmp6_errors[ICMP6_DST_UNREACH],
                          "packet_too_big": self.dp.icmp6_errors[ICMP6_PACKET_TOO_BIG],
                          "time_exceeded": self.dp.icmp6_errors[ICMP6_TIME_EXCEEDED],
                          "parameter_problem": self.dp.icmp6_errors[ICMP6_PARAM_PROB],
                          "ratelimited": self.dp.icmp6_ratelimited},
                "arp": {"received": self.dp.arp_in,
                        "requests_sent": self.dp.arp_requests, "probes_sent": self.dp.arp_probes,
                        "requests_ratelimited": self.dp.arp_ratelimited,
                        "replies_sent": self.dp.arp_replies, "entries": self.dp.narp},
                "loops": self.dp.loops,
            }
        finally:
            pthread_mutex_unlock(&self.dp.lock)

    cdef dict _neighbour(self, str ip, int ifindex, str state, const uint8_t *mac,
                         int64_t expire_ns, int64_t now, int held):
        """One row of arp_entries / nd6_entries: an incomplete entry has no
        MAC and no expiry; the others expire_ns (their state's deadline)."""
        cdef bint resolved = state != "incomplete"
        return {"ip": ip, "interface": self.dp.ifs[ifindex].name.decode(),
                "mac": ":".join(f"{b:02x}" for b in mac[:6]) if resolved else None,
                "state": state,
                "expires_in": max(0.0, (expire_ns - now) / 1e9) if resolved else None,
                "held": held}

    def arp_entries(self) -> list:
        cdef int i
        cdef dp_arp *e
        out = []
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            now = self.dp.now_ns if self.dp.now_ns else now_ns()
            for i in range(DP_ARP_SIZE):
                e = &self.dp.arp[i]
                if e.state == ARP_FREE:
                    continue
                out.append(self._neighbour(_int2ip(e.ip), e.ifindex, ND6_STATES[e.state],
                                           e.mac, e.expire_ns, now, mbufq_len(&e.hold)))
        finally:
            pthread_mutex_unlock(&self.dp.lock)
        return sorted(out, key=lambda d: (d["interface"], _ip2int(d["ip"])))

    def nd6_entries(self) -> list:
        """The IPv6 neighbour cache, as arp_entries (`forwarder ndp -a`), in
        RFC 4861's states (ND6_STATES)."""
        cdef int i
        cdef dp_nd6 *e
        out = []
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            now = self.dp.now_ns if self.dp.now_ns else now_ns()
            for i in range(DP_ND6_SIZE):
                e = &self.dp.nd6[i]
                if e.state == ND6_FREE:
                    continue
                out.append(self._neighbour(_ip6str(e.ip.s6[:16]), e.ifindex, ND6_STATES[e.state],
                                           e.mac, e.expire_ns, now, mbufq_len(&e.hold)))
        finally:
            pthread_mutex_unlock(&self.dp.lock)
        return sorted(out, key=lambda d: (d["interface"], _ip6bytes(d["ip"])))

    def nd6_delete(self, ip, interface=None) -> int:
        """Forget the IPv6 neighbour ip (on one interface, or all), as
        arp_delete; the number removed."""
        cdef bytes a = _ip6bytes(ip)
        cdef int i, n = 0
        cdef dp_nd6 *e
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            for i in range(self.dp.nifs):
                if interface is not None and self.dp.ifs[i].name.decode() != interface:
                    continue
                e = nd6_lookup(self.dp, i, <const uint8_t *>a)
                if e == NULL:
                    continue
                mbufq_drain(&e.hold)
                nd6_remove(self.dp, e)
                n += 1
        finally:
            pthread_mutex_unlock(&self.dp.lock)
        return n

    def arp_delete(self, ip, interface=None) -> int:
        """Forget the entries for ip (on one interface, or all); the number
        removed.  Held packets are dropped."""
        cdef uint32_t a = _ip2int(ip)
        cdef int i, n = 0
        cdef dp_arp *e
        with nogil:
            pthread_mutex_lock(&self.dp.lock)
        try:
            for i in range(self.dp.nifs):
                if interface is not None and self.dp.ifs[i].name.decode() != interface:
                    continue
                e = arp_lookup(self.dp, i, a)
                if e == NULL:
                    continue
                mbufq_drain(&e.hold)
                arp_remove(self.dp, e)
                n += 1
        finally:
            pthread_mutex_unlock(&self.dp.lock)
        return n
