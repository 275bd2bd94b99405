# ip_output.pxi -- IPv4 out (FreeBSD's netinet/ip_output.c): the router's
# own packets, and fragmentation of forwarded ones that do not fit.


cdef void ip_output(dp_state *dp, mbuf *m) noexcept nogil:
    """Send a packet of our own (echo reply, ICMP error): route it, fragment
    it when it does not fit, resolve and transmit."""
    cdef ip_hdr *ip = <ip_hdr *>mdata(m)
    cdef uint32_t dst = ntohl(ip.ip_dst)
    cdef const rt_nexthop *nh = rt_lookup_nh(dp.rt, dst)
    cdef dp_ifnet *oifp
    cdef uint32_t nexthop
    trace(dp, m, TR_IP_OUTPUT, 0, ntohl(ip.ip_src), dst, <uint32_t>(nh.type if nh != NULL else 0xff),
          <uint32_t>(nh.ifindex if nh != NULL else -1))
    if nh == NULL or nh.type != NH_FORWARD:
        dp_drop_m(dp, m, DROP_OUTPUT_NO_ROUTE)
        return
    oifp = &dp.ifs[nh.ifindex]
    nexthop = nh.gateway if nh.gateway != 0 else dst
    if m.m_pkthdr.len > oifp.mtu and ntohs(ip.ip_off) & IP_DF:
        dp_drop_m(dp, m, DROP_NEEDFRAG_DF_SET)
        return
    ip_output_if(dp, oifp, m, nexthop, m.m_pkthdr.len > oifp.mtu)


cdef int ip_copied_options(const unsigned char *opts, int hlen, unsigned char *out) noexcept nogil:
    """Header for fragments after the first: the base header of opts (a
    whole IPv4 header of hlen bytes) plus only the options whose copied flag
    is set (RFC 791), padded to 32 bits.  Returns its length."""
    cdef int i = IP_HDR_LEN, n = IP_HDR_LEN, olen
    memcpy(out, opts, IP_HDR_LEN)
    while i < hlen:
        if opts[i] == IPOPT_EOL:
            break
        if opts[i] == IPOPT_NOP:        # not copied
            i += 1
            continue
        if i + 1 >= hlen:
            break
        olen = opts[i + 1]
        if olen < 2 or i + olen > hlen:
            break
        if opts[i] & IPOPT_COPIED:
            memcpy(out + n, opts + i, olen)
            n += olen
        i += olen
    while n & 3:
        out[n] = IPOPT_EOL
        n += 1
    (<ip_hdr *>out).ip_vhl = <uint8_t>((IPVERSION << 4) | (n >> 2))
    return n


cdef void ip_fragment(dp_state *dp, dp_ifnet *oifp, mbuf *m, uint32_t nexthop) noexcept nogil:
    """Cut m into fragments that fit oifp's MTU.  Each fragment is a small
    header mbuf followed by m_copym() of the payload range: the data stays in
    the original clusters, shared by reference count.  All or nothing: when
    buffers run out midway, no fragment is sent.  A checksum left to
    offload is completed first: fragments carry no offload."""
    cdef ip_hdr *ip = <ip_hdr *>mdata(m)
    cdef unsigned char hdr2[IP_MAX_HDR_LEN]
    cdef int hlen = ip_hl(ip), hlen2, h, off = 0, len, maxlen
    cdef int payload = m.m_pkthdr.len - hlen
    cdef uint16_t ooff = ntohs(ip.ip_off)
    cdef int obase = ooff & IP_OFFMASK
    cdef bint omf = (ooff & IP_MF) != 0, last
    cdef mbufq frags
    cdef mbuf *f
    cdef ip_hdr *fip
    if unlikely(m.m_pkthdr.csum_flags & CSUM_DELAY_DATA):
        in_delayed_cksum(oifp, m)
    mbufq_init(&frags, IP_MAXPACKET)
    hlen2 = ip_copied_options(<unsigned char *>ip, hlen, hdr2)
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
        memcpy(mdata(f), <unsigned char *>ip if off == 0 else hdr2, h)
        f.m_next = m_copym(m, hlen + off, len, M_NOWAIT)
        if f.m_next == NULL:
            m_freem(f)
            break
        f.m_pkthdr.len = h + len
        fip = <ip_hdr *>mdata(f)
        fip.ip_len = htons(<uint16_t>(h + len))
        fip.ip_off = htons(<uint16_t>((obase + off // 8) | (0 if last and not omf else IP_MF)))
        ip_set_cksum(fip, h)
        f.m_pkthdr.rcvif = m.m_pkthdr.rcvif
        trace_copy(f, m)
        mbufq_enqueue(&frags, f)
        off += len
    if off < payload:                   # ran out of buffers: send nothing
        mbufq_drain(&frags)
        dp_drop_m(dp, m, DROP_NO_BUFFER)
        return
    trace(dp, m, TR_IP_FRAGMENT, 0, <uint32_t>m.m_pkthdr.len, <uint32_t>oifp.mtu,
          <uint32_t>mbufq_len(&frags), <uint32_t>oifp.index)
    m_freem(m)                          # the clusters live on in the fragments
    f = mbufq_dequeue(&frags)
    while f != NULL:
        dp.frags_created += 1
        ether_resolve(dp, oifp, f, nexthop)
        f = mbufq_dequeue(&frags)
