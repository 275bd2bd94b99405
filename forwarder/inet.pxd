# cython: language_level=3
#
# inet.pxd -- wire formats and checksum helpers for the nogil dataplane.
#
# Everything here is a constant, a struct declaration or a `cdef inline
# ... noexcept nogil` function, so a module that cimports it compiles the
# helpers in (no cross-module call) and may use them without the GIL.
#
# Byte order conventions
#   * Header fields are declared as they sit on the wire: uint16/uint32
#     fields of the packed structs hold NETWORK byte order; convert with
#     ntohs/ntohl.
#   * Checksums (in_cksum, in_cksum_update16, in_cksum_finish) are handled
#     as raw 16-bit words loaded from / stored to the packet in native order
#     (i.e. "network order as stored"): store the result as is.  The one's
#     complement sum is byte-order independent (RFC 1071 2(B)), so no swap
#     is ever needed.
#   * Address predicates (in_martian_src, ...) take HOST-order uint32
#     (ntohl(ip.ip_src)), like the route table.
#   * Header pointers need not be aligned: every multi-byte access in the
#     helpers goes through memcpy, which the compiler turns into one load.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t hostshort)
    uint16_t ntohs(uint16_t netshort)
    uint32_t htonl(uint32_t hostlong)
    uint32_t ntohl(uint32_t netlong)

# --- Ethernet ---------------------------------------------------------------
cdef enum:
    ETHER_ADDR_LEN = 6
    ETHER_TYPE_LEN = 2
    ETHER_HDR_LEN = 14
    ETHER_MIN_LEN = 64          # with FCS; 60 on a TAP (no FCS)
    ETHER_MIN_LEN_NOFCS = 60
    ETHERTYPE_IP = 0x0800
    ETHERTYPE_ARP = 0x0806
    ETHERTYPE_VLAN = 0x8100
    ETHERTYPE_IPV6 = 0x86DD

    # byte offsets in the Ethernet header
    ETHER_OFF_DHOST = 0
    ETHER_OFF_SHOST = 6
    ETHER_OFF_TYPE = 12

cdef packed struct ether_header:
    uint8_t ether_dhost[6]
    uint8_t ether_shost[6]
    uint16_t ether_type         # network order

# --- ARP (Ethernet / IPv4 only: RFC 826) --------------------------------------
cdef enum:
    ARPHRD_ETHER = 1
    ARPOP_REQUEST = 1
    ARPOP_REPLY = 2
    ARP_HDR_LEN = 28            # ether_arp, after the Ethernet header

    ARP_OFF_HRD = 0
    ARP_OFF_PRO = 2
    ARP_OFF_HLN = 4
    ARP_OFF_PLN = 5
    ARP_OFF_OP = 6
    ARP_OFF_SHA = 8
    ARP_OFF_SPA = 14
    ARP_OFF_THA = 18
    ARP_OFF_TPA = 24

cdef packed struct ether_arp:
    uint16_t ar_hrd             # ARPHRD_ETHER, network order
    uint16_t ar_pro             # ETHERTYPE_IP, network order
    uint8_t ar_hln              # 6
    uint8_t ar_pln              # 4
    uint16_t ar_op              # ARPOP_*, network order
    uint8_t arp_sha[6]
    uint32_t arp_spa            # network order (unaligned: packed)
    uint8_t arp_tha[6]
    uint32_t arp_tpa            # network order (unaligned: packed)

