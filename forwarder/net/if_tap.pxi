# if_tap.pxi -- the TAP as a network interface: frames in and out, with the
# virtio-net header when the TAP was opened with IFF_VNET_HDR (Linux's
# drivers/net/tun.c is the other end; tap(4) on FreeBSD has no such header).
#
# With the header, the kernel side of the TAP may hand us what its stack
# would hand a virtio NIC: frames whose L4 checksum is only seeded with the
# pseudo-header sum (NEEDS_CSUM), and TCP or UDP super-frames of up to 64 KB
# to be cut into gso_size segments (GSO) -- and it accepts the same from us.
# tap_input records what the header says in the packet header
# (CSUM_DEV_PARTIAL / CSUM_DEV_GSO, csum_start, csum_offset, gso_type,
# tso_segsz); the network layer checks it against the packet and turns it
# into FreeBSD's CSUM_* meaning (ip_offload_input).  tap_output writes the
# header back from the CSUM_* flags of what leaves.
#
# Reading a super-frame: one readv() into a Packet-zone cluster followed by
# DP_RX_SPARES 16k jumbo clusters held per interface.  A small frame fills
# the first cluster only and the spares wait for the next read; a big one
# takes the spares it filled into its chain (no copy) and they are
# replaced before the next read.  The spares are allocated when the
# interface is added, so they count as in use from then on: the zones'
# USED at rest includes DP_RX_SPARES jumbo clusters per offloading TAP.
#
# Trade-off: a TAP that may send super-frames is always read with readv()
# and five iovecs; one without TSO/USO keeps the plain read() of one
# cluster sized for its MTU.


cdef uint32_t tun_hwassist(uint32_t offloads) noexcept nogil:
    """What a TAP with these TUN_F_* offloads takes from us on output
    (CSUM_*).  The kernel's write path would accept partial checksums and
    super-frames from any vnet-header TAP; going by what its read side
    accepted keeps a kernel that does not know USO from being handed USO."""
    cdef uint32_t hw = 0
    if offloads & TUN_F_CSUM:
        hw |= CSUM_IP_TCP | CSUM_IP_UDP | CSUM_IP6_TCP | CSUM_IP6_UDP
        if offloads & TUN_F_TSO4:
            hw |= CSUM_IP_TSO
        if offloads & TUN_F_TSO6:
            hw |= CSUM_IP6_TSO
        if offloads & TUN_F_USO4:
            hw |= CSUM_IP_USO
        if offloads & TUN_F_USO6:
            hw |= CSUM_IP6_USO
    return hw


cdef void ifp_set_mtu(dp_ifnet *ifp, int mtu) noexcept nogil:
    """The MTU, and the read size of a frame without super-frames: the
    virtio-net header, Ethernet header, MTU and a VLAN tag's 4 bytes."""
    ifp.mtu = mtu
    ifp.rx_size = ifp.vnet_hdrlen + ETHER_HDR_LEN + mtu + 4


cdef void tap_fill_spares(dp_ifnet *ifp) noexcept nogil:
    """Replace the jumbo clusters a super-frame took (as many as the zone
    gives: what is missing is retried before the next read)."""
    cdef int j
    for j in range(ifp.rx_spares):
        if ifp.rx_spare[j] == NULL:
            ifp.rx_spare[j] = m_getjcl(M_NOWAIT, MT_DATA, 0, MJUM16BYTES)
            if ifp.rx_spare[j] == NULL:
                return


cdef void tap_free_spares(dp_ifnet *ifp) noexcept nogil:
    cdef int j
    for j in range(DP_RX_SPARES):
        if ifp.rx_spare[j] != NULL:
            m_freem(ifp.rx_spare[j])
            ifp.rx_spare[j] = NULL


cdef mbuf *tap_read_chain(dp_ifnet *ifp) noexcept nogil:
    """readv() one frame of up to 64 KB into a cluster and the spares.
    NULL with errno as m_read_fd's, or EMSGSIZE: the frame was longer than
    the buffers the zones gave (cut short by the kernel), counted and
    dropped here."""
    cdef iovec iov[1 + DP_RX_SPARES]
    cdef mbuf *m
    cdef mbuf *p
    cdef mbuf *prev
    cdef int n = 1, j, e
    cdef ssize_t r, cap, left
    m = m_getcl(M_NOWAIT, MT_DATA, M_PKTHDR)
    if m == NULL:
        set_errno(ENOBUFS)
        return NULL
    iov[0].iov_base = m.m_data
    iov[0].iov_len = <size_t>M_TRAILINGSPACE(m)
    cap = <ssize_t>iov[0].iov_len
    tap_fill_spares(ifp)
    for j in range(ifp.rx_spares):
        if ifp.rx_spare[j] == NULL:
            break
        iov[n].iov_base = ifp.rx_spare[j].m_data
        iov[n].iov_len = MJUM16BYTES
        cap += MJUM16BYTES
        n += 1
    r = readv(ifp.fd, iov, n)
    if r <= 0:
        e = errno if r < 0 else 0
        m_freem(m)
        set_errno(e)
        return NULL
    if r == cap and n < 1 + ifp.rx_spares:
        m_freem(m)                      # the spares it filled are still ours
        set_errno(EMSGSIZE)
        return NULL
    m.m_len = <int>(r if r < <ssize_t>iov[0].iov_len else <ssize_t>iov[0].iov_len)
    left = r - m.m_len
    prev = m
    j = 0
    while left > 0:
        p = ifp.rx_spare[j]
        ifp.rx_spare[j] = NULL
        p.m_len = <int>(left if left < MJUM16BYTES else MJUM16BYTES)
        left -= p.m_len
        prev.m_next = p
        prev = p
        j += 1
    m.m_pkthdr.len = <int>r
    m.m_pkthdr.rcvif = ifp.index
    if j:
        tap_fill_spares(ifp)            # at rest an interface always holds all its spares
    return m


