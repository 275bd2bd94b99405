# cython: language_level=3
"""Python wrappers around the inline helpers of inet.pxd (and the BPF
interpreter of bpf.pxd), for tests only.

Checksums cross this boundary as the 16-bit value read in network order
(big-endian), i.e. what a pure-Python reference computes.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy
from forwarder cimport inet
from forwarder.inet cimport (in_cksum, in_cksum_add, in_cksum_finish, in_cksum_update16,
                             in_cksum_update32, ip_dec_ttl, ip_set_cksum, ip_ttl_expired, htons, ntohs, htonl,
                             ntohl, in_martian_src, in_martian_dst, in_multicast, in_badclass,
                             in_loopback, in_zeronet, in_lbcast)
from forwarder.bpf cimport dp_bpf_insn, dp_bpf_run

from forwarder import bpf


def cksum(const unsigned char[::1] buf):
    """in_cksum over buf, as an int (network order value)."""
    cdef uint16_t r
    with nogil:
        r = in_cksum(&buf[0] if buf.shape[0] else NULL, <int>buf.shape[0])
    return ntohs(r)


def cksum_chain(segments):
    """in_cksum_add over several buffers, then in_cksum_finish."""
    cdef unsigned long long acc = 0
    cdef const unsigned char[::1] b
    for seg in segments:
        b = seg
        if b.shape[0]:
            acc = in_cksum_add(acc, &b[0], <int>b.shape[0])
    return ntohs(in_cksum_finish(acc))


def cksum_update16(int hc, int old, int new):
    """RFC 1624 eqn. 3; arguments and result are network-order values."""
    return ntohs(in_cksum_update16(htons(hc), htons(old), htons(new)))


def cksum_update32(int hc, uint32_t old, uint32_t new):
    return ntohs(in_cksum_update32(htons(hc), htonl(old), htonl(new)))


def dec_ttl(unsigned char[::1] hdr):
    """The forwarding TTL step in place on a bytearray holding an IPv4 header,
    as ip_forward takes it: 0 and the header untouched when ip_ttl_expired,
    else ip_dec_ttl and the new TTL."""
    cdef inet.ip_hdr *ip
    if hdr.shape[0] < 20:
        raise ValueError("short header")
    ip = <inet.ip_hdr *>&hdr[0]
    if ip_ttl_expired(ip):
        return 0
    ip_dec_ttl(ip)
    return ip.ip_ttl


def set_cksum(unsigned char[::1] hdr):
    """ip_set_cksum in place (header length from the IHL)."""
    cdef int hl = (hdr[0] & 0x0f) * 4
    if hdr.shape[0] < hl:
        raise ValueError("short header")
    ip_set_cksum(<inet.ip_hdr *>&hdr[0], hl)


def byteorder(uint32_t x):
    return htons(<uint16_t>x), ntohs(<uint16_t>x), htonl(x), ntohl(x)


def classify(uint32_t a):
    """Every address predicate for a HOST-order address."""
    return {"martian_src": bool(in_martian_src(a)), "martian_dst": bool(in_martian_dst(a)),
            "multicast": bool(in_multicast(a)), "badclass": bool(in_badclass(a)),
            "loopback": bool(in_loopback(a)), "zeronet": bool(in_zeronet(a)),
            "lbcast": bool(in_lbcast(a))}


def constants():
    return {
        "ETHER_HDR_LEN": inet.ETHER_HDR_LEN, "ETHERTYPE_IP": inet.ETHERTYPE_IP,
        "ETHERTYPE_ARP": inet.ETHERTYPE_ARP, "ETHERTYPE_IPV6": inet.ETHERTYPE_IPV6,
        "ARP_HDR_LEN": inet.ARP_HDR_LEN, "IP_HDR_LEN": inet.IP_HDR_LEN,
        "ICMP_ECHOREPLY": inet.ICMP_ECHOREPLY, "ICMP_UNREACH": inet.ICMP_UNREACH,
        "ICMP_ECHO": inet.ICMP_ECHO, "ICMP_TIMXCEED": inet.ICMP_TIMXCEED,
        "ICMP_UNREACH_NET": inet.ICMP_UNREACH_NET, "ICMP_UNREACH_HOST": inet.ICMP_UNREACH_HOST,
        "ICMP_UNREACH_NEEDFRAG": inet.ICMP_UNREACH_NEEDFRAG,
        "ICMP_UNREACH_FILTER_PROHIB": inet.ICMP_UNREACH_FILTER_PROHIB,
        "ICMP_TIMXCEED_INTRANS": inet.ICMP_TIMXCEED_INTRANS,
        "IP_DF": inet.IP_DF, "IP_MF": inet.IP_MF, "IP_OFFMASK": inet.IP_OFFMASK,
        "IPPROTO_ICMP": inet.IPPROTO_ICMP, "IPPROTO_UDP": inet.IPPROTO_UDP,
        "IPPROTO_TCP": inet.IPPROTO_TCP,
    }


def struct_sizes():
    """sizeof and field offsets of the packed header structs."""
    cdef inet.ip_hdr ip
    cdef inet.icmp_hdr ic
    cdef char *b = <char *>&ip
    return {
        "ether_header": sizeof(inet.ether_header), "ether_arp": sizeof(inet.ether_arp),
        "ip_hdr": sizeof(inet.ip_hdr), "icmp_hdr": sizeof(inet.icmp_hdr),
        "ip_ttl": <char *>&ip.ip_ttl - b, "ip_sum": <char *>&ip.ip_sum - b,
        "ip_src": <char *>&ip.ip_src - b, "ip_dst": <char *>&ip.ip_dst - b,
        "icmp_seq": <char *>&ic.icmp_seq - <char *>&ic,
    }


def parse_ip(const unsigned char[::1] hdr):
    """Read fields through the ip_hdr struct (host order), to check the layout."""
    cdef const inet.ip_hdr *ip = <const inet.ip_hdr *>&hdr[0]
    return {"v": ip.ip_vhl >> 4, "hl": (ip.ip_vhl & 15) * 4, "len": ntohs(ip.ip_len),
            "id": ntohs(ip.ip_id), "off": ntohs(ip.ip_off), "ttl": ip.ip_ttl, "p": ip.ip_p,
            "sum": ntohs(ip.ip_sum), "src": ntohl(ip.ip_src), "dst": ntohl(ip.ip_dst)}


_bpf_valid: set[bytes] = set()      # programs validate() passed


def bpf_run(prog: bytes, const unsigned char[::1] packet, wirelen=None) -> int:
    """dp_bpf_run of ``prog`` (checked by forwarder.bpf.validate first, as
    the interpreter trusts its jumps) over ``packet``: buflen is
    len(packet), wirelen defaults to it."""
    if prog not in _bpf_valid:
        bpf.validate(prog)
        if len(_bpf_valid) >= 4096:
            _bpf_valid.clear()
        _bpf_valid.add(prog)
    cdef uint32_t buflen = <uint32_t>packet.shape[0]
    cdef uint32_t wire = buflen if wirelen is None else wirelen
    cdef const uint8_t *p = &packet[0] if buflen else NULL
    # a copy: bytes' data need not be aligned as struct dp_bpf_insn
    cdef dp_bpf_insn *pc = <dp_bpf_insn *>PyMem_Malloc(len(prog))
    cdef uint32_t r
    if pc == NULL:
        raise MemoryError()
    memcpy(pc, <const char *>prog, len(prog))
    with nogil:
        r = dp_bpf_run(pc, p, wire, buflen)
    PyMem_Free(pc)
    return r