# --- IPv4 (RFC 791) -----------------------------------------------------------
cdef enum:
    IPVERSION = 4
    IP_HDR_LEN = 20             # without options
    IP_MAX_HDR_LEN = 60
    IP_MAXPACKET = 65535
    IP_MAXTTL = 255
    IP_DEFTTL = 64
    IPTTLDEC = 1

    IP_RF = 0x8000              # ip_off flags, host order after ntohs
    IP_DF = 0x4000
    IP_MF = 0x2000
    IP_OFFMASK = 0x1fff

    IP_ADDR_LEN = 4             # ar_pln of Ethernet/IPv4 ARP
    IPTOS_PREC_INTERNETCONTROL = 0xc0   # ip_tos of ICMP errors (RFC 1812 4.3.2.5)

    IPOPT_EOL = 0               # end of options
    IPOPT_NOP = 1               # no-operation (padding)
    IPOPT_COPIED = 0x80         # option type flag: copied into every fragment (RFC 791)

    IPPROTO_ICMP = 1
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IPPROTO_SCTP = 132

    # byte offsets in the IPv4 header
    IP_OFF_VHL = 0
    IP_OFF_TOS = 1
    IP_OFF_LEN = 2
    IP_OFF_ID = 4
    IP_OFF_OFF = 6
    IP_OFF_TTL = 8
    IP_OFF_P = 9
    IP_OFF_SUM = 10
    IP_OFF_SRC = 12
    IP_OFF_DST = 16

cdef packed struct ip_hdr:
    uint8_t ip_vhl              # version << 4 | header length in 32-bit words
    uint8_t ip_tos
    uint16_t ip_len             # network order
    uint16_t ip_id              # network order
    uint16_t ip_off             # network order: IP_DF | IP_MF | offset/8
    uint8_t ip_ttl
    uint8_t ip_p
    uint16_t ip_sum             # as stored (see in_cksum)
    uint32_t ip_src             # network order
    uint32_t ip_dst             # network order

# --- TCP (RFC 9293) and UDP (RFC 768): what segmentation rewrites ----------------
cdef enum:
    TCP_HDR_LEN = 20            # without options
    TCP_MAX_HDR_LEN = 60
    UDP_HDR_LEN = 8
    TCP_OFF_SUM = 16            # where the checksum sits in each header
    UDP_OFF_SUM = 6

    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_PUSH = 0x08
    TH_ACK = 0x10
    TH_URG = 0x20
    TH_ECE = 0x40
    TH_CWR = 0x80

cdef packed struct tcp_hdr:
    uint16_t th_sport           # network order
    uint16_t th_dport
    uint32_t th_seq
    uint32_t th_ack
    uint8_t th_off              # data offset << 4 (32-bit words) | reserved
    uint8_t th_flags            # TH_*
    uint16_t th_win
    uint16_t th_sum             # as stored (see in_cksum)
    uint16_t th_urp

cdef packed struct udp_hdr:
    uint16_t uh_sport           # network order
    uint16_t uh_dport
    uint16_t uh_ulen            # header + data
    uint16_t uh_sum             # as stored; 0 = none (IPv4 only)

cdef inline int th_hlen(const tcp_hdr *th) noexcept nogil:
    """TCP header length in bytes (data offset * 4)."""
    return (th.th_off >> 4) << 2

# --- virtio-net header (virtio 1.x 5.1.6; Linux <linux/virtio_net.h>) ---------
#
# What a TAP opened with IFF_VNET_HDR puts in front of every frame it hands
# us and expects in front of every frame we write.  Unlike the protocol
# headers its 16-bit fields are in the machine's own byte order (legacy
# virtio on a little-endian host; TUNSETVNETLE is never set).  csum_start
# counts from the start of the Ethernet frame.
cdef enum:
    VIRTIO_NET_HDR_LEN = 10
    VIRTIO_NET_HDR_F_NEEDS_CSUM = 1     # checksum from csum_start to the end, stored at
                                        # csum_start + csum_offset (which holds the pseudo-header sum)
    VIRTIO_NET_HDR_F_DATA_VALID = 2     # the sender verified the checksums
    VIRTIO_NET_HDR_GSO_NONE = 0
    VIRTIO_NET_HDR_GSO_TCPV4 = 1
    VIRTIO_NET_HDR_GSO_UDP = 3          # UFO, never asked for
    VIRTIO_NET_HDR_GSO_TCPV6 = 4
    VIRTIO_NET_HDR_GSO_UDP_L4 = 5       # USO (Linux 6.2; Debian 12's headers lack it)
    VIRTIO_NET_HDR_GSO_ECN = 0x80       # the super-frame carries CWR: only the first segment keeps it

