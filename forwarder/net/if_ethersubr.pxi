# if_ethersubr.pxi -- Ethernet in and out (FreeBSD's net/if_ethersubr.c).
#
# ether_input classifies a received frame and hands it to ARP or IPv4 (an
# IPv6 input will sit beside them); ether_output prepends the header in the
# leading space the packet keeps for it and transmits.


cdef inline void ether_fill(ether_header *eh, const uint8_t *dst, const uint8_t *src,
                            uint16_t type) noexcept nogil:
    memcpy(eh.ether_dhost, dst, ETHER_ADDR_LEN)
    memcpy(eh.ether_shost, src, ETHER_ADDR_LEN)
    eh.ether_type = htons(type)


cdef void ether_output(dp_state *dp, dp_ifnet *ifp, mbuf *m, const uint8_t *dst,
                       uint16_t type) noexcept nogil:
    cdef uint32_t tid = m.m_pkthdr.trace
    m = M_PREPEND(m, ETHER_HDR_LEN, M_NOWAIT)       # in the leading space when there is room
    if m == NULL:
        dp.drops[DROP_NO_BUFFER] += 1
        if unlikely(tid != 0):
            tr_drop_id(dp, tid, DROP_NO_BUFFER)
        return
    ether_fill(<ether_header *>mdata(m), dst, ifp.mac, type)
    trace_data(dp, m, TR_ETHER_OUTPUT, type, 0, 0, 0, <uint32_t>ifp.index, mdata(m), 12)
    dp_transmit(dp, ifp, m)


cdef void ether_input(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """Classify: ARP, IPv4, IPv6 or other; drop unicast for other stations."""
    cdef ether_header *eh = <ether_header *>mdata(m)
    cdef uint16_t type
    cdef bint group
    if m.m_len < ETHER_HDR_LEN:
        dp_drop_m(dp, m, DROP_RUNT)
        return
    group = eh.ether_dhost[0] & 1    # broadcast or multicast
    trace_data(dp, m, TR_ETHER_INPUT, ntohs(eh.ether_type), 0, 0, 0, 0, eh, 12)
    if not group and memcmp(eh.ether_dhost, ifp.mac, ETHER_ADDR_LEN) != 0:
        dp_drop_m(dp, m, DROP_NOT_OUR_MAC)
        return
    type = ntohs(eh.ether_type)
    if type == ETHERTYPE_ARP:
        arp_input(dp, ifp, m)
    elif type == ETHERTYPE_IP:
        m_adj(m, ETHER_HDR_LEN)
        ip_input(dp, ifp, m, group)
    elif type == ETHERTYPE_IPV6:
        m_adj(m, ETHER_HDR_LEN)
        ip6_input(dp, ifp, m, group)
    else:
        dp_drop_m(dp, m, DROP_ETHERTYPE)