cdef mbuf *tap_read(dp_ifnet *ifp) noexcept nogil:
    """One frame from the TAP, virtio-net header still in front; NULL with
    errno (EAGAIN: nothing to read).  A TAP without the header reads its
    frames VIRTIO_NET_HDR_LEN bytes into the cluster, so that every packet
    keeps room to leave by a TAP that has one without a new mbuf.  A packet
    socket with a receive ring is read from the ring (net/if_packet.pxi)."""
    if ifp.ring != NULL:
        return packet_read(ifp)
    if ifp.rx_spares:
        return tap_read_chain(ifp)
    return m_read_fd(ifp.fd, ifp.rx_size, VIRTIO_NET_HDR_LEN - ifp.vnet_hdrlen, ifp.index,
                     M_NOWAIT)


cdef ssize_t tap_discard(dp_ifnet *ifp) noexcept nogil:
    """Read and drop one frame (there is no buffer for it)."""
    if ifp.ring != NULL:
        return packet_discard(ifp)
    return m_discard_fd(ifp.fd)


cdef bint tap_input(dp_state *dp, dp_ifnet *ifp, mbuf *m) noexcept nogil:
    """Strip the virtio-net header into the packet header.  False when the
    frame was dropped (no room for the header)."""
    cdef virtio_net_hdr vh
    if m.m_len < VIRTIO_NET_HDR_LEN:
        dp_drop_m(dp, m, DROP_RUNT)
        return False
    memcpy(&vh, mdata(m), VIRTIO_NET_HDR_LEN)
    m_adj(m, VIRTIO_NET_HDR_LEN)
    if vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        m.m_pkthdr.csum_flags = CSUM_DEV_PARTIAL
        m.m_pkthdr.csum_start = vh.csum_start
        m.m_pkthdr.csum_offset = vh.csum_offset
    elif vh.flags & VIRTIO_NET_HDR_F_DATA_VALID:
        m.m_pkthdr.csum_flags = CSUM_L4_CALC | CSUM_L4_VALID
    if vh.gso_type != VIRTIO_NET_HDR_GSO_NONE:
        m.m_pkthdr.csum_flags |= CSUM_DEV_GSO
        m.m_pkthdr.gso_type = vh.gso_type
        m.m_pkthdr.tso_segsz = vh.gso_size
    return True


cdef inline int tso_segments(mbuf *m, int linkhdr) noexcept nogil:
    """How many segments a CSUM_SEG packet carries (linkhdr: the bytes of
    link header in front of its IP header)."""
    cdef int payload = m.m_pkthdr.len - linkhdr - m.m_pkthdr.l3hlen - m.m_pkthdr.l4hlen
    return (payload + m.m_pkthdr.tso_segsz - 1) // m.m_pkthdr.tso_segsz


cdef void tap_output_hdr(dp_ifnet *ifp, virtio_net_hdr *vh, mbuf *m) noexcept nogil:
    """The virtio-net header of an outgoing frame (m starts with its
    Ethernet header): what its CSUM_* flags leave to the kernel."""
    cdef uint32_t f = m.m_pkthdr.csum_flags
    memset(vh, 0, VIRTIO_NET_HDR_LEN)
    if f & (CSUM_DELAY_DATA | CSUM_DELAY_DATA_IPV6):
        vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM
        vh.csum_start = <uint16_t>(ETHER_HDR_LEN + m.m_pkthdr.l3hlen)
        vh.csum_offset = <uint16_t>m.m_pkthdr.csum_data
    if f & CSUM_SEG:
        vh.gso_type = m.m_pkthdr.gso_type
        vh.gso_size = m.m_pkthdr.tso_segsz
        vh.hdr_len = <uint16_t>(ETHER_HDR_LEN + m.m_pkthdr.l3hlen + m.m_pkthdr.l4hlen)
        ifp.tx_gso += 1
        ifp.tx_gso_segs += <uint64_t>tso_segments(m, ETHER_HDR_LEN)