cdef packed struct virtio_net_hdr:
    uint8_t flags               # VIRTIO_NET_HDR_F_*
    uint8_t gso_type            # VIRTIO_NET_HDR_GSO_*
    uint16_t hdr_len            # Ethernet + IP + L4 headers (a hint; recomputed on output)
    uint16_t gso_size           # payload bytes per segment (the MSS)
    uint16_t csum_start
    uint16_t csum_offset

# --- ICMP (RFC 792, RFC 1191) -------------------------------------------------
cdef enum:
    ICMP_ECHOREPLY = 0
    ICMP_UNREACH = 3
    ICMP_UNREACH_NET = 0
    ICMP_UNREACH_HOST = 1
    ICMP_UNREACH_PROTOCOL = 2
    ICMP_UNREACH_PORT = 3
    ICMP_UNREACH_NEEDFRAG = 4   # next-hop MTU in icmp_nextmtu (RFC 1191)
    ICMP_UNREACH_SRCFAIL = 5
    ICMP_UNREACH_NET_UNKNOWN = 6
    ICMP_UNREACH_HOST_UNKNOWN = 7
    ICMP_UNREACH_NET_PROHIB = 9
    ICMP_UNREACH_HOST_PROHIB = 10
    ICMP_UNREACH_FILTER_PROHIB = 13  # communication administratively prohibited (RFC 1812)
    ICMP_SOURCEQUENCH = 4
    ICMP_REDIRECT = 5
    ICMP_ECHO = 8
    ICMP_TIMXCEED = 11
    ICMP_TIMXCEED_INTRANS = 0
    ICMP_TIMXCEED_REASS = 1
    ICMP_PARAMPROB = 12
    ICMP_MAXTYPE = 18           # the highest type RFC 792/950 define (FreeBSD's bound)

    ICMP_HDR_LEN = 8            # type, code, cksum, 4 bytes id/seq/unused/mtu
    ICMP_ERR_MAXLEN = 576       # an error datagram never exceeds this (RFC 1812 4.3.2.3)

    ICMP_OFF_TYPE = 0
    ICMP_OFF_CODE = 1
    ICMP_OFF_CKSUM = 2
    ICMP_OFF_ID = 4
    ICMP_OFF_SEQ = 6
    ICMP_OFF_NEXTMTU = 6

cdef packed struct icmp_hdr:         # echo request / reply
    uint8_t icmp_type
    uint8_t icmp_code
    uint16_t icmp_cksum         # as stored (see in_cksum)
    uint16_t icmp_id            # echo identifier (network order)
    uint16_t icmp_seq           # echo sequence (network order)

cdef packed struct icmp_err_hdr:     # errors: unreachable, time exceeded, ... (RFC 792)
    uint8_t icmp_type
    uint8_t icmp_code
    uint16_t icmp_cksum         # as stored
    uint16_t icmp_pmvoid        # unused: 0
    uint16_t icmp_nextmtu       # next-hop MTU of NEEDFRAG (RFC 1191), else 0; network order


cdef inline bint icmp_is_error(int type) noexcept nogil:
    """An ICMP error message (never answered with another error, RFC 1122
    3.2.2); the others are queries and replies (FreeBSD's !ICMP_INFOTYPE)."""
    return (type == ICMP_UNREACH or type == ICMP_SOURCEQUENCH or type == ICMP_REDIRECT
            or type == ICMP_TIMXCEED or type == ICMP_PARAMPROB)


# --- unaligned loads and stores in network order --------------------------------
#
# For fields outside the packed structs (and for building headers field by
# field): the value in host order, through memcpy (one load or store).

