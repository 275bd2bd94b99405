# cython: language_level=3
#
# inet6.pxd -- IPv6 wire formats and helpers for the nogil dataplane
# (RFC 8200, RFC 4443, RFC 4861), the IPv6 half of inet.pxd, under the same
# conventions: packed structs with fields in network order, checksums as
# stored, addresses as 16 bytes in network order (struct in6_addr), every
# helper a `cdef inline ... noexcept nogil`.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from forwarder.inet cimport htons, in_cksum_add, in_cksum_finish

cdef enum:
    IP6_HDR_LEN = 40
    IP6_MIN_MTU = 1280          # RFC 8200 5: every link carries this much
    IP6_VERSION = 6
    IP6_HLIM_ND = 255           # Neighbor Discovery is only accepted with this hop limit
    IN6_ADDR_LEN = 16
    IP6_OFF_NXT = 6             # where the next header field sits (parameter problem's pointer)

    IPPROTO_HOPOPTS = 0
    IPPROTO_ICMPV6 = 58
    IPPROTO_NONE = 59

    # ICMPv6 (RFC 4443)
    ICMP6_DST_UNREACH = 1
    ICMP6_DST_UNREACH_NOROUTE = 0
    ICMP6_DST_UNREACH_ADMIN = 1
    ICMP6_DST_UNREACH_BEYONDSCOPE = 2
    ICMP6_DST_UNREACH_ADDR = 3
    ICMP6_DST_UNREACH_NOPORT = 4
    ICMP6_PACKET_TOO_BIG = 2
    ICMP6_TIME_EXCEEDED = 3
    ICMP6_TIME_EXCEED_TRANSIT = 0
    ICMP6_PARAM_PROB = 4
    ICMP6_PARAMPROB_NEXTHEADER = 1
    ICMP6_ECHO_REQUEST = 128
    ICMP6_ECHO_REPLY = 129
    ICMP6_MAXTYPE = 255
    ICMP6_HDR_LEN = 8
    ICMP6_ERR_MAXLEN = 1280     # an error datagram never exceeds the minimum MTU (RFC 4443 2.4 (c))

    # Neighbor Discovery (RFC 4861)
    ND_ROUTER_SOLICIT = 133
    ND_ROUTER_ADVERT = 134
    ND_NEIGHBOR_SOLICIT = 135
    ND_NEIGHBOR_ADVERT = 136
    ND_REDIRECT = 137
    ND_NS_LEN = 24              # ICMPv6 header + reserved + target
    ND_NA_LEN = 24
    ND_NA_FLAG_ROUTER = 0x80000000
    ND_NA_FLAG_SOLICITED = 0x40000000
    ND_NA_FLAG_OVERRIDE = 0x20000000
    ND_OPT_SOURCE_LINKADDR = 1
    ND_OPT_TARGET_LINKADDR = 2
    ND_OPT_LLADDR_LEN = 8       # type, length (in 8-byte units: 1), 6-byte MAC

cdef struct in6_addr:
    uint8_t s6[16]           # (not s6_addr: <netinet/in.h> makes that a macro)

cdef packed struct ip6_hdr:
    uint32_t ip6_flow           # version 4 bits, traffic class 8, flow label 20 (network order)
    uint16_t ip6_plen           # payload length (network order)
    uint8_t ip6_nxt             # next header
    uint8_t ip6_hlim            # hop limit
    uint8_t ip6_src[16]
    uint8_t ip6_dst[16]

cdef packed struct icmp6_hdr:
    uint8_t icmp6_type
    uint8_t icmp6_code
    uint16_t icmp6_cksum        # as stored
    uint32_t icmp6_data32       # echo: id and seq; PTB: MTU; param prob: pointer; NA: flags

cdef packed struct nd_neighbor_solicit:    # also the layout of a Neighbor Advertisement
    icmp6_hdr nd_ns_hdr
    uint8_t nd_ns_target[16]

cdef packed struct nd_opt_hdr:
    uint8_t nd_opt_type
    uint8_t nd_opt_len          # in units of 8 bytes, never 0


cdef inline int ip6_v(const ip6_hdr *ip6) noexcept nogil:
    return (<const uint8_t *>ip6)[0] >> 4


cdef inline bint in6_is_unspecified(const uint8_t *a) noexcept nogil:
    cdef int i
    for i in range(16):
        if a[i]:
            return False
    return True


cdef inline bint in6_is_loopback(const uint8_t *a) noexcept nogil:
    cdef int i
    for i in range(15):
        if a[i]:
            return False
    return a[15] == 1


cdef inline bint in6_is_multicast(const uint8_t *a) noexcept nogil:     # ff00::/8
    return a[0] == 0xff


cdef inline bint in6_is_linklocal(const uint8_t *a) noexcept nogil:     # fe80::/10
    return a[0] == 0xfe and (a[1] & 0xc0) == 0x80


cdef inline bint in6_is_v4mapped(const uint8_t *a) noexcept nogil:      # ::ffff:0:0/96
    cdef int i
    for i in range(10):
        if a[i]:
            return False
    return a[10] == 0xff and a[11] == 0xff


cdef inline bint in6_is_solicited_node(const uint8_t *a) noexcept nogil:  # ff02::1:ff00:0/104
    return (a[0] == 0xff and a[1] == 0x02 and a[11] == 0x01 and a[12] == 0xff
            and a[2] == 0 and a[3] == 0 and a[4] == 0 and a[5] == 0 and a[6] == 0
            and a[7] == 0 and a[8] == 0 and a[9] == 0 and a[10] == 0)


cdef inline void in6_solicited_node(uint8_t *out, const uint8_t *a) noexcept nogil:
    """ff02::1:ffXX:XXXX for address a (RFC 4291 2.7.1)."""
    memset(out, 0, 16)
    out[0] = 0xff
    out[1] = 0x02
    out[11] = 0x01
    out[12] = 0xff
    out[13] = a[13]
    out[14] = a[14]
    out[15] = a[15]


cdef inline void ether_mcast6(uint8_t *mac, const uint8_t *a) noexcept nogil:
    """The Ethernet group address of IPv6 multicast a: 33:33 + its last 32 bits (RFC 2464 7)."""
    mac[0] = 0x33
    mac[1] = 0x33
    memcpy(mac + 2, a + 12, 4)


cdef inline bint in6_prefix_match(const uint8_t *a, const uint8_t *p, int plen) noexcept nogil:
    """a is inside p/plen."""
    cdef int full = plen >> 3, rest = plen & 7
    if memcmp(a, p, full) != 0:
        return False
    if rest == 0:
        return True
    return ((a[full] ^ p[full]) & (0xff00 >> rest) & 0xff) == 0


cdef inline uint64_t in6_pseudo(const uint8_t *src, const uint8_t *dst, uint32_t len,
                                int nxt) noexcept nogil:
    """Partial sum of the IPv6 pseudo-header (RFC 8200 8.1)."""
    cdef unsigned char tail[8]
    cdef uint64_t acc = in_cksum_add(0, src, 16)
    acc = in_cksum_add(acc, dst, 16)
    tail[0] = <unsigned char>(len >> 24)
    tail[1] = <unsigned char>(len >> 16)
    tail[2] = <unsigned char>(len >> 8)
    tail[3] = <unsigned char>len
    tail[4] = 0
    tail[5] = 0
    tail[6] = 0
    tail[7] = <unsigned char>nxt
    return in_cksum_add(acc, tail, 8)
