# in_cksum.pxi -- the Internet checksum over mbuf chains (FreeBSD's
# netinet/in_cksum.c and in_delayed_cksum of ip_output.c).
#
# inet.pxd sums flat buffers; a packet read as a chain of clusters, or a
# segment whose payload is a range of someone else's clusters (m_copym), is
# summed piece by piece.  A piece that starts at an odd offset of the
# checksummed range contributes its sum byte-swapped (RFC 1071 2(B): the
# one's complement sum is byte-order independent, so swapping the folded
# sum is the same as re-pairing the bytes).


cdef inline uint32_t in_cksum_fold(uint64_t acc) noexcept nogil:
    """A running sum folded to 16 bits, not complemented."""
    return <uint16_t>~in_cksum_finish(acc)


cdef uint16_t in_cksum_skip(mbuf *m, int len, int skip, uint64_t seed) noexcept nogil:
    """The checksum, ready to store, of len bytes of the chain from offset
    skip, with a partial sum seed added (a pseudo-header, or 0)."""
    cdef uint64_t acc = seed
    cdef uint32_t s
    cdef bint odd = False
    cdef int l
    while m != NULL and skip >= m.m_len:
        skip -= m.m_len
        m = m.m_next
    while m != NULL and len > 0:
        l = m.m_len - skip
        if l > len:
            l = len
        s = in_cksum_fold(in_cksum_add(0, mdata(m) + skip, l))
        if odd:
            s = ((s & 0xff) << 8) | (s >> 8)
        acc += s
        odd ^= (l & 1)
        len -= l
        skip = 0
        m = m.m_next
    return in_cksum_finish(acc)


cdef inline uint64_t in_pseudo(uint32_t src, uint32_t dst, int proto, int len) noexcept nogil:
    """The partial sum of the IPv4 pseudo-header (RFC 9293 3.1, RFC 768):
    src and dst as stored in the packet, proto and L4 length in host order."""
    cdef unsigned char ph[12]
    memcpy(ph, &src, 4)
    memcpy(ph + 4, &dst, 4)
    ph[8] = 0
    ph[9] = <unsigned char>proto
    st16(ph + 10, <uint16_t>len)
    return in_cksum_add(0, ph, 12)


cdef void in_cksum_store(mbuf *m, int start, int field) noexcept nogil:
    """Complete a deferred checksum: the sum from offset start to the end of
    the packet (the field, at offset field, holds the pseudo-header sum)
    goes into the field.  0 is sent as 0xffff, as Linux does (for UDP 0
    would mean "no checksum"; for TCP the two are the same number)."""
    cdef uint16_t c = in_cksum_skip(m, m.m_pkthdr.len - start, start, 0)
    if c == 0:
        c = 0xffff
    if field + 2 <= m.m_len:
        memcpy(mdata(m) + field, &c, 2)
    else:
        m_copyback(m, field, 2, <const char *>&c)


cdef void in_delayed_cksum(dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """FreeBSD's in_delayed_cksum: complete the L4 checksum that
    CSUM_IP_TCP/UDP left for the interface, because this one cannot (or the
    packet is about to be cut into fragments).  Counted on ifp."""
    cdef int start = m.m_pkthdr.l3hlen
    in_cksum_store(m, start, start + <int>m.m_pkthdr.csum_data)
    m.m_pkthdr.csum_flags &= ~(CSUM_DELAY_DATA | CSUM_DELAY_DATA_IPV6)
    ifp.csum_sw += 1