cdef inline uint16_t ld16(const void *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return ntohs(v)


cdef inline uint32_t ld32(const void *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return ntohl(v)


cdef inline void st16(void *p, uint16_t host) noexcept nogil:
    cdef uint16_t v = htons(host)
    memcpy(p, &v, 2)


cdef inline void st32(void *p, uint32_t host) noexcept nogil:
    cdef uint32_t v = htonl(host)
    memcpy(p, &v, 4)


# --- Internet checksum (RFC 1071) -----------------------------------------------

cdef inline uint64_t in_cksum_add(uint64_t acc, const unsigned char *p, int length) noexcept nogil:
    """Add len bytes at p to a running sum.  Only the last segment of a
    chained buffer may have an odd length (the others must keep the logical
    stream 16-bit aligned).  Finish with in_cksum_finish."""
    cdef uint32_t w32
    cdef uint16_t w16
    cdef unsigned char last[2]
    while length >= 32:
        memcpy(&w32, p, 4); acc += w32
        memcpy(&w32, p + 4, 4); acc += w32
        memcpy(&w32, p + 8, 4); acc += w32
        memcpy(&w32, p + 12, 4); acc += w32
        memcpy(&w32, p + 16, 4); acc += w32
        memcpy(&w32, p + 20, 4); acc += w32
        memcpy(&w32, p + 24, 4); acc += w32
        memcpy(&w32, p + 28, 4); acc += w32
        p += 32
        length -= 32
    while length >= 4:
        memcpy(&w32, p, 4)
        acc += w32
        p += 4
        length -= 4
    if length >= 2:
        memcpy(&w16, p, 2)
        acc += w16
        p += 2
        length -= 2
    if length == 1:
        # pad with a zero byte: it is the high-order byte in network order,
        # wherever that lands in a native load
        last[0] = p[0]
        last[1] = 0
        memcpy(&w16, last, 2)
        acc += w16
    return acc


cdef inline uint16_t in_cksum_finish(uint64_t acc) noexcept nogil:
    """Fold a running sum to 16 bits and complement: the checksum as stored."""
    acc = (acc >> 32) + (acc & 0xffffffffU)
    acc = (acc >> 32) + (acc & 0xffffffffU)
    acc = (acc >> 16) + (acc & 0xffff)
    acc = (acc >> 16) + (acc & 0xffff)
    acc = (acc >> 16) + (acc & 0xffff)
    return <uint16_t>(~acc & 0xffff)


cdef inline uint16_t in_cksum(const unsigned char *p, int length) noexcept nogil:
    """Internet checksum of len bytes at p, ready to store (network order).
    Over a header whose checksum field is zero it is the value to write;
    over a header with its checksum in place it is 0 when the header is
    valid."""
    return in_cksum_finish(in_cksum_add(0, p, length))


cdef inline uint16_t in_cksum_update16(uint16_t hc, uint16_t old, uint16_t new) noexcept nogil:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one 16-bit field changing
    from old to new.  hc, old and new are as stored in the header (all
    network order); the result is too.  Unlike RFC 1141's HC + m + ~m' it
    yields 0x0000 (never 0xFFFF) when the full recompute does."""
    cdef uint32_t s = <uint32_t>(<uint16_t>~hc) + <uint32_t>(<uint16_t>~old) + <uint32_t>new
    s = (s >> 16) + (s & 0xffff)
    s = (s >> 16) + (s & 0xffff)
    return <uint16_t>(~s & 0xffff)


cdef inline uint16_t in_cksum_update32(uint16_t hc, uint32_t old, uint32_t new) noexcept nogil:
    """RFC 1624 eqn. 3 for a 32-bit field (an address), both as stored."""
    cdef uint64_t s = (<uint64_t>(<uint16_t>~hc) + (<uint64_t>(~old) & 0xffff) + ((<uint64_t>(~old) >> 16) & 0xffff)
                       + (new & 0xffff) + (new >> 16))
    s = (s >> 16) + (s & 0xffff)
    s = (s >> 16) + (s & 0xffff)
    return <uint16_t>(~s & 0xffff)


# --- IPv4 header helpers ------------------------------------------------------
#
# They take the packed header (FreeBSD's `struct ip *`): cast the packet
# pointer once, then use the fields by name.

cdef inline int ip_hl(const ip_hdr *ip) noexcept nogil:
    """Header length in bytes (IHL * 4)."""
    return (ip.ip_vhl & 0x0f) << 2


cdef inline int ip_v(const ip_hdr *ip) noexcept nogil:
    return ip.ip_vhl >> 4


cdef inline void ip_set_cksum(ip_hdr *ip, int hlen) noexcept nogil:
    """Recompute the header checksum of an IPv4 header of hlen bytes."""
    ip.ip_sum = 0
    ip.ip_sum = in_cksum(<const unsigned char *>ip, hlen)


cdef inline bint ip_ttl_expired(const ip_hdr *ip) noexcept nogil:
    """A datagram to forward has expired (RFC 1812 5.3.1): its TTL is 0 or
    1, so decrementing it would reach 0.  Answer with ICMP time exceeded."""
    return ip.ip_ttl <= IPTTLDEC


cdef inline void ip_dec_ttl(ip_hdr *ip) noexcept nogil:
    """The forwarding TTL step (RFC 1812 5.3.1) of a datagram that has not
    expired (ip_ttl_expired is false): decrement the TTL by one and update
    the checksum incrementally (RFC 1624 eqn. 3 on the TTL/protocol word)."""
    cdef uint16_t oldw, neww
    cdef unsigned char *w = <unsigned char *>ip + IP_OFF_TTL
    memcpy(&oldw, w, 2)
    ip.ip_ttl -= IPTTLDEC
    memcpy(&neww, w, 2)
    ip.ip_sum = in_cksum_update16(ip.ip_sum, oldw, neww)


# --- address classes (HOST order) -----------------------------------------------

cdef inline bint in_zeronet(uint32_t a) noexcept nogil:       # 0.0.0.0/8 ("this network")
    return (a >> 24) == 0

cdef inline bint in_loopback(uint32_t a) noexcept nogil:      # 127.0.0.0/8
    return (a >> 24) == 127

cdef inline bint in_multicast(uint32_t a) noexcept nogil:     # 224.0.0.0/4, class D
    return (a & 0xf0000000U) == 0xe0000000U

cdef inline bint in_badclass(uint32_t a) noexcept nogil:      # 240.0.0.0/4, class E (incl. 255.255.255.255)
    return (a & 0xf0000000U) == 0xf0000000U

cdef inline bint in_lbcast(uint32_t a) noexcept nogil:        # 255.255.255.255
    return a == 0xffffffffU

cdef inline bint in_linklocal(uint32_t a) noexcept nogil:     # 169.254.0.0/16 (RFC 3927)
    return (a & 0xffff0000U) == 0xa9fe0000U

cdef inline bint in_martian_src(uint32_t a) noexcept nogil:
    """A source address a router must not forward from (RFC 1812 5.3.7):
    0/8, 127/8, 224/4 (multicast as source), 240/4 incl. 255.255.255.255."""
    cdef uint32_t top = a >> 24
    return top == 0 or top == 127 or top >= 224

cdef inline bint in_martian_dst(uint32_t a) noexcept nogil:
    """A destination a router must not forward to (RFC 1812 5.3.7, 4.2.2.11):
    0/8, 127/8, 240/4 incl. 255.255.255.255.  Multicast (224/4) is not a
    martian destination but is not forwarded either (no multicast routing):
    test in_multicast separately."""
    cdef uint32_t top = a >> 24
    return top == 0 or top == 127 or top >= 240
